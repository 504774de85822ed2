"""GET /metrics: Prometheus exposition, all workers aggregated."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from model_api.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
