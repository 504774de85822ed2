"""Liveness and readiness. Live while the process runs; ready once the model is warm (in
every worker: model_api.workers), and no longer once SIGTERM started the drain
(model_api.drain)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from model_api.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    return HealthResponse()


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def ready(request: Request) -> JSONResponse:
    model = request.app.state.dataplane.model
    if model is None or not request.app.state.ready():
        return JSONResponse(ReadyResponse(ready=False).model_dump(), status_code=503)
    body = ReadyResponse(ready=True, model_name=model.name, model_version=model.version)
    return JSONResponse(body.model_dump())


# The Open Inference Protocol's health endpoints: same answers, its paths and bodies.
@router.get("/v2/health/live")
async def v2_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready")
async def v2_ready(request: Request) -> JSONResponse:
    is_ready = request.app.state.ready()
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)
