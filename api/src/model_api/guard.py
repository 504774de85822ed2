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
import weakref
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

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


# The lifespan state key under which the app hands its Limits to the guard: uvicorn
# creates the protocol with the state the app's lifespan yielded.
LIMITS_STATE = "model_api.guard.limits"


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

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.head_since = self.loop.time()  # the first request's head counts from here
        _watchdog(self.loop, self.limits).add(self)
        self.outer = Coalescing(transport)
        self.inner.connection_made(self.outer)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        parser = self.parser
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

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        self.head_bytes += len(name) + len(value) + LINE_OVERHEAD
        if self._head_too_large():
            raise HeadTooLarge  # stops the parser: data_received refuses the request

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_since = None
        self.body_since = self.loop.time()

    def on_message_complete(self) -> None:
        self.body_since = None
        self.complete += 1

    # -- the app's side --------------------------------------------------------------------
    def answering(self) -> bool:
        """The app starts an answer (its request's body is read): until `answered`, the
        connection waits for us, not for the client. True if the connection must close
        after this answer: the client half-closed, and this is its last request."""
        self.busy += 1
        if self.outer is not None:
            self.outer.hold_next = True
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
        """Called by the watchdog: 408 and close if the client is late."""
        if self.busy or self.transport is None or self.transport.is_closing():
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

    __slots__ = ("held", "hold_next", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.hold_next = False  # set by Guard.answering: an answer begins
        self.held: bytes | None = None

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
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading...
        return getattr(self.transport, name)


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing an over-long head."""


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
