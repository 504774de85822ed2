"""What uvicorn's HTTP/1.1 protocol lacks, added in front of it, not inside it.

uvicorn bounds neither the request head (a 100 KB header line, or 5,000 header lines,
are accepted and buffered) nor the time a client may take to send its head or its body
(slowloris: one byte every few seconds holds a connection forever), and it drops the
answer of a client that half-closes its connection after sending its request. The
`Guard` is an asyncio protocol that uvicorn creates for each connection instead of its
own (`uvicorn.Config(http="model_api.guard:Guard")`); it creates uvicorn's protocol
(`inner`) and passes everything on to it, through asyncio's Protocol interface only:

- It parses the same bytes first, with its own httptools parser (the one uvicorn uses),
  to know where each request's head and body begin and end: a head over
  API_MAX_HEAD_BYTES or with more than API_MAX_HEADERS lines gets 431 and the connection
  is closed before uvicorn buffers it.
- A head must be complete within API_HEADER_TIMEOUT_SECONDS of the connection opening
  (first request) or of its first byte (later ones); a body within
  API_BODY_TIMEOUT_SECONDS of its head: else 408 and closed. One watchdog per event loop
  sweeps the open connections a few times per timeout (no timer per request).
- A client that closes its sending side after a whole request still gets its answer:
  the connection is kept open and the app adds `Connection: close` to that answer.
- An answer's head and body leave in one send (`Coalescing`, the transport uvicorn's
  protocol is given): uvicorn writes them separately, and each send to a client costs
  more than the rest of a small request (measured: one send instead of two is ~11% less
  server CPU per /predict).
- The hot operations (`FastRoutes`: POST /predict, V2 infer...) skip uvicorn's request
  cycle when a read brings exactly one whole, plain request of theirs to a connection
  that owes no answer: the guard has parsed it already, so it hands the app its scope
  and body (`WholeRequestApp.serve_whole`: a plain call, no task, no ASGI messages), and
  writes the answer the app gives back, now or from a callback (see `Guard._serve`).
  Anything else (a request split across reads, pipelined requests, HTTP/1.0, `Expect`,
  chunked bodies, upgrades, forwarded headers, a query string) goes to uvicorn as before.

The app learns its connection's guard through `current_guard` (a context variable set
while uvicorn handles the bytes, so uvicorn's request task inherits it) and reports
`answering()` / `answered()` around each response: time spent waiting for our answer is
not the client's delay, and the guard knows when the last answer of a half-closed
connection went out. tests/integration/test_api_guard.py pins the uvicorn behaviour this
relies on: the protocol class is created with uvicorn's keyword arguments, and the
request task starts within `data_received`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

import httptools
import orjson
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

log = logging.getLogger(__name__)

# The connection whose bytes are being handled; the request tasks uvicorn starts copy it.
current_guard: ContextVar[Guard | None] = ContextVar("current_guard", default=None)

# uvicorn's httptools protocol, by the name its `http` setting accepts.
INNER_PROTOCOL = "httptools"
# The watchdog's period: a quarter of the shortest timeout, at most this.
MAX_SWEEP_SECONDS = 1.0
# An answer's head and its body's first piece leave in one send up to this size.
COALESCE_MAX_BYTES = 64 * 1024
# Per header line beyond its name and value: ": " and CRLF.
LINE_OVERHEAD = 4


# The lifespan state keys under which the app hands its Limits and FastRoutes to the
# guard: uvicorn creates the protocol with the state the app's lifespan yielded.
LIMITS_STATE = "model_api.guard.limits"
FAST_STATE = "model_api.guard.fast"
# Request headers that send a request through uvicorn: what it handles and we do not.
_SLOW_HEADERS = frozenset(
    {b"expect", b"transfer-encoding", b"upgrade", b"x-forwarded-for", b"x-forwarded-proto",
     b"forwarded", b"connection"}
)  # fmt: skip
# How a fast route answers: status, headers (name, value), body; called once.
Respond = Callable[[int, list[tuple[bytes, bytes]], bytes], None]


class WholeRequestApp(Protocol):
    def serve_whole(self, scope: dict[str, Any], body: bytes, respond: Respond) -> None:
        """Serve a request that came whole (`scope` as ASGI's http scope): call
        `respond` exactly once, now or later from a callback on the loop."""


@dataclass(frozen=True)
class FastRoutes:
    """(method, exact path) -> anything: the requests `app` serves without uvicorn's
    request cycle (the mapping may grow: the V2 paths join once the model is known)."""

    routes: Mapping[tuple[str, str], Any]
    app: WholeRequestApp


@dataclass(frozen=True)
class Limits:
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    @property
    def sweep_seconds(self) -> float:
        return min(MAX_SWEEP_SECONDS, self.header_timeout / 4, self.body_timeout / 4)


@functools.cache
def _inner_class() -> Any:
    """uvicorn's httptools protocol, by the name its `http` setting accepts."""
    return import_from_string(HTTP_PROTOCOLS[INNER_PROTOCOL])


def refusal(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" \
        b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)  # fmt: skip


class Guard(asyncio.Protocol):
    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Created as uvicorn creates its own protocols (uvicorn.server.Server.startup).
        self.inner: asyncio.Protocol = _inner_class()(
            config=config, server_state=server_state, app_state=app_state, _loop=_loop
        )
        self.limits: Limits = app_state.get(LIMITS_STATE) or Limits()
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.outer: Coalescing | None = None  # what uvicorn's protocol writes to
        self.peer = "-"
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn
        # loop.time() since when a head / a body has been awaited; None: not awaited.
        self.head_since: float | None = None
        self.body_since: float | None = None
        self.in_head = False  # a request's first byte came, its head has not
        self.head_bytes = 0  # of the head being received: its complete lines...
        self.head_chunks = 0  # ...and the bytes of reads that came wholly inside it
        self.headers = 0
        self.complete = 0  # requests received whole
        self.answers = 0  # answers sent
        self.busy = 0  # answers being made: the connection waits for us, not the client
        self.eof = False  # the client closed its sending side
        # The fast path (FastRoutes): the request being collected from this read, the
        # one being answered, the reads that came meanwhile, and since when idle.
        self.fast: FastRoutes | None = app_state.get(FAST_STATE)
        self.keep_alive = float(config.timeout_keep_alive)
        # uvicorn's limit_concurrency counts the connections and the request tasks in
        # its server state; a request we serve is one per connection, counted with it.
        # Over the limit uvicorn answers (503), as it does.
        self.server_state = server_state
        self.limit = config.limit_concurrency
        self.collecting = False
        self.request: _Request | None = None
        self.serving = False
        self.backlog: list[bytes] = []
        self.idle_since: float | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        # The fast path's scopes name both ends: read once per connection.
        self.client = _address(transport.get_extra_info("peername"))
        self.server = _address(transport.get_extra_info("sockname"))
        if self.client is not None:
            self.peer = f"{self.client[0]}:{self.client[1]}"
        self.head_since = self.loop.time()  # the first request's head counts from here
        _watchdog(self.loop, self.limits).add(self)
        self.outer = Coalescing(transport)
        self.inner.connection_made(self.outer)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.serving:  # we owe an answer: what comes next waits for it, in order
            self.backlog.append(data)
            return
        self.idle_since = None
        parser = self.parser
        # A read that starts a request on a connection that owes nothing may be served
        # here, if it turns out to hold that one request whole.
        self.collecting = (
            self.fast is not None
            and parser is not None
            and not self.in_head
            and self.body_since is None
            and self.complete == self.answers
            and self.busy == 0
        )
        self.request = None
        if parser is not None:
            inside_head = self.in_head
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.parser = None  # no longer HTTP/1.1 requests: uvicorn's to handle
            except httptools.HttpParserError:
                self.parser = None  # uvicorn finds the same error and answers 400
            if inside_head and self.in_head:
                self.head_chunks += len(data)
            if self._head_too_large():
                self._refuse_head()
                return
            request, self.request, self.collecting = self.request, None, False
            if request is not None and request.ready and not self.in_head and self._room():
                self._serve(request)
                return
        token = current_guard.set(self)
        try:
            self.inner.data_received(data)
        finally:
            current_guard.reset(token)

    def eof_received(self) -> bool | None:
        """Keep the connection open for the answers still owed if their requests came
        whole; a request still arriving cannot be finished: close (uvicorn's request sees
        the disconnect)."""
        self.eof = True
        self.inner.eof_received()
        waiting = self.in_head or self.body_since is not None
        return True if self.complete > self.answers and not waiting else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_since = self.body_since = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- httptools callbacks (our parser) --------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = self.head_chunks = self.headers = 0
        if self.head_since is None:
            self.head_since = self.loop.time()
        if self.collecting:
            if self.request is None:
                self.request = _Request()
            else:  # a second request in the same read: pipelined, uvicorn's
                self.request.ready = False
                self.collecting = False

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.collecting:
            self.request.url += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        self.head_bytes += len(name) + len(value) + LINE_OVERHEAD
        if self._head_too_large():
            raise HeadTooLarge  # stops the parser: data_received refuses the request
        if self.collecting:
            name = name.lower()
            if name in _SLOW_HEADERS:
                self.collecting = False
                self.request = None
            else:
                self.request.headers.append((name, value))  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_since = None
        self.body_since = self.loop.time()
        if self.collecting:
            parser, request, fast = self.parser, self.request, self.fast
            assert parser is not None and request is not None and fast is not None
            url = bytes(request.url)
            method = parser.get_method().decode("ascii", "replace")
            if (
                parser.get_http_version() != "1.1"
                or b"?" in url
                or b"%" in url
                or (method, url.decode("latin-1")) not in fast.routes
            ):
                self.collecting = False
                self.request = None
            else:
                request.method = method
                request.path = url.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.collecting:
            self.request.body.append(body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        self.body_since = None
        self.complete += 1
        if self.collecting:
            self.request.ready = True  # type: ignore[union-attr]

    # -- the app's side --------------------------------------------------------------------
    def answering(self) -> bool:
        """The app starts an answer (its request's body is read): until `answered`, the
        connection waits for us, not for the client. True if the connection must close
        after this answer: the client half-closed, and this is its last request."""
        self.busy += 1
        if self.outer is not None:
            self.outer.hold_next = True
        return self.last_answer()

    def last_answer(self) -> bool:
        """Whether the answer being made is the connection's last: the client
        half-closed, and no other request of it waits for an answer."""
        return self.eof and self.complete - self.answers <= 1

    def answered(self) -> None:
        if self.outer is not None:
            self.outer.flush()
        self.busy -= 1
        self.answers += 1
        if self.eof and self.complete <= self.answers and self.transport is not None:
            self.transport.close()  # half-closed and owed nothing more: done
        elif self.busy == 0:  # what waited behind the answer starts to count now
            now = self.loop.time()
            if self.head_since is not None:
                self.head_since = now
            if self.body_since is not None:
                self.body_since = now

    # -- the fast path ---------------------------------------------------------------------
    def _room(self) -> bool:
        """Within uvicorn's limit_concurrency (else uvicorn answers 503, as it does)."""
        limit, state = self.limit, self.server_state
        return limit is None or (len(state.connections) < limit and len(state.tasks) < limit)

    def _serve(self, request: _Request) -> None:
        """Serve one whole hot request ourselves: no task, no ASGI messages; the app
        answers through `_Answer.respond`, in one write. The app gets it in a callback
        right after this turn of the loop's reads, not within this one: the reads of a
        turn are cheap (parsing), and requests that arrive together then reach the app
        together; a model that runs in a thread of its own gets them in one call instead
        of the first alone (the thread takes the GIL between two reads)."""
        assert self.fast is not None and self.transport is not None and self.outer is not None
        self.serving = True
        self.outer.deferring = True  # uvicorn closing the connection waits for our answer
        # uvicorn's protocol sees no request of these: its keep-alive countdown from an
        # earlier answer of its own must not run out under ours (empty data resets it).
        self.inner.data_received(b"")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": request.method,
            "root_path": "",
            "path": request.path,
            "raw_path": bytes(request.url),
            "query_string": b"",
            "headers": request.headers,
        }
        self.answering()
        answer = _Answer(self)
        self.loop.call_soon(self._start, scope, b"".join(request.body), answer)

    def _start(self, scope: dict[str, Any], body: bytes, answer: _Answer) -> None:
        assert self.fast is not None
        try:
            self.fast.app.serve_whole(scope, body, answer.respond)
        except Exception:
            log.exception("%s: unexpected error serving a request", self.peer)
            if not answer.done:
                answer.done = True
                self._served(close=True)  # no answer can come: the client must not wait

    def _served(self, close: bool) -> None:
        """Our answer is out (or never will be, and `close`): what waited behind it
        comes next, in order."""
        self.answered()
        outer, transport = self.outer, self.transport
        assert outer is not None and transport is not None
        if close or outer.close_pending:
            transport.close()
        if transport.is_closing():
            self.serving = outer.deferring = False
            self.backlog.clear()
        elif self.backlog:  # pipelined: in a later callback, still in order (still serving)
            self.loop.call_soon(self._resume)
        else:
            self.serving = outer.deferring = False
            self.idle_since = self.loop.time()

    def _resume(self) -> None:
        outer, transport = self.outer, self.transport
        assert outer is not None and transport is not None
        self.serving = outer.deferring = False
        if outer.close_pending:
            transport.close()
        data = b"".join(self.backlog)
        self.backlog.clear()
        if not transport.is_closing():
            self.idle_since = self.loop.time()
            self.data_received(data)

    # -- refusals --------------------------------------------------------------------------
    def _head_too_large(self) -> bool:
        limits = self.limits
        return (
            self.head_bytes > limits.max_head_bytes
            or self.head_chunks > limits.max_head_bytes
            or self.headers > limits.max_headers
        )

    def _refuse_head(self) -> None:
        limits = self.limits
        message = (
            f"more than API_MAX_HEADERS={limits.max_headers} header lines"
            if self.headers > limits.max_headers
            else f"request head over API_MAX_HEAD_BYTES={limits.max_head_bytes}"
        )
        self._close_with(431, "Request Header Fields Too Large", message)

    def check_timeouts(self, now: float) -> None:
        """Called by the watchdog: 408 and close if the client is late; close a
        connection idle since our last answer for longer than uvicorn's keep-alive."""
        if self.busy or self.transport is None or self.transport.is_closing():
            return
        if self.idle_since is not None and now - self.idle_since > self.keep_alive:
            self.transport.close()
            return
        limits = self.limits
        if self.body_since is not None and now - self.body_since > limits.body_timeout:
            what, setting = "body", f"API_BODY_TIMEOUT_SECONDS={limits.body_timeout:g}"
        elif self.head_since is not None and now - self.head_since > limits.header_timeout:
            what, setting = "head", f"API_HEADER_TIMEOUT_SECONDS={limits.header_timeout:g}"
        else:
            return
        self._close_with(408, "Request Timeout", f"request {what} not received within {setting}")

    def _close_with(self, status: int, reason: str, message: str) -> None:
        log.warning("%s: %s: %d, closed", self.peer, message, status)
        self.parser = None
        self.head_since = self.body_since = None
        if self.outer is not None and not self.outer.is_closing():
            self.outer.write(refusal(status, reason, message))
            self.outer.close()


class Coalescing:
    """The connection's transport as uvicorn's protocol sees it: the same, except that
    the first write of an answer (uvicorn writes the status line and headers) is held
    until the next one (the body, or its first piece), so that both leave in one send.
    uvicorn writes them separately: two system calls per answer, each waking the client,
    which cost more than the rest of a small request. Anything else passes at once; a
    held write also goes at the answer's end or when the transport closes."""

    __slots__ = ("close_pending", "deferring", "held", "hold_next", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.hold_next = False  # set by Guard.answering: an answer begins
        self.held: bytes | None = None
        # While the guard serves a request itself, uvicorn (shutting down, or its
        # keep-alive running out) closes the connection after that answer, not before.
        self.deferring = False
        self.close_pending = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            if len(data) > COALESCE_MAX_BYTES:
                self.transport.write(held)  # a large body: a second send costs less than a copy
            else:
                data = held + data
        elif self.hold_next:
            self.hold_next = False
            self.held = bytes(data)
            return
        self.transport.write(data)

    def flush(self) -> None:
        self.hold_next = False
        if self.held is not None:
            held, self.held = self.held, None
            self.transport.write(held)

    def close(self) -> None:
        if self.deferring:
            self.close_pending = True
            return
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading...
        return getattr(self.transport, name)


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an over-long head."""


class _Request:
    """A hot request collected from one read by the guard's parser."""

    __slots__ = ("body", "headers", "method", "path", "ready", "url")

    def __init__(self) -> None:
        self.url = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.method = ""
        self.path = ""
        self.ready = False


class _Answer:
    """How the app answers a request the guard serves: in one write, as uvicorn would
    write it (status line, the app's headers, a date; `connection: close` when the
    connection closes after it)."""

    __slots__ = ("done", "guard")

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.done = False

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self.done:
            raise RuntimeError("the request has been answered already")
        self.done = True
        guard = self.guard
        outer = guard.outer
        close = guard.last_answer() or (outer is not None and outer.close_pending)
        said = False  # the app closes the connection itself (e.g. after a refusal)
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
        for name, value in headers:
            if name.lower() == b"connection" and value.lower() == b"close":
                said = True
            lines.append(b"%s: %s\r\n" % (name, value))
        if close and not said:
            lines.append(b"connection: close\r\n")
        lines += (_date_line(), b"\r\n", body)
        transport = guard.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(lines))
        guard._served(close or said)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


_date: list[Any] = [0, b""]


def _date_line() -> bytes:
    """The date header uvicorn sends, recomputed once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, b"date: %s\r\n" % formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[no-any-return]


class _Watchdog:
    """Sweeps one event loop's open connections while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.loop = loop
        self.guards: weakref.WeakSet[Guard] = weakref.WeakSet()
        self.period = period
        self._handle: asyncio.TimerHandle | None = None

    def add(self, guard: Guard) -> None:
        self.guards.add(guard)
        if self._handle is None:
            self._handle = self.loop.call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        for guard in list(self.guards):
            if guard.transport is None or guard.transport.is_closing():
                self.guards.discard(guard)
            else:
                guard.check_timeouts(now)
        if self.guards:
            self._handle = self.loop.call_later(self.period, self._sweep)


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = (
    weakref.WeakKeyDictionary()
)


def _watchdog(loop: asyncio.AbstractEventLoop, limits: Limits) -> _Watchdog:
    watchdog = _watchdogs.get(loop)
    if watchdog is None:
        watchdog = _watchdogs[loop] = _Watchdog(loop, limits.sweep_seconds)
    return watchdog
