"""Entry point: settings -> logging -> check the model -> uvicorn.

Exit codes: 0 stopped cleanly; 2 bad settings; 3 the model directory cannot be served
(missing, corrupt, or not what the manifest recorded) — one line says which.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from model_api.config import ApiSettings
from model_api.errors import ModelError
from model_api.logging import configure_logging
from model_api.main import create_app
from model_api.model import OnnxModel

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

    # Fail before listening, with one line, rather than serve 500s or crash-loop quietly.
    try:
        model = OnnxModel.load(settings.model_dir, settings.ort_threads)
    except ModelError as exc:
        log.error("cannot serve the model: %s", exc)
        sys.exit(3)

    common = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "timeout_graceful_shutdown": 20,
        "server_header": False,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, model), **common)
    else:
        del model  # each worker process loads its own copy
        uvicorn.run("model_api.main:app_from_env", factory=True, workers=settings.workers, **common)


if __name__ == "__main__":
    main()
