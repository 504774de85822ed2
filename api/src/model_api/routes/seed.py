"""The seed's HTTP contract: /predict, /predict/label, /label, /metadata, /predict/test.

An adapter over the data plane, for models of rows in, rows out (model_api.tabular):
the iris classifier answers exactly as the seed's did. Any other model gets 404 naming
the V2 route that serves it.

The prediction endpoints are hot: the front door (model_api.middleware) calls them with
a `Call` and sends their `Reply`; the FastAPI routes declared here describe them in
OpenAPI. They parse and check the body in one pydantic-core pass over the bytes, and
fall back to a slower pass only to explain a body that fails it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from model_api.batching import Arrays
from model_api.errors import InvalidInputError, NotFoundError
from model_api.media import decoded, json_body
from model_api.middleware import Call, HotRoute, HotRoutes, Pending, Reply, via_router
from model_api.model import OnnxModel
from model_api.parsing import parse_body
from model_api.schemas import (
    ErrorResponse,
    LabelResponse,
    MetadataResponse,
    PredictRequest,
    ProbabilitiesResponse,
)
from model_api.tabular import Tabular

router = APIRouter(tags=["predict"])

EXAMPLE = '{"data": [[5.1, 3.5, 1.4, 0.2]]}'
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 422, 503)
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
_POST = {"responses": _ERRORS, "openapi_extra": _BODY}


def _view(call: Call) -> tuple[OnnxModel, Tabular]:
    """The served model and its tabular view; 404 if the seed's contract does not fit."""
    plane = call.state.dataplane
    model = plane.loaded()
    view = plane.tabular
    if isinstance(view, str):
        raise NotFoundError(
            f"{model.name} {model.version} is not served on the seed's routes: {view}; "
            f"use POST /v2/models/{model.name}/infer"
        )
    return model, view


def _rows(call: Call, view: Tabular) -> np.ndarray:
    if call.content_type != "application/json":  # else nothing to check
        json_body(call.content_type)
    body = call.body
    if call.content_encoding != "identity":
        body = decoded(body, call.content_encoding, call.state.max_body_bytes)
    data = parse_body(PredictRequest, body, EXAMPLE, InvalidInputError).data
    limit = call.state.settings.max_batch_size
    if len(data) > limit:
        raise InvalidInputError(f"data: {len(data)} rows exceed MAX_BATCH_SIZE={limit}")
    dtype = view.input.datatype.dtype
    try:
        rows = np.array(data, dtype=dtype)
    except ValueError:  # rows of different lengths
        rows = np.empty((0, 0), dtype=dtype)
    if rows.ndim != 2 or rows.shape[1] != view.features:
        for i, row in enumerate(data):
            if len(row) != view.features:
                raise InvalidInputError(
                    f"data.{i}: has {len(row)} values; the model takes {view.features} per row"
                )
    fixed = view.input.shape[0]
    if fixed != -1 and len(data) != fixed:
        raise InvalidInputError(f"data: {len(data)} rows; the model takes exactly {fixed}")
    if dtype.itemsize < 4 and not np.isfinite(rows).all():
        raise InvalidInputError(f"data: a value is out of the range of {view.input.datatype.name}")
    return rows


def _submit(call: Call, model: OnnxModel, view: Tabular, rows: np.ndarray) -> Any:
    batch = len(rows) if model.batches else None
    return call.state.dataplane.infer({view.input.name: rows}, view.outputs, batch)


def _predictions(model: OnnxModel, view: Tabular) -> Callable[[Arrays], Reply]:
    def reply(outputs: Arrays) -> Reply:
        # Python floats (doubles) of the float32 values: the digits are those of the seed.
        rows = view.rows(outputs).tolist()
        body = orjson.dumps({"prediction": rows[0] if len(rows) == 1 else rows})
        return Reply(body, model.version)

    return reply


def _labels(model: OnnxModel, view: Tabular) -> Callable[[Arrays], Reply]:
    names = view.labels
    if names is None:
        raise NotFoundError(
            f"{model.name} {model.version} has no labels (model-config.json or label.json); "
            f"POST /predict answers its {', '.join(map(repr, view.outputs))} "
            f"output{'s' if len(view.outputs) > 1 else ''}"
        )

    def reply(outputs: Arrays) -> Reply:
        labels = [names[i] for i in view.rows(outputs).argmax(axis=1).tolist()]
        body = orjson.dumps({"prediction": labels[0] if len(labels) == 1 else labels})
        return Reply(body, model.version)

    return reply


def _sample(call: Call, model: OnnxModel, view: Tabular) -> np.ndarray:
    if model.sample is None:
        raise NotFoundError(f"model {model.name} {model.version} ships no sample.json")
    return np.asarray(model.sample, dtype=view.input.datatype.dtype)


def _body(call: Call, model: OnnxModel, view: Tabular) -> np.ndarray:
    return _rows(call, view)


Rows = Callable[[Call, OnnxModel, Tabular], np.ndarray]
Answer = Callable[[OnnxModel, Tabular], Callable[[Arrays], Reply]]


def _endpoint(rows: Rows, answer: Answer) -> Callable[[Call], Pending]:
    """A seed endpoint: its rows (the body's, or the sample) and how it answers."""

    def endpoint(call: Call) -> Pending:
        model, view = _view(call)
        reply = answer(model, view)  # first: a model without labels is refused at once
        return Pending(_submit(call, model, view, rows(call, model, view)), reply)

    return endpoint


predict = _endpoint(_body, _predictions)
predict_label = _endpoint(_body, _labels)
predict_test = _endpoint(_sample, _predictions)
predict_test_label = _endpoint(_sample, _labels)


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


@router.get("/label", responses=_ERRORS)
async def label(request: Request) -> dict[str, str]:
    model = request.app.state.dataplane.loaded()
    if model.labels is None:
        raise NotFoundError(f"{model.name} {model.version} has no labels")
    return {str(i): name for i, name in enumerate(model.labels)}


@router.get("/metadata", response_model=MetadataResponse, responses=_ERRORS)
async def metadata(request: Request) -> MetadataResponse:
    model: OnnxModel = request.app.state.dataplane.loaded()
    manifest = model.manifest
    return MetadataResponse(
        model_name=model.name,
        model_version=model.version,
        sha256=model.sha256,
        source_uri=manifest.get("source_uri"),
        loaded_at=manifest.get("loaded_at"),
        objects=manifest.get("objects", []),
        signature=model.verified_signature,
        inputs=[t.metadata() for t in model.signature.inputs],
        outputs=[t.metadata() for t in model.signature.outputs],
        labels=model.labels,
        sample_input=model.sample,
    )
