"""The application factory. Nothing is loaded at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from model_api import __version__
from model_api.config import ApiSettings
from model_api.errors import install_error_handlers
from model_api.logging import configure_logging
from model_api.model import OnnxModel
from model_api.routes import health, seed

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings, model: OnnxModel | None = None) -> FastAPI:
    """Build the app. `model` may be loaded already (single-worker start, tests);
    otherwise the lifespan loads it from `settings.model_dir`. Either way the app
    reports ready only after a warm-up inference succeeded."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = model or await asyncio.to_thread(
            OnnxModel.load, settings.model_dir, settings.ort_threads
        )
        loaded.warmup()
        app.state.model = loaded
        log.info("ready: serving %s %s", loaded.name, loaded.version)
        yield
        app.state.model = None

    app = FastAPI(
        title="Model-Load API",
        version=__version__,
        description="Serves the model the loader published: the seed's contract.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.model = None
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(seed.router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for API_WORKERS > 1: each worker process builds its own app."""
    settings = ApiSettings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
