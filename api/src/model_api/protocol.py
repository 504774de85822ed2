"""uvicorn's httptools protocol with two things it lacks (uvicorn 0.54):

- A header read timeout. uvicorn arms a timer only between requests on a keep-alive
  connection (`timeout_keep_alive`); a connection that opens and then sends its request
  line and headers one byte every few seconds (slowloris) is held forever, and enough of
  them exhaust the worker's file descriptors. Here the headers of a request must be
  complete within API_HEADER_TIMEOUT_SECONDS of the connection opening (first request) or
  of the request's first byte (later ones); else 408 and the connection is closed.
  Bodies are bounded by the ASGI middleware (API_BODY_TIMEOUT_SECONDS).
- A gentler shutdown. uvicorn closes at once every connection without a request in
  progress — including one that was accepted a moment ago and whose request is still in
  the socket buffer or half parsed: that client sent a request and gets a reset. Here such
  a connection gets SHUTDOWN_GRACE_SECONDS to deliver its request (served, then closed);
  one whose headers are arriving is left to finish them (the header timeout bounds it).

uvicorn.Config(http=guarded_protocol(settings)) selects it; everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# How long a connection without a request gets to deliver one once shutdown has begun:
# a request sent right after connecting arrives within a round trip.
SHUTDOWN_GRACE_SECONDS = 0.5

_TIMEOUT_BODY = b'{"error":"request headers not received within API_HEADER_TIMEOUT_SECONDS"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _TIMEOUT_BODY
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._reading_headers = False
        self._shutting_down = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()  # the first request's headers count from the connect

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False  # serve it, then close

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

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # pipelined behind a running request: check later
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.warning(
            "%s: no complete request headers within API_HEADER_TIMEOUT_SECONDS=%g: 408, closed",
            client,
            self.header_timeout,
        )
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def guarded_protocol(header_timeout: float) -> functools.partial[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...); picklable, for worker processes."""
    return functools.partial(GuardedHttpToolsProtocol, header_timeout=header_timeout)
