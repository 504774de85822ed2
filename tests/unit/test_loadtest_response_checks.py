"""model_loadtest.response_checks: good answers pass, each kind of wrong answer fails."""

from __future__ import annotations

from typing import Any

import pytest

from model_loadtest import response_checks as checks
from model_loadtest import v2_requests

WrongAnswer = checks.WrongAnswer
LABELS = ["setosa", "versicolor", "virginica"]

# What the API answers for the seed's rows (rounded; sums stay within tolerance).
SETOSA_P = [0.9707, 0.0164, 0.0129]
VIRGINICA_P = [0.0093, 0.0216, 0.9691]


def v2_body(n: int, **changes: Any) -> dict[str, Any]:
    body = {
        "model_name": "iris_svc",
        "outputs": [
            {"name": "label", "shape": [n], "datatype": "INT64", "data": [0] * n},
            {"name": "probabilities", "shape": [n, 3], "datatype": "FP32", "data": SETOSA_P * n},
        ],
    }
    body["outputs"][1].update(changes)
    return body


def test_status_other_than_200_is_wrong() -> None:
    checks.check_status(200)
    with pytest.raises(WrongAnswer, match="HTTP 422"):
        checks.check_status(422)


@pytest.mark.parametrize(
    ("body", "rows"),
    [
        ({"prediction": SETOSA_P}, 1),
        ({"prediction": [SETOSA_P, VIRGINICA_P]}, 2),
        ({"prediction": [[1, 0, 0]] * 32}, 32),
    ],
)
def test_good_probabilities_pass(body: Any, rows: int) -> None:
    checks.check_probabilities(body, rows, 3)


@pytest.mark.parametrize(
    ("body", "rows", "message"),
    [
        ({"prediction": [0.5, 0.6, 0.1]}, 1, "sum to 1.200000"),
        ({"prediction": [0.5, 0.5]}, 1, "expected 3 probabilities"),
        ({"prediction": [1.5, -0.5, 0.0]}, 1, "outside"),
        ({"prediction": [None, 0.5, 0.5]}, 1, "not a finite number"),
        ({"prediction": [True, 0, 0]}, 1, "not a finite number"),
        ({"prediction": [SETOSA_P]}, 2, "expected 2 rows, got 1"),
        ({"prediction": SETOSA_P}, 2, "expected 2 rows, got 3"),
        ({"prediction": [SETOSA_P, [0.2, 0.2, 0.2]]}, 2, r"prediction\[1\]"),
        ({"detail": "model not loaded"}, 1, "no 'prediction'"),
        ([SETOSA_P], 1, "no 'prediction'"),
    ],
)
def test_wrong_probabilities_fail(body: Any, rows: int, message: str) -> None:
    with pytest.raises(WrongAnswer, match=message):
        checks.check_probabilities(body, rows, 3)


def test_good_labels_pass() -> None:
    checks.check_labels({"prediction": "setosa"}, 1, LABELS)
    checks.check_labels({"prediction": ["setosa", "virginica"]}, 2, LABELS)


@pytest.mark.parametrize(
    ("body", "rows", "message"),
    [
        ({"prediction": "daisy"}, 1, "'daisy' is not one of"),
        ({"prediction": ["setosa"]}, 1, "is not one of"),
        ({"prediction": ["setosa"]}, 2, "expected 2 labels"),
        ({"prediction": "setosa"}, 2, "expected 2 labels"),
        ({"prediction": ["setosa", 0]}, 2, "0 is not one of"),
    ],
)
def test_wrong_labels_fail(body: Any, rows: int, message: str) -> None:
    with pytest.raises(WrongAnswer, match=message):
        checks.check_labels(body, rows, LABELS)


def test_good_v2_answers_pass() -> None:
    checks.check_v2_infer(v2_body(1), 1, 3, LABELS)
    checks.check_v2_infer(v2_body(4), 4, 3, LABELS)
    nested = v2_body(2, data=[SETOSA_P, VIRGINICA_P])
    checks.check_v2_infer(nested, 2, 3, LABELS)
    names = {
        "outputs": [
            *v2_body(2)["outputs"],
            {"name": "name", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]},
        ]
    }
    checks.check_v2_infer(names, 2, 3, LABELS)


@pytest.mark.parametrize(
    ("body", "rows", "message"),
    [
        (v2_body(2), 3, "expected 3 rows"),
        (v2_body(2, data=SETOSA_P), 2, "3 values for shape"),
        (v2_body(1, data=[0.5, 0.6, 0.1]), 1, "sum to"),
        (v2_body(1, shape=[1, 2], data=[0.5, 0.5]), 1, r"no FP32 output of shape \[1, 3\]"),
        (v2_body(1, datatype="INT64"), 1, "no FP32 output"),
        ({"outputs": []}, 1, "non-empty list"),
        ({"error": "unknown model"}, 1, "no 'outputs'"),
        ({"outputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32"}]}, 1, "no 'data'"),
    ],
)
def test_wrong_v2_answers_fail(body: Any, rows: int, message: str) -> None:
    with pytest.raises(WrongAnswer, match=message):
        checks.check_v2_infer(body, rows, 3, LABELS)


def test_v2_label_outputs_are_checked() -> None:
    body = v2_body(2)
    body["outputs"][0]["data"] = [0, 7]
    with pytest.raises(WrongAnswer, match="class index 7"):
        checks.check_v2_infer(body, 2, 3, LABELS)
    body["outputs"][0] = {
        "name": "name",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["setosa", "daisy"],
    }
    with pytest.raises(WrongAnswer, match="'daisy'"):
        checks.check_v2_infer(body, 2, 3, LABELS)


def test_health_and_metadata() -> None:
    checks.check_health({"health": "ok"})
    with pytest.raises(WrongAnswer):
        checks.check_health({"health": "degraded"})
    good = {"model_name": "iris_svc", "model_version": "v1", "sha256": "ab", "labels": LABELS}
    checks.check_metadata(good, LABELS)
    with pytest.raises(WrongAnswer, match="labels"):
        checks.check_metadata({**good, "labels": ["a", "b", "c"]}, LABELS)
    with pytest.raises(WrongAnswer, match="sha256 is empty"):
        checks.check_metadata({**good, "sha256": ""}, LABELS)
    with pytest.raises(WrongAnswer, match="no 'model_version'"):
        checks.check_metadata({"model_name": "iris_svc"}, LABELS)
    checks.check_metadata({**good, "labels": None}, None)  # labels unknown: not checked


# --- any model: outputs checked against the declared signature ---------------------------


Spec = v2_requests.TensorSpec
DECLARED = [
    Spec("logits", "FP32", (-1, 4)),
    Spec("id", "INT8", (-1,)),
    Spec("flag", "BOOL", (-1, 2)),
    Spec("label", "BYTES", (-1,)),
    Spec("fixed", "UINT16", (1, 3)),
]


def outputs(rows: int, **changes: dict[str, Any] | None) -> dict[str, Any]:
    """A good answer for DECLARED, with some outputs changed (None: left out)."""
    tensors: dict[str, dict[str, Any] | None] = {
        "logits": {"shape": [rows, 4], "datatype": "FP32", "data": [0.5, -1, 2e9, 3.25] * rows},
        "id": {"shape": [rows], "datatype": "INT8", "data": [-128] * rows},
        "flag": {"shape": [rows, 2], "datatype": "BOOL", "data": [[True, False]] * rows},
        "label": {"shape": [rows], "datatype": "BYTES", "data": ["red"] * rows},
        "fixed": {"shape": [1, 3], "datatype": "UINT16", "data": [0, 1, 65535]},
    }
    for name, change in changes.items():
        tensors[name] = None if change is None else {**tensors[name], **change}
    return {"outputs": [{"name": name, **t} for name, t in tensors.items() if t is not None]}


@pytest.mark.parametrize("rows", [1, 3])
def test_outputs_as_declared_pass(rows: int) -> None:
    checks.check_v2_outputs(outputs(rows), DECLARED, rows)
    body = outputs(rows)
    body["outputs"].reverse()  # any order
    checks.check_v2_outputs(body, DECLARED, rows)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (outputs(2, logits={"datatype": "FP64"}), "'logits': datatype 'FP64', declared FP32"),
        (outputs(2, logits={"shape": [3, 4]}), r"shape \[3, 4\], expected \[2, 4\]"),
        (outputs(2, logits={"shape": [2, 4, 1]}), "shape"),
        (outputs(2, logits={"shape": [2, 5]}), "shape"),
        (outputs(2, fixed={"shape": [2, 3]}), r"expected \[1, 3\]"),
        (outputs(2, logits={"data": [0.5] * 7}), "7 values for shape"),
        (outputs(2, logits={"data": [0.5, "x"] * 4}), "'x' is not a FP32 value"),
        (outputs(2, logits={"data": [True] * 8}), "True is not a FP32 value"),
        (outputs(2, id={"data": [-129, 0]}), "-129 is not a INT8 value"),
        (outputs(2, id={"data": [1.0, 0]}), "1.0 is not a INT8 value"),
        (outputs(2, fixed={"data": [0, 1, 65536]}), "65536 is not a UINT16 value"),
        (outputs(2, flag={"data": [1, 0, 1, 0]}), "1 is not a BOOL value"),
        (outputs(2, label={"data": ["red", 3]}), "3 is not a BYTES value"),
        (outputs(2, label=None), r"outputs \['label'\] missing"),
        ({"outputs": [*outputs(2)["outputs"], {"name": "x"}]}, "'x': not a declared output"),
        ({"outputs": [*outputs(2)["outputs"], outputs(2)["outputs"][0]]}, "'logits': twice"),
        ({"outputs": {}}, "expected a list"),
        ({"error": "boom"}, "no 'outputs'"),
    ],
)
def test_outputs_not_as_declared_fail(body: Any, message: str) -> None:
    with pytest.raises(WrongAnswer, match=message):
        checks.check_v2_outputs(body, DECLARED, 2)
