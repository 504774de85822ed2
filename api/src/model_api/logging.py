"""Log set-up for the API: stdout, text or JSON lines; uvicorn's loggers go through it too."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# Probes hit these every few seconds; their access lines would drown the rest.
PROBE_PATHS = ("/health", "/ready", "/v2/health/live", "/v2/health/ready")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _DropProbes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access records carry (client, method, path, http_version, status).
        args = record.args
        ok = isinstance(args, tuple) and len(args) >= 5 and args[4] == 200
        return not (ok and str(args[2]).split("?", 1)[0] in PROBE_PATHS)


def configure_logging(level: str, fmt: str) -> None:
    """Called once per process; pass `log_config=None` to uvicorn so it adds nothing."""
    handler = logging.StreamHandler(sys.stdout)
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
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [f for f in access.filters if not isinstance(f, _DropProbes)]
    access.addFilter(_DropProbes())
