"""The seed's HTTP contract: /predict, /predict/label, /label, /metadata, /predict/test."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request

from model_api.dependencies import json_body, loaded_model
from model_api.errors import InvalidInputError, NotFoundError
from model_api.model import OnnxModel
from model_api.schemas import (
    LabelResponse,
    MetadataResponse,
    PredictRequest,
    ProbabilitiesResponse,
    TensorMetadata,
)

router = APIRouter(tags=["predict"])

Model = Annotated[OnnxModel, Depends(loaded_model)]


def _rows(request: Request, model: OnnxModel, data: list[list[float]]) -> np.ndarray:
    limit = request.app.state.settings.max_batch_size
    if len(data) > limit:
        raise InvalidInputError(f"data: {len(data)} rows exceed MAX_BATCH_SIZE={limit}")
    for i, row in enumerate(data):
        if len(row) != model.n_features:
            raise InvalidInputError(
                f"data.{i}: has {len(row)} values; the model takes {model.n_features} per row"
            )
    return np.asarray(data, dtype=np.float32)


def _probabilities(probabilities: np.ndarray) -> ProbabilitiesResponse:
    values = probabilities.tolist()
    return ProbabilitiesResponse(prediction=values[0] if len(values) == 1 else values)


def _labels(labels: list[str]) -> LabelResponse:
    return LabelResponse(prediction=labels[0] if len(labels) == 1 else labels)


def _sample(model: OnnxModel) -> np.ndarray:
    if model.sample is None:
        raise NotFoundError(f"model {model.name} {model.version} ships no sample.json")
    return np.asarray(model.sample, dtype=np.float32)


@router.post("/predict", response_model=ProbabilitiesResponse, dependencies=[Depends(json_body)])
async def predict(body: PredictRequest, request: Request, model: Model) -> ProbabilitiesResponse:
    return _probabilities(model.predict_proba(_rows(request, model, body.data)))


@router.post("/predict/label", response_model=LabelResponse, dependencies=[Depends(json_body)])
async def predict_label(body: PredictRequest, request: Request, model: Model) -> LabelResponse:
    return _labels(model.predict_label(_rows(request, model, body.data)))


@router.get("/predict/test", response_model=ProbabilitiesResponse)
async def predict_test(model: Model) -> ProbabilitiesResponse:
    return _probabilities(model.predict_proba(_sample(model)))


@router.get("/predict/test/label", response_model=LabelResponse)
async def predict_test_label(model: Model) -> LabelResponse:
    return _labels(model.predict_label(_sample(model)))


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
