"""loadtest/response_checks.py: good answers pass, each kind of wrong answer fails."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import loadtest_module

checks = loadtest_module("response_checks")
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
