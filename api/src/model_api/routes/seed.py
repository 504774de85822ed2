"""The seed's HTTP contract: /predict, /predict/label, /label, /metadata, /predict/test.

The prediction endpoints are hot: the front door (model_api.middleware) calls them with
a `Call` and sends their `Reply`; the FastAPI routes declared here describe them in
OpenAPI. They parse and check the body in one pydantic-core pass over the bytes, and
fall back to a slower pass only to explain a body that fails it.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from model_api.dependencies import (
    infer,
    json_body,
    loaded_model,
    model_dependency,
    no_content_encoding,
    parse_body,
)
from model_api.errors import InvalidInputError, NotFoundError
from model_api.middleware import Call, HotRoute, HotRoutes, Reply, via_router
from model_api.model import OnnxModel
from model_api.schemas import (
    ErrorResponse,
    LabelResponse,
    MetadataResponse,
    PredictRequest,
    ProbabilitiesResponse,
    TensorMetadata,
)

router = APIRouter(tags=["predict"])

Model = Annotated[OnnxModel, Depends(model_dependency)]
EXAMPLE = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
_POST = {"responses": _ERRORS, "openapi_extra": _BODY}


def json_reply(content: Any, model: OnnxModel) -> Reply:
    return Reply(orjson.dumps(content), model.version)


def _rows(call: Call, model: OnnxModel) -> np.ndarray:
    if call.content_type != "application/json":  # else nothing to check
        json_body(call.content_type)
    if call.content_encoding != "identity":
        no_content_encoding(call.content_encoding)
    data = parse_body(PredictRequest, call.body, EXAMPLE, InvalidInputError).data
    limit = call.state.settings.max_batch_size
    if len(data) > limit:
        raise InvalidInputError(f"data: {len(data)} rows exceed MAX_BATCH_SIZE={limit}")
    try:
        rows = np.array(data, dtype=np.float32)
    except ValueError:  # rows of different lengths
        rows = np.empty((0, 0), dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != model.n_features:
        for i, row in enumerate(data):
            if len(row) != model.n_features:
                raise InvalidInputError(
                    f"data.{i}: has {len(row)} values; the model takes {model.n_features} per row"
                )
    return rows


def _probabilities(probabilities: np.ndarray, model: OnnxModel) -> Reply:
    # Python floats (doubles) of the float32 values: the digits are those of the seed.
    values = probabilities.tolist()
    return json_reply({"prediction": values[0] if len(values) == 1 else values}, model)


def _labels(probabilities: np.ndarray, model: OnnxModel) -> Reply:
    labels = model.labels_of(probabilities)
    return json_reply({"prediction": labels[0] if len(labels) == 1 else labels}, model)


def _sample(model: OnnxModel) -> np.ndarray:
    if model.sample is None:
        raise NotFoundError(f"model {model.name} {model.version} ships no sample.json")
    return np.asarray(model.sample, dtype=np.float32)


async def predict(call: Call) -> Reply:
    model = loaded_model(call.state)
    return _probabilities(await infer(call.state, model, _rows(call, model)), model)


async def predict_label(call: Call) -> Reply:
    model = loaded_model(call.state)
    return _labels(await infer(call.state, model, _rows(call, model)), model)


async def predict_test(call: Call) -> Reply:
    model = loaded_model(call.state)
    return _probabilities(await infer(call.state, model, _sample(model)), model)


async def predict_test_label(call: Call) -> Reply:
    model = loaded_model(call.state)
    return _labels(await infer(call.state, model, _sample(model)), model)


HOT_ROUTES: HotRoutes = {
    ("POST", "/predict"): HotRoute(predict, "/predict"),
    ("POST", "/predict/label"): HotRoute(predict_label, "/predict/label"),
    ("GET", "/predict/test"): HotRoute(predict_test, "/predict/test"),
    ("GET", "/predict/test/label"): HotRoute(predict_test_label, "/predict/test/label"),
}


# The same operations as FastAPI routes: for OpenAPI (the front door answers first).
@router.post("/predict", response_model=ProbabilitiesResponse, **_POST)  # type: ignore[arg-type]
async def predict_route(request: Request) -> Response:
    return await via_router(request, predict)


@router.post("/predict/label", response_model=LabelResponse, **_POST)  # type: ignore[arg-type]
async def predict_label_route(request: Request) -> Response:
    return await via_router(request, predict_label)


@router.get("/predict/test", response_model=ProbabilitiesResponse, responses=_ERRORS)
async def predict_test_route(request: Request) -> Response:
    return await via_router(request, predict_test)


@router.get("/predict/test/label", response_model=LabelResponse, responses=_ERRORS)
async def predict_test_label_route(request: Request) -> Response:
    return await via_router(request, predict_test_label)


@router.get("/label")
async def label(model: Model) -> dict[str, str]:
    return {str(i): name for i, name in enumerate(model.labels)}


@router.get("/metadata", response_model=MetadataResponse)
async def metadata(model: Model) -> MetadataResponse:
    manifest = model.manifest
    return MetadataResponse(
        model_name=model.name,
        model_version=model.version,
        sha256=model.sha256,
        source_uri=manifest.get("source_uri"),
        loaded_at=manifest.get("loaded_at"),
        objects=manifest.get("objects", []),
        inputs=[TensorMetadata(**vars(t)) for t in model.inputs],
        outputs=[TensorMetadata(**vars(t)) for t in model.outputs],
        labels=model.labels,
        sample_input=model.sample,
    )
