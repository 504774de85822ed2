"""The application factory. Nothing is loaded at import time.

Start-up order: the socket listens at once (live: /health answers), the model loads and
warms up in a thread (/ready answers 503 meanwhile), then the app is ready. A model that
cannot be served calls `on_load_error`: the entry point stops the server and exits 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from model_api import __version__
from model_api.capacity import BODY_BYTES, body_limit
from model_api.config import ApiSettings
from model_api.dataplane import DataPlane, load_model, prepare
from model_api.drain import Drain
from model_api.errors import ModelError, install_error_handlers
from model_api.guard import FAST_STATE, LIMITS_STATE, FastRoutes, Limits
from model_api.logging import AccessLog, configure_logging
from model_api.metrics import Metrics
from model_api.middleware import HotRoutes, RequestMiddleware
from model_api.model import OnnxModel
from model_api.routes import health, metrics, seed, v2
from model_api.workers import Peers

log = logging.getLogger(__name__)

LoadErrorHandler = Callable[[ModelError], None]
EXIT_MODEL = 3


@dataclass(eq=False)
class AppState:
    """`app.state`: what the routes share. Plain attributes: Starlette's State looks each
    one up through `__getattr__`, a cost the hot path pays several times per request."""

    settings: ApiSettings
    metrics: Metrics
    drain: Drain
    dataplane: DataPlane
    peers: Peers
    # The limit on request bodies (MAX_BODY_BYTES): the front door's, before a body is
    # read, and a compressed body's once decompressed.
    max_body_bytes: int = BODY_BYTES
    load_error: ModelError | None = None

    def ready(self) -> bool:
        """Serving: the model is warm, no drain has begun, and (with several workers)
        every worker of this container is warm too (model_api.workers)."""
        return (
            self.dataplane.model is not None
            and not self.drain.draining
            and (self.peers.all_ready())
        )


class ModelApp(FastAPI):
    """FastAPI with the front door (middleware.RequestMiddleware) before its whole stack:
    the hot operations never enter FastAPI, everything else goes through it as usual."""

    state: AppState  # type: ignore[assignment]
    front: RequestMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def guard_limits(settings: ApiSettings) -> Limits:
    return Limits(
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
    )


def create_app(
    settings: ApiSettings,
    model: OnnxModel | None = None,
    on_load_error: LoadErrorHandler | None = None,
) -> ModelApp:
    """Build the app. `model` may be loaded already (tests); otherwise the lifespan loads
    it from `settings.model_dir` in the background. Either way the app reports ready only
    after a warm-up inference succeeded."""
    app_metrics = Metrics()
    drain = Drain(settings.drain_seconds)
    dataplane = DataPlane(settings, app_metrics)
    hot_routes: HotRoutes = dict(seed.HOT_ROUTES)
    access_log = AccessLog.enabled(settings.log_format, settings.access_log)
    threads = settings.ort_threads or 1
    peers = Peers.from_env(settings.workers or 1)

    def serve(loaded: OnnxModel) -> None:
        if settings.max_body_bytes is None:
            app.state.max_body_bytes = body_limit(loaded.signature)
            if app.state.max_body_bytes > BODY_BYTES:
                log.info(
                    "request bodies up to %d bytes: one row of the model's inputs in JSON "
                    "(MAX_BODY_BYTES=auto)",
                    app.state.max_body_bytes,
                )
        dataplane.serve(loaded)
        hot_routes.update(v2.hot_routes(loaded.name, loaded.version))
        app_metrics.model_info.labels(
            loaded.name, loaded.version, loaded.sha256, loaded.signer or ""
        ).set(1)
        app_metrics.load_seconds.set(loaded.load_seconds)
        peers.mark_ready()
        log.info("ready: serving %s %s", loaded.name, loaded.version)

    async def load_in_background(app: ModelApp) -> None:
        try:
            loaded = await asyncio.to_thread(load_model, settings, threads)
        except ModelError as exc:
            app.state.load_error = exc
            log.error("cannot serve the model: %s", exc)
            (on_load_error or _exit_process)(exc)
            return
        serve(loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        assert isinstance(app, ModelApp)
        task = None
        undo_drain = drain.chain_sigterm(asyncio.get_running_loop())
        if model is not None:
            prepare(model)
            serve(model)
        else:
            task = asyncio.create_task(load_in_background(app))
        # Lifespan state: uvicorn hands it to each connection's protocol (model_api.guard).
        state: dict[str, Any] = {LIMITS_STATE: guard_limits(settings)}
        if settings.fast_path and app.front is not None:
            state[FAST_STATE] = FastRoutes(hot_routes, app.front)
        yield state
        app_metrics.flush()
        if access_log is not None:
            access_log.flush()
        undo_drain()
        peers.unmark()
        dataplane.close()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = ModelApp(
        title="Model-Load API",
        version=__version__,
        description=(
            "Serves the model the loader published over the Open Inference Protocol (V2), "
            "and the seed's /predict contract for models of rows in, rows out."
        ),
        lifespan=lifespan,
    )
    app.state = AppState(
        settings=settings,
        metrics=app_metrics,
        drain=drain,
        dataplane=dataplane,
        peers=peers,
        max_body_bytes=settings.max_body_bytes or BODY_BYTES,
    )
    install_error_handlers(app)
    app.front = RequestMiddleware(
        app.behind_front,
        state=app.state,
        metrics=app_metrics,
        hot_routes=hot_routes,
        access_log=access_log,
    )
    app.include_router(health.router)
    app.include_router(seed.router)
    app.include_router(v2.router)
    app.include_router(metrics.router)
    return app


def _exit_process(exc: ModelError) -> None:
    """Default for worker processes (API_WORKERS > 1): nothing to serve, so leave."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(EXIT_MODEL)


def served(app: ModelApp) -> ASGIApp:
    """What uvicorn calls: the app's front door itself, one call fewer per request than
    the app (whose `__call__` hands every request to it)."""
    return app.front or app


def app_from_env() -> ASGIApp:
    """uvicorn factory for API_WORKERS > 1: each worker process builds its own app (the
    entry point resolved API_WORKERS and ORT_INTRA_OP_THREADS into the environment)."""
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format)
    return served(create_app(settings))
