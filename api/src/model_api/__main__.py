"""Entry point: settings -> logging -> uvicorn; the app loads the model once listening.

Exit codes: 0 stopped cleanly; 2 bad settings; 3 the model directory cannot be served
(missing, corrupt, or not what the manifest recorded) — one line says which.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from model_api.config import ApiSettings
from model_api.errors import ModelError
from model_api.logging import configure_logging
from model_api.main import EXIT_MODEL, create_app, load_model, served
from model_api.protocol import guarded_protocol

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

    common = uvicorn_options(settings)
    if settings.workers == 1:
        sys.exit(_serve_one(settings, common))

    # Several workers: check the model once here, so a bad one stops the whole process
    # with one line instead of workers failing (and being restarted) one by one.
    try:
        load_model(settings)
    except ModelError as exc:
        log.error("cannot serve the model: %s", exc)
        sys.exit(EXIT_MODEL)
    try:
        _metrics_dir()
    except OSError as exc:
        log.error(
            "bad configuration: API_WORKERS=%d needs a writable directory for the workers' "
            "metrics (a /tmp volume, or PROMETHEUS_MULTIPROC_DIR): %s",
            settings.workers,
            exc,
        )
        sys.exit(2)
    log.info("starting %d workers", settings.workers)
    # What uvicorn.run does for workers > 1, with the supervisor below.
    config = uvicorn.Config(
        "model_api.main:app_from_env", factory=True, workers=settings.workers, **common
    )
    Supervisor(config, sockets=[config.bind_socket()]).run()


def uvicorn_options(settings: ApiSettings) -> dict[str, Any]:
    """The uvicorn settings the API runs with (bench_api runs its reference apps with
    the same, so that they measure the same HTTP stack)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,  # model_api.access writes them, with the request id
        "timeout_keep_alive": settings.keep_alive_seconds,
        # httptools' protocol plus a header read timeout and a gentler shutdown.
        "http": guarded_protocol(settings.header_timeout_seconds, settings.body_timeout_seconds),
        "limit_concurrency": settings.limit_concurrency or None,
        "timeout_graceful_shutdown": 20,
        "server_header": False,
    }


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, except that on SIGTERM it closes its own copy of the
    listening socket before it signals the workers. Else the socket outlives the workers'
    listeners (their drain and shutdown) until this process exits: connections the kernel
    accepts meanwhile wait in the backlog for nobody and are reset at the end. Closed
    here, the port closes when the last worker stops listening."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def _metrics_dir() -> None:
    """Metrics from every worker go to files in one directory and /metrics sums them.
    A new one under /tmp (the tmpfs under a read-only root), or the one given, emptied:
    files left from an earlier run would be counted again."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="model-api-metrics-")
        return
    directory = Path(given)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def _serve_one(settings: ApiSettings, common: dict[str, Any]) -> int:
    failed: list[ModelError] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: ModelError) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(
        uvicorn.Config(served(create_app(settings, on_load_error=on_load_error)), **common)
    )
    server.run()
    return EXIT_MODEL if failed else 0


if __name__ == "__main__":
    main()
