"""How the API runs: uvicorn, its settings, and how many worker processes.

uvicorn serves HTTP/1.1 with httptools, through our guard (model_api.guard) in front of
its protocol; everything is configured through uvicorn's public settings. With one
worker (a large model, one CPU, or API_WORKERS=1) the server runs in this process;
with several, uvicorn's supervisor starts them and each loads the model itself.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from model_api.capacity import Plan, cpu_count, memory_limit, plan
from model_api.config import ApiSettings
from model_api.dataplane import load_model
from model_api.errors import ModelError, ModelMissingError
from model_api.main import EXIT_MODEL, create_app, served
from model_api.model import OnnxModel, model_size
from model_api.workers import make_ready_dir

log = logging.getLogger("model_api")

GUARD = "model_api.guard:Guard"
# In-flight requests get this long to finish after the drain, before uvicorn cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 20


def uvicorn_options(settings: ApiSettings) -> dict[str, Any]:
    """The uvicorn settings the API runs with (bench_api runs its reference apps with
    the same, so that they measure the same HTTP stack)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": GUARD,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,  # model_api.access writes them, with the request id
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.limit_concurrency or None,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "server_header": False,
    }


def capacity_plan(settings: ApiSettings, warm: OnnxModel | None = None) -> Plan:
    """Workers and threads for this model in this container (model_api.capacity), given
    the model warmed up on one thread if it was (its latency and batch gain). A model
    still to come (MODEL_WAIT_SECONDS) is of unknown size: one worker, unless API_WORKERS
    says otherwise, and the server is live while it waits."""
    try:
        size = model_size(settings.model_dir)
    except ModelMissingError:
        if settings.model_wait_seconds <= 0:
            raise
        log.info("no model yet: planning without its size; waiting up to MODEL_WAIT_SECONDS")
        size = 0
        workers = settings.workers or 1
        return plan(size, cpu_count(), None, workers=workers, threads=settings.ort_threads)
    return plan(
        size,
        cpu_count(),
        memory_limit(),
        workers=settings.workers,
        threads=settings.ort_threads,
        latency=None if warm is None else warm.latency,
        gain=None if warm is None else warm.batch_gain,
    )


def run(settings: ApiSettings) -> int:
    """Serve until stopped; the exit code (0, or 3: the model cannot be served)."""
    try:
        chosen = capacity_plan(settings)
    except ModelError as exc:
        log.error("cannot serve the model: %s", exc)
        return EXIT_MODEL
    if chosen.workers > 1:
        # Several workers: check the model once here, so a bad one stops the whole process
        # with one line instead of workers failing (and being restarted) one by one; and,
        # with API_WORKERS=auto, see whether it is compute-bound (capacity: one worker).
        try:
            warm = load_model(settings, chosen.threads)
        except ModelError as exc:
            log.error("cannot serve the model: %s", exc)
            return EXIT_MODEL
        if settings.workers is None:
            chosen = capacity_plan(settings, warm)
        del warm  # the workers load their own
    log.info("plan: %s", chosen.describe())
    settings = settings.model_copy(
        update={"workers": chosen.workers, "ort_threads": chosen.threads}
    )
    if chosen.workers == 1:
        return _serve_here(settings)
    try:
        _metrics_dir()
        make_ready_dir()
    except OSError as exc:
        log.error(
            "bad configuration: API_WORKERS=%d needs a writable directory for the workers' "
            "metrics and readiness (a /tmp volume, or PROMETHEUS_MULTIPROC_DIR): %s",
            chosen.workers,
            exc,
        )
        return 2
    # The workers read their settings from the environment: hand them the plan.
    os.environ["API_WORKERS"] = str(chosen.workers)
    os.environ["ORT_INTRA_OP_THREADS"] = str(chosen.threads)
    log.info("starting %d workers", chosen.workers)
    uvicorn.run(
        "model_api.main:app_from_env",
        factory=True,
        workers=chosen.workers,
        **uvicorn_options(settings),
    )
    return 0


def _serve_here(settings: ApiSettings) -> int:
    failed: list[ModelError] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: ModelError) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_error=on_load_error)
    server = uvicorn.Server(uvicorn.Config(served(app), **uvicorn_options(settings)))
    server.run()
    return EXIT_MODEL if failed else 0


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
