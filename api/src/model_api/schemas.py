"""Request and response bodies: the seed's contract and the Open Inference Protocol (V2)."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr

# The largest float32: beyond it a value would reach the model as infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)

# Strict: JSON numbers only. No booleans, no numeric strings, no NaN/Infinity (Python's
# json module accepts those literals), nothing float32 cannot hold. Checked in
# pydantic-core, not per value in Python; errors.describe_errors words the messages
# ("must be a finite number, got nan").
Feature = Annotated[float, Strict(), AllowInfNan(False), Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]


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
    signature: dict[str, Any] | None = Field(
        default=None, description="The signature the loader verified (signer, digest), if any."
    )
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    labels: list[str] | None
    sample_input: list[list[float]] | None


# -- Open Inference Protocol (V2) ---------------------------------------------------------
Parameters = dict[StrictStr, Any]


class V2RequestInput(BaseModel):
    name: StrictStr
    shape: list[Annotated[StrictInt, Field(ge=0)]]
    datatype: StrictStr
    parameters: Parameters | None = None
    # Row-major, flat or nested; absent when the tensor travels as binary data.
    data: list[Any] | None = None


class V2RequestOutput(BaseModel):
    name: StrictStr
    parameters: Parameters | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 4],
                            "datatype": "FP32",
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ],
                }
            ]
        }
    )

    id: StrictStr | None = None
    parameters: Parameters | None = None
    # Empty only for a model that takes no inputs: the signature says which are missing.
    inputs: list[V2RequestInput]
    outputs: list[V2RequestOutput] | None = None


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2ResponseOutput]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters | None = None


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class ErrorResponse(BaseModel):
    error: str
