"""Valid Open Inference Protocol (V2) requests for any model, from its metadata alone.

The load test reads `GET /v2/models/{name}` once (inputs and outputs: name, datatype,
shape, -1 for a dynamic dimension) and builds request bodies from it:

- shape: a dynamic first dimension (the batch) becomes `rows` (1 by default); any other
  dynamic dimension becomes `dim` (8), the same for every input, so inputs that share a
  dimension (token ids and their attention mask) agree; fixed dimensions stay.
- values by datatype: floats in [0, 1); integers in [0, 100), valid as embedding ids or
  indices of any small table; UINT8 0-255 (pixels); booleans; short ASCII words for BYTES.

Pure Python (no numpy), so the locust image needs nothing but locust; unit-tested in
tests/unit/test_loadtest_v2_requests.py, which runs the bodies through onnxruntime.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64"})
UINT_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64"})
# Every datatype the protocol defines except BF16, which JSON clients cannot produce exactly.
DATATYPES = FLOAT_TYPES | INT_TYPES | UINT_TYPES | {"BOOL", "BYTES"}
NUMERIC_TYPES = FLOAT_TYPES | INT_TYPES | UINT_TYPES

INT_HIGH = 100  # integers are drawn from [0, INT_HIGH)
UINT8_HIGH = 256
WORD_LENGTH = (3, 8)
FLOAT_DIGITS = 4  # floats are rounded: shorter bodies, same validity


class BadMetadata(ValueError):
    """The model metadata is not something a V2 request can be built from."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: dynamic


@dataclass(frozen=True)
class Signature:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _tensor_spec(item: Any, where: str) -> TensorSpec:
    if not isinstance(item, dict):
        raise BadMetadata(f"{where}: expected an object, got {item!r}")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise BadMetadata(f"{where}: no name")
    if datatype not in DATATYPES:
        raise BadMetadata(
            f"{where} {name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
    ):
        raise BadMetadata(f"{where} {name!r}: shape {shape!r} is not a list of sizes (-1: dynamic)")
    return TensorSpec(name, datatype, tuple(shape))


def parse_metadata(body: Any) -> Signature:
    """The signature from a `GET /v2/models/{name}` body; BadMetadata when unusable."""
    if not isinstance(body, dict):
        raise BadMetadata(f"model metadata is not an object: {str(body)[:200]}")
    inputs, outputs = body.get("inputs"), body.get("outputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadMetadata("model metadata lists no inputs")
    if not isinstance(outputs, list):
        raise BadMetadata("model metadata lists no outputs")
    return Signature(
        name=str(body.get("name", "")),
        inputs=tuple(_tensor_spec(t, "input") for t in inputs),
        outputs=tuple(_tensor_spec(t, "output") for t in outputs),
    )


def concrete_shape(spec: TensorSpec, rows: int, dim: int) -> list[int]:
    """The shape to send: dynamic batch (first) dimension -> rows, other dynamic ones -> dim."""
    return [(rows if i == 0 else dim) if size == -1 else size for i, size in enumerate(spec.shape)]


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=rng.randint(*WORD_LENGTH)))


def tensor_data(datatype: str, count: int, rng: random.Random) -> list[Any]:
    """`count` valid values of a V2 datatype, as JSON-ready Python values."""
    if datatype in FLOAT_TYPES:
        return [round(rng.random(), FLOAT_DIGITS) for _ in range(count)]
    if datatype == "UINT8":
        return [rng.randrange(UINT8_HIGH) for _ in range(count)]
    if datatype in INT_TYPES or datatype in UINT_TYPES:
        return [rng.randrange(INT_HIGH) for _ in range(count)]
    if datatype == "BOOL":
        return [rng.random() < 0.5 for _ in range(count)]
    if datatype == "BYTES":
        return [_word(rng) for _ in range(count)]
    raise BadMetadata(f"datatype {datatype!r} is not one of {sorted(DATATYPES)}")


def infer_request(
    inputs: Sequence[TensorSpec], rows: int, dim: int, rng: random.Random
) -> dict[str, Any]:
    """One V2 inference request body with every input (flat `data`, row-major)."""
    tensors = []
    for spec in inputs:
        shape = concrete_shape(spec, rows, dim)
        data = tensor_data(spec.datatype, math.prod(shape), rng)
        tensors.append({"name": spec.name, "shape": shape, "datatype": spec.datatype, "data": data})
    return {"inputs": tensors}


def seed_features(signature: Signature, n_labels: int) -> int | None:
    """The feature count when the seed's routes (/predict, /predict/label) apply to the model:
    classifier-shaped, i.e. one numeric input [N, features] (dynamic batch, fixed features),
    an FP32/FP64 output [N, classes] and as many labels as classes. Else None."""
    if len(signature.inputs) != 1 or n_labels < 1:
        return None
    (spec,) = signature.inputs
    if spec.datatype not in NUMERIC_TYPES or len(spec.shape) != 2:
        return None
    batch, features = spec.shape
    probabilities = any(
        o.datatype in ("FP32", "FP64") and o.shape == (-1, n_labels) for o in signature.outputs
    )
    return features if batch == -1 and features > 0 and probabilities else None
