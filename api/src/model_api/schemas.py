"""Request and response bodies of the seed's contract (POST /predict and friends)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema


def _feature(value: Any) -> float:
    # Strict: JSON numbers only. No booleans, no numeric strings, no NaN/Infinity
    # (Python's json module accepts the literals NaN and Infinity).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return float(value)


Feature = Annotated[float, PlainValidator(_feature), WithJsonSchema({"type": "number"})]


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"data": [[5.1, 3.5, 1.4, 0.2]]}]},
    )

    data: list[list[Feature]] = Field(
        min_length=1, description="Rows of features, one row per prediction."
    )


class ProbabilitiesResponse(BaseModel):
    prediction: list[float] | list[list[float]] = Field(
        description="Class probabilities: one list for a single row, a list per row for a batch."
    )


class LabelResponse(BaseModel):
    prediction: str | list[str] = Field(
        description="The most probable label: a string for one row, a list for a batch."
    )


class HealthResponse(BaseModel):
    health: str = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    model_name: str | None = None
    model_version: str | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class MetadataResponse(BaseModel):
    model_name: str
    model_version: str
    sha256: str
    source_uri: str | None
    loaded_at: str | None
    objects: list[dict[str, Any]]
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    labels: list[str]
    sample_input: list[list[float]] | None
