"""The Open Inference Protocol, REST (V2), as KServe, Triton and MLServer speak it, with
its binary tensor data extension (which `tritonclient.http` uses by default: a JSON
header of `Inference-Header-Content-Length` bytes, followed by the raw tensors).

Thin adapters over the data plane (model_api.dataplane), which decodes, checks against
the model's signature, batches, infers and encodes. Errors are {"error": "..."}: 400 for
a bad request, 404 for an unknown model or version, 503 before the model is loaded.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from model_api.batching import Arrays
from model_api.codec import BINARY
from model_api.errors import UnsupportedMediaError
from model_api.media import decoded, media_type
from model_api.middleware import Call, HotRoute, HotRoutes, Pending, Reply, via_router
from model_api.model import OnnxModel
from model_api.schemas import (
    ErrorResponse,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2ModelReady,
    V2ServerMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 503)
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": V2InferRequest.model_json_schema()}},
    }
}
# The media types the protocol's clients send: tritonclient sends none at all.
_MEDIA_TYPES = ("", "application/json", "application/octet-stream")


@router.get("", response_model=V2ServerMetadata)
async def server_metadata(request: Request) -> dict[str, Any]:
    return request.app.state.dataplane.server_metadata()  # type: ignore[no-any-return]


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=_ERRORS)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    plane = request.app.state.dataplane
    return plane.model_metadata(plane.named(name))  # type: ignore[no-any-return]


@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=_ERRORS)
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    plane = request.app.state.dataplane
    return plane.model_metadata(plane.named(name, version))  # type: ignore[no-any-return]


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=_ERRORS)
async def model_ready(request: Request, name: str) -> V2ModelReady:
    return V2ModelReady(name=request.app.state.dataplane.named(name).name, ready=True)


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses=_ERRORS
)
async def model_version_ready(request: Request, name: str, version: str) -> V2ModelReady:
    return V2ModelReady(name=request.app.state.dataplane.named(name, version).name, ready=True)


def infer_latest(call: Call) -> Pending:
    return _infer(call, call.state.dataplane.named(call.path_params["name"]))


def infer_version(call: Call) -> Pending:
    params = call.path_params
    return _infer(call, call.state.dataplane.named(params["name"], params["version"]))


def _infer(call: Call, model: OnnxModel) -> Pending:
    body = call.body
    if call.content_encoding != "identity":
        body = decoded(body, call.content_encoding, call.state.max_body_bytes)
    kind = media_type(call.content_type)
    if kind not in _MEDIA_TYPES and not kind.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json (or application/octet-stream with "
            f"Inference-Header-Content-Length), got {kind!r}"
        )
    inference = call.state.dataplane.infer_v2(
        model, body, call.inference_header_length, call.request_id
    )

    def reply(arrays: Arrays) -> Reply:
        body, header_length = inference.response(arrays)
        if header_length is None:
            return Reply(body, model.version)
        return Reply(
            body,
            model.version,
            content_type=BINARY,
            headers=((b"inference-header-content-length", header_length),),
        )

    return Pending(inference.outputs, reply)


_INFER = {"response_model": V2InferResponse, "responses": _ERRORS, "openapi_extra": _BODY}


# The same operations as FastAPI routes: for OpenAPI, and for paths that name another
# model or version (404) or arrive before the model is loaded (503).
@router.post("/models/{name}/infer", **_INFER)  # type: ignore[arg-type]
async def model_infer(request: Request, name: str) -> Response:
    return await via_router(request, infer_latest)


@router.post("/models/{name}/versions/{version}/infer", **_INFER)  # type: ignore[arg-type]
async def model_version_infer(request: Request, name: str, version: str) -> Response:
    return await via_router(request, infer_version)


def hot_routes(name: str, version: str) -> HotRoutes:
    """Exact paths of the served model's infer operations, for the front door."""
    return {
        ("POST", f"/v2/models/{name}/infer"): HotRoute(
            infer_latest, "/v2/models/{name}/infer", {"name": name}
        ),
        ("POST", f"/v2/models/{name}/versions/{version}/infer"): HotRoute(
            infer_version,
            "/v2/models/{name}/versions/{version}/infer",
            {"name": name, "version": version},
        ),
    }
