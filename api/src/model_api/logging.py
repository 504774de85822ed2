"""Log set-up for the API: stdout, text or JSON lines, each carrying the request id.

uvicorn's own loggers go through the same handler; its access log is replaced by
`model_api.access` lines written by the request middleware (they carry the request id,
the route and the duration, which uvicorn's cannot).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

# The current request's id; "-" outside a request (start-up, shutdown).
request_id: ContextVar[str] = ContextVar("request_id", default="-")

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
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
