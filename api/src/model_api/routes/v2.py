"""The Open Inference Protocol, REST (V2), as KServe, Triton and MLServer speak it.

Over the same OnnxModel as the seed's routes. Also the protocol's binary tensor data
extension, which `tritonclient.http` uses by default: a JSON header of
`Inference-Header-Content-Length` bytes, followed by the raw tensors.
Errors are {"error": "..."}: 400 for a bad request, 404 for an unknown model or version.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from model_api import __version__
from model_api.dependencies import (
    infer,
    loaded_model,
    media_type,
    no_content_encoding,
    parse_body,
)
from model_api.errors import (
    BadRequestError,
    NotFoundError,
    UnsupportedMediaError,
    describe_errors,
)
from model_api.middleware import Call, HotRoute, HotRoutes, Reply, via_router
from model_api.model import OnnxModel
from model_api.schemas import (
    ErrorResponse,
    Feature,
    TensorMetadata,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2ModelReady,
    V2RequestInput,
    V2ServerMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2"])

SERVER_NAME = "model-load-api"
PROBABILITIES = "probabilities"
LABEL = "label"
HEADER_LENGTH = "inference-header-content-length"
_FLAT = TypeAdapter(list[Feature])
_NESTED = TypeAdapter(list[list[Feature]])
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
V2_EXAMPLE = '{"inputs": [{"name": ..., "shape": ..., ...}]}'


def served_model(state: Any, name: str) -> OnnxModel:
    """The model, if the path names it."""
    model = loaded_model(state)
    if name != model.name:
        raise NotFoundError(f"model {name!r} not found; this server serves {model.name!r}")
    return model


def served_version(state: Any, name: str, version: str) -> OnnxModel:
    """The model, if the path names it and its version."""
    model = served_model(state, name)
    if version != model.version:
        raise NotFoundError(
            f"model {model.name!r} has no version {version!r}; it serves {model.version!r}"
        )
    return model


def _outputs(model: OnnxModel) -> list[TensorMetadata]:
    return [
        TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, len(model.labels)]),
        TensorMetadata(name=LABEL, datatype="BYTES", shape=[-1]),
    ]


@router.get("", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(
        name=SERVER_NAME, version=__version__, extensions=["binary_tensor_data"]
    )


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=_ERRORS)
async def model_metadata(request: Request, name: str) -> V2ModelMetadata:
    return _metadata(served_model(request.app.state, name))


@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=_ERRORS)
async def model_version_metadata(request: Request, name: str, version: str) -> V2ModelMetadata:
    return _metadata(served_version(request.app.state, name, version))


def _metadata(model: OnnxModel) -> V2ModelMetadata:
    return V2ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform="onnxruntime_onnx",
        inputs=[
            TensorMetadata(name=model.input_name, datatype="FP32", shape=[-1, model.n_features])
        ],
        outputs=_outputs(model),
    )


@router.get("/models/{name}/ready", response_model=V2ModelReady, responses=_ERRORS)
async def model_ready(request: Request, name: str) -> V2ModelReady:
    return V2ModelReady(name=served_model(request.app.state, name).name, ready=True)


@router.get(
    "/models/{name}/versions/{version}/ready", response_model=V2ModelReady, responses=_ERRORS
)
async def model_version_ready(request: Request, name: str, version: str) -> V2ModelReady:
    return V2ModelReady(name=served_version(request.app.state, name, version).name, ready=True)


_INFER = {"response_model": V2InferResponse, "responses": _ERRORS, "openapi_extra": _BODY}


async def infer_latest(call: Call) -> Reply:
    return await _infer(call, served_model(call.state, call.path_params["name"]))


async def infer_version(call: Call) -> Reply:
    params = call.path_params
    return await _infer(call, served_version(call.state, params["name"], params["version"]))


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


async def _infer(call: Call, model: OnnxModel) -> Reply:
    if call.content_encoding != "identity":
        no_content_encoding(call.content_encoding)
    kind = media_type(call.content_type)
    if kind not in _MEDIA_TYPES and not kind.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json (or application/octet-stream with "
            f"Inference-Header-Content-Length), got {kind!r}"
        )
    header, binary = _split(call.body, call.inference_header_length)
    req = parse_body(V2InferRequest, header, V2_EXAMPLE, BadRequestError)

    rows = _input_rows(req, binary, model, call.state.settings.max_batch_size)
    wanted = _wanted_outputs(req)
    probabilities = await infer(call.state, model, rows)

    outputs: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for name, as_binary in wanted:
        if name == PROBABILITIES:
            shape = list(probabilities.shape)
            tensor: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": shape}
            raw = np.ascontiguousarray(probabilities, dtype="<f4")
            if as_binary:
                buffers.append(raw.tobytes())
            else:
                tensor["data"] = raw.reshape(-1).tolist()
        else:
            labels = model.labels_of(probabilities)
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(labels)]}
            if as_binary:
                buffers.append(_bytes_tensor(labels))
            else:
                tensor["data"] = labels
        if as_binary:
            tensor["parameters"] = {"binary_data_size": len(buffers[-1])}
        outputs.append(tensor)

    content = {
        "model_name": model.name,
        "model_version": model.version,
        "id": req.id if req.id is not None else call.request_id,
        "outputs": outputs,
    }
    head = orjson.dumps(content)
    if not buffers:
        return Reply(head, model.version)
    return Reply(
        b"".join([head, *buffers]),
        model.version,
        content_type=b"application/octet-stream",
        headers=((b"inference-header-content-length", b"%d" % len(head)),),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise BadRequestError(
            f"Inference-Header-Content-Length {header_length!r} must be an integer "
            f"between 0 and the body's {len(body)} bytes"
        )
    return body[:n], body[n:]


def _input_rows(req: V2InferRequest, binary: bytes, model: OnnxModel, limit: int) -> np.ndarray:
    if len(req.inputs) != 1:
        raise BadRequestError(
            f"inputs: expected 1 tensor ({model.input_name!r}), got {len(req.inputs)}"
        )
    tensor = req.inputs[0]
    where = f"inputs.0 ({tensor.name!r})"
    if tensor.name != model.input_name:
        raise BadRequestError(
            f"inputs.0.name: unknown input {tensor.name!r}; the model takes {model.input_name!r}"
        )
    if tensor.datatype != "FP32":
        raise BadRequestError(f"{where}.datatype: must be FP32, got {tensor.datatype!r}")
    shape = tensor.shape
    if len(shape) != 2 or shape[1] != model.n_features or shape[0] < 1:
        raise BadRequestError(
            f"{where}.shape: must be [N, {model.n_features}] with N >= 1, got {shape}"
        )
    if shape[0] > limit:
        raise BadRequestError(f"{where}.shape: {shape[0]} rows exceed MAX_BATCH_SIZE={limit}")
    count = shape[0] * shape[1]
    values = (
        _binary_values(tensor, binary, where)
        if tensor.data is None
        else _json_values(tensor, where)
    )
    if values.size != count:
        raise BadRequestError(f"{where}.data: {values.size} values do not fill shape {shape}")
    return values.reshape(shape[0], shape[1])


def _json_values(tensor: V2RequestInput, where: str) -> np.ndarray:
    data = tensor.data or []
    adapter = _NESTED if data and isinstance(data[0], list) else _FLAT
    try:
        values = adapter.validate_python(data)
    except ValidationError as exc:
        raise BadRequestError(f"{where}.data: {describe_errors(exc.errors())}") from None
    if adapter is _NESTED and len({len(row) for row in values}) > 1:
        raise BadRequestError(f"{where}.data: rows of different lengths")
    return np.array(values, dtype=np.float32).reshape(-1)


def _binary_values(tensor: V2RequestInput, binary: bytes, where: str) -> np.ndarray:
    size = (tensor.parameters or {}).get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int):
        raise BadRequestError(f"{where}: needs data, or parameters.binary_data_size")
    if size != len(binary) or size % 4:
        raise BadRequestError(
            f"{where}.parameters.binary_data_size: {size} does not match the "
            f"{len(binary)} bytes after the JSON header (FP32: 4 bytes per value)"
        )
    values = np.frombuffer(binary, dtype="<f4")
    if not np.isfinite(values).all():  # (JSON values are checked by the schema)
        raise BadRequestError(f"{where}: binary data holds NaN or infinite values")
    return values


def _wanted_outputs(req: V2InferRequest) -> list[tuple[str, bool]]:
    """(output name, as binary) in the order asked; both outputs when none are named."""
    default_binary = (req.parameters or {}).get("binary_data_output") is True
    if not req.outputs:
        return [(PROBABILITIES, default_binary), (LABEL, default_binary)]
    wanted = []
    for i, out in enumerate(req.outputs):
        if out.name not in (PROBABILITIES, LABEL):
            raise BadRequestError(
                f"outputs.{i}.name: unknown output {out.name!r}; "
                f"the model has {PROBABILITIES!r} and {LABEL!r}"
            )
        as_binary = (out.parameters or {}).get("binary_data", default_binary) is True
        wanted.append((out.name, as_binary))
    return wanted


def _bytes_tensor(labels: list[str]) -> bytes:
    """BYTES elements in the binary extension: each a 4-byte little-endian length + bytes."""
    parts = []
    for label in labels:
        encoded = label.encode()
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)
