"""uvicorn's httptools protocol with what it lacks (uvicorn 0.54):

- Request read timeouts. uvicorn arms a timer only between requests on a keep-alive
  connection (`timeout_keep_alive`); a connection that sends its request line and headers
  one byte every few seconds (slowloris), or its body, is held forever, and enough of
  them exhaust the worker's file descriptors. Here a request's headers must be complete
  within API_HEADER_TIMEOUT_SECONDS of the connection opening (first request) or of the
  request's first byte (later ones), and its body within API_BODY_TIMEOUT_SECONDS of the
  headers; else 408 and the connection is closed.
- Half-closed connections answered: a client that closes its sending side after its
  request still gets the answer (uvicorn drops it once the app awaits anything).
- A direct path for the hot routes (middleware.RequestMiddleware.hot_routes: POST
  /predict, V2 infer, ...): a request whose method and target match one exactly is served
  by the front door's `exchange` from a task of its own, and its answer written in one
  piece, without an ASGI cycle (scope, receive, send, message dicts, header checks).
  uvicorn's cycle costs ~56k instructions per request, nearly half of what a bare ASGI
  app's whole request does (128k); for a small model it is a fifth of the request. The
  request keeps everything else of this protocol: keep-alive, pipelining, flow control,
  timeouts, half-close, shutdown and drain work on its cycle (HotCycle, a
  RequestResponseCycle) as on any other. Requests that need more of uvicorn go the ASGI
  way: `Expect: 100-continue`, upgrades, X-Forwarded-* from a proxy uvicorn trusts
  (FORWARDED_ALLOW_IPS), over the concurrency limit, a query string or an escaped path.
  API_DIRECT_HOT_PATH=false serves everything through ASGI.
- A gentler shutdown. uvicorn closes at once every connection without a request in
  progress — including one that was accepted a moment ago and whose request is still in
  the socket buffer or half parsed: that client sent a request and gets a reset. Here such
  a connection gets SHUTDOWN_GRACE_SECONDS to deliver its request (served, then closed);
  one whose headers are arriving is left to finish them (the header timeout bounds it).

The timeouts cost no timer per request: a request notes when it started waiting, and one
watchdog per event loop sweeps the open connections a few times per timeout. (A timer
armed and cancelled per request costs uvloop several microseconds, a sizeable part of a
small model's whole request.) A late request is caught within a quarter of its timeout.

uvicorn.Config(http=guarded_protocol(...)) selects it; everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from typing import Any

import orjson
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from model_api.errors import ApiError
from model_api.middleware import (
    Answer,
    ClientDisconnected,
    HotRoute,
    RequestHeaders,
    RequestMiddleware,
    error_answer,
)

log = logging.getLogger(__name__)

# How long a connection without a request gets to deliver one once shutdown has begun:
# a request sent right after connecting arrives within a round trip.
SHUTDOWN_GRACE_SECONDS = 0.5
# The watchdog's period: a quarter of the shortest timeout, at most this.
MAX_SWEEP_SECONDS = 1.0
# The lifespan state key under which the app offers its front door for the direct path.
DIRECT_PATH_STATE = "model_api.direct_path"
# In place of the ASGI app next to a HotCycle in uvicorn's pipeline queue.
_DIRECT: Any = object()


def _timeout_response(message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # loop.time() when the awaited headers / body started to be awaited; None: not.
        self._headers_since: float | None = None
        self._body_since: float | None = None
        self._reading_headers = False  # a request's first byte came, its headers have not
        self._shutting_down = False
        # The front door, if the app offers the direct path (set by its lifespan, which
        # runs before any connection is accepted).
        front = self.app_state.get(DIRECT_PATH_STATE)
        self._front: RequestMiddleware | None = (
            front if front is not None and not self.root_path else None
        )
        # uvicorn's proxy headers (on by default): whom it believes X-Forwarded-* from.
        self._proxies = (
            self.app.trusted_hosts if isinstance(self.app, ProxyHeadersMiddleware) else None
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._headers_since = self.loop.time()  # the first request's headers count from here
        _watchdog(self.loop, self.connections, self.header_timeout, self.body_timeout).start()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._headers_since is None:
            self._headers_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._headers_since = None
        self._body_since = self.loop.time()
        if self._front is None or not self._direct(self._front):
            super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # serve it, then close

    def _direct(self, front: RequestMiddleware) -> bool:
        """Start the request on the direct path if it is a plain one to a hot route; else
        False: uvicorn's on_headers_complete takes it."""
        parser = self.parser
        method = parser.get_method().decode("latin-1")
        path = self.url.decode("latin-1")
        hot = front.hot_routes.get((method, path))
        if hot is None or self.expect_100_continue or parser.should_upgrade():
            return False
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return False  # uvicorn answers 503
        headers = RequestHeaders(self.headers)
        if headers.forwarded and self._trusted_proxy():
            return False  # uvicorn's ProxyHeadersMiddleware rewrites the client
        http_version = parser.get_http_version()
        cycle = HotCycle(
            self,
            front,
            hot,
            headers,
            method,
            path,
            http_version,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
        )
        existing = self.cycle
        self.cycle = cycle
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, _DIRECT)
        else:  # pipelined: queued behind the running request, as uvicorn does
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, _DIRECT))
        return True

    def _trusted_proxy(self) -> bool:
        """Whether uvicorn believes this peer's X-Forwarded-* (FORWARDED_ALLOW_IPS)."""
        proxies, client = self._proxies, self.client
        return proxies is not None and client is not None and client[0] in proxies

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is not _DIRECT:
            super()._start_asgi_task(cycle, app)
            return
        assert isinstance(cycle, HotCycle)
        task = self.loop.create_task(cycle.run())
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_message_complete(self) -> None:
        self._body_since = None
        super().on_message_complete()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client closed its sending side (shutdown(SHUT_WR), `nc -N`, some HTTP/1.0
        clients) after a whole request: answer it, then close. uvicorn closes at once, so
        an endpoint that awaits anything (INFERENCE_MODE=batch waits for its batch)
        would find its client gone. A request still incomplete cannot complete: close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._body_since is None:
            cycle.keep_alive = False  # the transport closes after the response
            return True  # keep our sending side open until then
        return None

    def shutdown(self) -> None:
        self._shutting_down = True
        if self._reading_headers:
            return  # a request is arriving: it is served, then the connection closes
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(SHUTDOWN_GRACE_SECONDS, self._close_if_idle)
            return
        super().shutdown()

    def _close_if_idle(self) -> None:
        if self._reading_headers or self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def check_timeouts(self, now: float) -> None:
        """Called by the watchdog: answer 408 and close if a request is late."""
        if self.transport.is_closing():
            return
        if self._body_since is not None and now - self._body_since > self.body_timeout:
            setting, what = f"API_BODY_TIMEOUT_SECONDS={self.body_timeout:g}", "body"
        elif (
            self._headers_since is not None
            and now - self._headers_since > self.header_timeout
            # Waiting behind a running request (pipelined) is not the client's delay.
            and (self.cycle is None or self.cycle.response_complete)
        ):
            setting, what = f"API_HEADER_TIMEOUT_SECONDS={self.header_timeout:g}", "headers"
        else:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        message = f"request {what} not received within {setting}"
        log.warning("%s: %s: 408, closed", client, message)
        self._headers_since = self._body_since = None
        self.transport.write(_timeout_response(message))
        self.transport.close()


class HotCycle(RequestResponseCycle):
    """A request on the direct path. uvicorn's protocol code sees a cycle like any other
    (body, more_body, message_event, keep_alive, disconnected, response_complete) and
    handles its body, pipelining, disconnection and shutdown as for the ASGI path."""

    def __init__(
        self,
        protocol: GuardedHttpToolsProtocol,
        front: RequestMiddleware,
        hot: HotRoute,
        headers: RequestHeaders,
        method: str,
        path: str,
        http_version: str,
        keep_alive: bool,
    ) -> None:
        super().__init__(
            scope=protocol.scope,
            transport=protocol.transport,
            flow=protocol.flow,
            logger=protocol.logger,
            access_logger=protocol.access_logger,
            access_log=False,
            default_headers=protocol.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=protocol.on_response_complete,
        )
        self.front = front
        self.hot = hot
        self.headers = headers
        self.method = method
        self.path = path
        self.http_version = http_version
        self.client = protocol.client

    async def run(self) -> None:
        try:
            # Usually the whole body came with the headers: no need to wait for it.
            whole = not self.more_body and not self.disconnected
            answer = await self.front.exchange(
                self.hot,
                self.headers,
                bytes(self.body) if whole else self.read_body,
                self.method,
                self.path,
                self.client,
                self.http_version,
            )
            if answer is not None:
                self.respond(answer)
        except BaseException as exc:  # as uvicorn's run_asgi: never leave the client hanging
            self.logger.error("Exception in the direct path", exc_info=exc)
            if not self.response_started:
                self.respond(error_answer(b"-", ApiError("internal server error")))
            else:
                self.transport.close()
            if not isinstance(exc, Exception):
                raise
        finally:
            self.on_response = lambda: None

    async def read_body(self) -> bytes:
        """The whole body, as uvicorn's receive() hands it over - or, once it exceeds
        MAX_BODY_BYTES, what came so far (the front door answers 413 and closes): at most
        one read more than the limit is buffered."""
        limit = self.front.max_body_bytes
        while self.more_body and not self.disconnected and len(self.body) <= limit:
            self.flow.resume_reading()  # paused at HIGH_WATER_LIMIT bytes
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected:
            raise ClientDisconnected
        return bytes(self.body)

    def respond(self, answer: Answer) -> None:
        """Write the answer in one piece; then as uvicorn's send() after the last body."""
        if self.disconnected or self.transport.is_closing():  # gone, or closed by a timeout
            return
        status, headers, body = answer
        content = [STATUS_LINE[status]]
        for name, value in self.default_headers:  # the Date header
            content += (name, b": ", value, b"\r\n")
        closes = False
        for name, value in headers:
            closes = closes or name == b"connection"  # only ever "close" here
            content += (name, b": ", value, b"\r\n")
        if closes:
            self.keep_alive = False
        elif not self.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        self.response_started = True
        self.transport.write(b"".join(content))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class _Watchdog:
    """Sweeps one server's connections while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], period: float):
        self.loop = loop
        self.connections = connections
        self.period = period
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                connection.check_timeouts(now)
        if self.connections:
            self.start()


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = (
    weakref.WeakKeyDictionary()
)


def _watchdog(
    loop: asyncio.AbstractEventLoop, connections: set[Any], *timeouts: float
) -> _Watchdog:
    watchdog = _watchdogs.get(loop)
    if watchdog is None:
        period = min(MAX_SWEEP_SECONDS, *(t / 4 for t in timeouts))
        watchdog = _watchdogs[loop] = _Watchdog(loop, connections, period)
    return watchdog


def guarded_protocol(
    header_timeout: float, body_timeout: float
) -> functools.partial[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...); picklable, for worker processes."""
    return functools.partial(
        GuardedHttpToolsProtocol, header_timeout=header_timeout, body_timeout=body_timeout
    )
