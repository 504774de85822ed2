"""Log set-up for the API: stdout, text or JSON lines, each carrying the request id.

uvicorn's own loggers go through the same handler; its access log is replaced by
`model_api.access` lines written by the request middleware (they carry the request id,
the route and the duration, which uvicorn's cannot), through `AccessLog`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextvars import ContextVar
from select import PIPE_BUF
from typing import Any

import orjson
from pythonjsonlogger.json import JsonFormatter

from model_api.deferred import FLUSH_SECONDS, Deferred

# The current request's id; "-" outside a request (start-up, shutdown).
request_id: ContextVar[str] = ContextVar("request_id", default="-")

# (time, request id, client, method, path, HTTP version, route, status, seconds)
_AccessRecord = tuple[Any, ...]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def configure_logging(level: str, fmt: str) -> None:
    """Called once per process; pass `log_config=None` to uvicorn so it adds nothing."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RequestId())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "severity", "asctime": "time"})
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Replaced by AccessLog's lines (they carry the request id, route and duration).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


class AccessLog:
    """The `model_api.access` lines, in the same text or JSON shape as every other line,
    without the logging module's per-record cost (a LogRecord, filters, handlers and a
    formatter: about 13 µs, as much as the rest of a small model's request).

    A request only appends its facts (model_api.deferred); the lines are formatted and
    written to stdout at most FLUSH_SECONDS later, in writes of at most PIPE_BUF bytes of
    whole lines, so that lines from several worker processes on one pipe never interleave.
    `flush()` at shutdown writes the rest; a process killed with SIGKILL loses at most
    FLUSH_SECONDS of access lines.
    """

    FLUSH_SECONDS = FLUSH_SECONDS
    NAME = "model_api.access"

    def __init__(self, fmt: str, fd: int | None = None) -> None:
        self.json = fmt == "json"
        self.fd = _stdout_fd() if fd is None else fd
        self._pending: Deferred[_AccessRecord] = Deferred(self._write_lines)
        self._second = -1
        self._stamp = ""

    @classmethod
    def enabled(cls, fmt: str, wanted: bool) -> AccessLog | None:
        """An AccessLog if access lines are wanted and LOG_LEVEL lets INFO lines through."""
        if not wanted or not logging.getLogger(cls.NAME).isEnabledFor(logging.INFO):
            return None
        return cls(fmt)

    def write(
        self,
        rid: str,
        client: tuple[str, int] | None,
        method: str,
        path: str,
        http_version: str,
        route: str,
        status: int,
        seconds: float,
    ) -> None:
        """One request's line, stamped now, written soon."""
        self._pending.add(
            (time.time(), rid, client, method, path, http_version, route, status, seconds)
        )

    def flush(self) -> None:
        self._pending.flush()

    def _write_lines(self, records: list[_AccessRecord]) -> None:
        chunk: list[bytes] = []
        size = 0
        for record in records:
            line = self._line(record)
            if chunk and size + len(line) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _line(self, record: _AccessRecord) -> bytes:
        now, rid, client, method, path, http_version, route, status, seconds = record
        second = int(now)
        if second != self._second:  # strftime once a second, as logging's asctime
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = f"{self._stamp},{int((now - second) * 1000):03d}"
        peer = f"{client[0]}:{client[1]}" if client else "-"
        ms = seconds * 1000
        message = f'{peer} - "{method} {path} HTTP/{http_version}" {status} {ms:.2f}ms'
        if not self.json:
            return f"{stamp} INFO {self.NAME} [{rid}]: {message}\n".encode()
        return orjson.dumps(
            {
                "time": stamp,
                "severity": "INFO",
                "name": self.NAME,
                "message": message,
                "request_id": rid,
                "client": peer,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(ms, 3),
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )

    def _write(self, data: bytes) -> None:
        try:
            if self.fd is None:  # stdout without a file descriptor (captured in tests)
                sys.stdout.write(data.decode())
                sys.stdout.flush()
                return
            while data:
                data = data[os.write(self.fd, data) :]
        except (OSError, ValueError):
            pass  # stdout gone (closed pipe): nothing left to tell


def _stdout_fd() -> int | None:
    try:
        sys.stdout.flush()  # what print() buffered goes first
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return None
