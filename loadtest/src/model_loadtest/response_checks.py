"""Response checks for the load test: a wrong answer is a failure, not only a non-2xx.

Plain functions over already-decoded JSON bodies, so they are unit-tested without
locust or a server. Each raises `WrongAnswer` with a message naming what is wrong;
locust records that message as the request's failure.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any, Protocol

# Probabilities are float32 from ONNX Runtime: a row sums to 1 within this much.
SUM_TOLERANCE = 1e-3


class WrongAnswer(ValueError):
    """The API answered, but not with what the contract promises."""


class DeclaredTensor(Protocol):
    """An output as the model's V2 metadata declares it (v2_requests.TensorSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...  # -1: dynamic


# The range each V2 integer datatype holds; a value outside it was not produced by the model.
INT_RANGES = {
    f"{kind}{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if kind == "INT"
    else (0, 2**bits - 1)
    for kind in ("INT", "UINT")
    for bits in (8, 16, 32, 64)
}


def check_status(status: int, expected: int = 200) -> None:
    if status != expected:
        raise WrongAnswer(f"HTTP {status}, expected {expected}")


def _probability_row(row: Any, n_classes: int, where: str) -> None:
    if not isinstance(row, list) or len(row) != n_classes:
        raise WrongAnswer(f"{where}: expected {n_classes} probabilities, got {row!r}")
    for p in row:
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
            raise WrongAnswer(f"{where}: {p!r} is not a finite number")
        if not -SUM_TOLERANCE <= p <= 1 + SUM_TOLERANCE:
            raise WrongAnswer(f"{where}: probability {p} outside [0, 1]")
    total = math.fsum(row)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise WrongAnswer(f"{where}: probabilities sum to {total:.6f}, not 1")


def _field(body: Any, key: str) -> Any:
    if not isinstance(body, dict) or key not in body:
        raise WrongAnswer(f"no {key!r} in {str(body)[:200]}")
    return body[key]


def check_probabilities(body: Any, n_rows: int, n_classes: int) -> None:
    """POST /predict: one list for one row, a list per row for a batch."""
    prediction = _field(body, "prediction")
    if n_rows == 1:
        _probability_row(prediction, n_classes, "prediction")
        return
    if not isinstance(prediction, list) or len(prediction) != n_rows:
        got = len(prediction) if isinstance(prediction, list) else type(prediction).__name__
        raise WrongAnswer(f"prediction: expected {n_rows} rows, got {got}")
    for i, row in enumerate(prediction):
        _probability_row(row, n_classes, f"prediction[{i}]")


def check_labels(body: Any, n_rows: int, labels: Collection[str]) -> None:
    """POST /predict/label: a string for one row, a list of strings for a batch."""
    prediction = _field(body, "prediction")
    values = [prediction] if n_rows == 1 else prediction
    if not isinstance(values, list) or len(values) != n_rows:
        raise WrongAnswer(f"prediction: expected {n_rows} labels, got {prediction!r}")
    for value in values:
        if value not in labels:
            raise WrongAnswer(f"prediction: {value!r} is not one of {sorted(labels)}")


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise WrongAnswer(f"tensor data is {type(data).__name__}, not a list")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def check_v2_infer(body: Any, n_rows: int, n_classes: int, labels: Collection[str]) -> None:
    """POST /v2/models/{name}/infer (Open Inference Protocol).

    Every output is a well-formed tensor of `n_rows` rows; one FP32/FP64 output of
    shape [n_rows, n_classes] holds probabilities that sum to 1 per row; an INT64 output
    of shape [n_rows] holds class indices; BYTES outputs (label names) hold labels of the set.
    """
    outputs = _field(body, "outputs")
    if not isinstance(outputs, list) or not outputs:
        raise WrongAnswer("outputs: expected a non-empty list")
    probabilities_seen = False
    for output in outputs:
        name = _field(output, "name")
        shape = _field(output, "shape")
        datatype = _field(output, "datatype")
        data = _flatten(_field(output, "data"))
        if not isinstance(shape, list) or not shape or shape[0] != n_rows:
            raise WrongAnswer(f"output {name!r}: shape {shape!r}, expected {n_rows} rows")
        if len(data) != math.prod(shape):
            raise WrongAnswer(f"output {name!r}: {len(data)} values for shape {shape}")
        if datatype in ("FP32", "FP64") and shape == [n_rows, n_classes]:
            for i in range(n_rows):
                row = data[i * n_classes : (i + 1) * n_classes]
                _probability_row(row, n_classes, f"output {name!r} row {i}")
            probabilities_seen = True
        elif datatype == "INT64" and shape == [n_rows]:
            for value in data:
                if isinstance(value, bool) or value not in range(n_classes):
                    raise WrongAnswer(f"output {name!r}: class index {value!r} out of range")
        elif datatype == "BYTES":
            for value in data:
                if value not in labels:
                    raise WrongAnswer(f"output {name!r}: {value!r} is not one of {sorted(labels)}")
    if not probabilities_seen:
        raise WrongAnswer(f"no FP32 output of shape [{n_rows}, {n_classes}] (probabilities)")


def _value_of_type(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype == "BYTES":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        return isinstance(value, int) and low <= value <= high
    return isinstance(value, int | float)  # FP16/FP32/FP64


def check_v2_outputs(body: Any, declared: Sequence[DeclaredTensor], n_rows: int) -> None:
    """POST /v2/models/{name}/infer for any model: every declared output, once, with its
    declared datatype and rank; fixed dimensions as declared, a dynamic first dimension
    equal to the request's rows; as many values as the shape holds, each of the datatype."""
    outputs = _field(body, "outputs")
    if not isinstance(outputs, list):
        raise WrongAnswer("outputs: expected a list")
    expected = {spec.name: spec for spec in declared}
    seen: set[str] = set()
    for output in outputs:
        name = _field(output, "name")
        if name not in expected or name in seen:
            what = "twice" if name in seen else "not a declared output"
            raise WrongAnswer(f"output {name!r}: {what} (declared: {sorted(expected)})")
        seen.add(name)
        spec = expected[name]
        datatype = _field(output, "datatype")
        if datatype != spec.datatype:
            raise WrongAnswer(f"output {name!r}: datatype {datatype!r}, declared {spec.datatype}")
        shape = _field(output, "shape")
        wanted = [n_rows if i == 0 and d == -1 else d for i, d in enumerate(spec.shape)]
        if (
            not isinstance(shape, list)
            or len(shape) != len(wanted)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or any(w != -1 and d != w for d, w in zip(shape, wanted, strict=True))
        ):
            raise WrongAnswer(f"output {name!r}: shape {shape!r}, expected {wanted} (-1: any)")
        data = _flatten(_field(output, "data"))
        if len(data) != math.prod(shape):
            raise WrongAnswer(f"output {name!r}: {len(data)} values for shape {shape}")
        for value in data:
            if not _value_of_type(value, datatype):
                raise WrongAnswer(f"output {name!r}: {value!r} is not a {datatype} value")
    missing = sorted(set(expected) - seen)
    if missing:
        raise WrongAnswer(f"outputs {missing} missing")


def check_health(body: Any) -> None:
    if body != {"health": "ok"}:
        raise WrongAnswer(f"expected {{'health': 'ok'}}, got {str(body)[:200]}")


def check_metadata(body: Any, labels: Sequence[str] | None) -> None:
    """GET /metadata: names the model and, unless `labels` is None, the labels this test expects."""
    for key in ("model_name", "model_version", "sha256"):
        if not isinstance(_field(body, key), str) or not body[key]:
            raise WrongAnswer(f"metadata: {key} is empty")
    if labels is not None and list(_field(body, "labels")) != list(labels):
        raise WrongAnswer(f"metadata: labels {body['labels']!r}, expected {list(labels)!r}")
