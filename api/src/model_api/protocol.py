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
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# How long a connection without a request gets to deliver one once shutdown has begun:
# a request sent right after connecting arrives within a round trip.
SHUTDOWN_GRACE_SECONDS = 0.5
# The watchdog's period: a quarter of the shortest timeout, at most this.
MAX_SWEEP_SECONDS = 1.0


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
        super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # serve it, then close

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
