"""Log set-up for the loader: one line per event on stderr, text or JSON lines."""

from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter  # only when asked for: start-up time

        handler.setFormatter(
            JsonFormatter(JSON_FIELDS, rename_fields={"levelname": "severity", "asctime": "time"})
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The loader reports storage and credential problems itself, in one line; these
    # libraries would add their own warnings about the same event.
    for name in ("urllib3", "google"):
        logging.getLogger(name).setLevel(max(root.level, logging.ERROR))
