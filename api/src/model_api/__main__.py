"""Entry point: settings -> logging -> the server (model_api.server) -> exit code.

Exit codes: 0 stopped cleanly; 2 bad settings; 3 the model cannot be served (missing,
corrupt, not what the manifest recorded, or too large for the memory limit) — one line
says which.
"""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from model_api.config import ApiSettings
from model_api.logging import configure_logging

log = logging.getLogger("model_api")


def main() -> None:
    try:
        settings = ApiSettings()
    except ValidationError as exc:
        configure_logging("INFO", "text")
        for err in exc.errors():
            log.error("bad configuration: %s: %s", ".".join(map(str, err["loc"])), err["msg"])
        sys.exit(2)
    configure_logging(settings.log_level, settings.log_format)

    from model_api.server import run  # after logging: importing it loads onnxruntime

    sys.exit(run(settings))


if __name__ == "__main__":
    main()
