"""The seed's HTTP contract: /predict, /predict/label, /label, /metadata, /predict/test.

/predict and /predict/label read the body themselves (orjson, then one pydantic-core
validation) rather than through a FastAPI body parameter: the same checks and messages
at a fraction of the per-request cost, and a body limit FastAPI cannot turn into a 400.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from model_api.dependencies import (
    DirectRoute,
    float32_rows,
    infer,
    json_body,
    loaded_model,
    model_dependency,
    no_content_encoding,
    parse_json,
)
from model_api.errors import InvalidInputError, NotFoundError, describe_errors
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
# The prediction routes: endpoints called directly with the request (see DirectRoute).
direct = APIRouter(tags=["predict"], route_class=DirectRoute)

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


def json_response(content: Any, model: OnnxModel) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={"X-Model-Version": model.version},
    )


async def _rows(request: Request, model: OnnxModel) -> np.ndarray:
    json_body(request)
    no_content_encoding(request)
    payload = parse_json(await request.body(), EXAMPLE)
    try:
        data = PredictRequest.model_validate(payload).data
    except ValidationError as exc:
        raise InvalidInputError(describe_errors(exc.errors())) from None
    limit = request.app.state.settings.max_batch_size
    if len(data) > limit:
        raise InvalidInputError(f"data: {len(data)} rows exceed MAX_BATCH_SIZE={limit}")
    for i, row in enumerate(data):
        if len(row) != model.n_features:
            raise InvalidInputError(
                f"data.{i}: has {len(row)} values; the model takes {model.n_features} per row"
            )
    return float32_rows(data, "data")


def _probabilities(probabilities: np.ndarray, model: OnnxModel) -> Response:
    # float64 so the digits are those of the seed (Python's repr of each float32 value).
    values = probabilities.astype(np.float64)
    return json_response({"prediction": values[0] if len(values) == 1 else values}, model)


def _labels(probabilities: np.ndarray, model: OnnxModel) -> Response:
    labels = model.labels_of(probabilities)
    return json_response({"prediction": labels[0] if len(labels) == 1 else labels}, model)


def _sample(model: OnnxModel) -> np.ndarray:
    if model.sample is None:
        raise NotFoundError(f"model {model.name} {model.version} ships no sample.json")
    return np.asarray(model.sample, dtype=np.float32)


@direct.post("/predict", response_model=ProbabilitiesResponse, **_POST)  # type: ignore[arg-type]
async def predict(request: Request) -> Response:
    # Checks called directly, not as dependencies: FastAPI's dependency solving costs
    # more than the inference itself here.
    model = loaded_model(request)
    return _probabilities(await infer(request, model, await _rows(request, model)), model)


@direct.post("/predict/label", response_model=LabelResponse, **_POST)  # type: ignore[arg-type]
async def predict_label(request: Request) -> Response:
    model = loaded_model(request)
    return _labels(await infer(request, model, await _rows(request, model)), model)


@direct.get("/predict/test", response_model=ProbabilitiesResponse, responses=_ERRORS)
async def predict_test(request: Request) -> Response:
    model = loaded_model(request)
    return _probabilities(await infer(request, model, _sample(model)), model)


@direct.get("/predict/test/label", response_model=LabelResponse, responses=_ERRORS)
async def predict_test_label(request: Request) -> Response:
    model = loaded_model(request)
    return _labels(await infer(request, model, _sample(model)), model)


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
