"""model_api.tabular: which models the seed's /predict contract fits, and how."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from model_api.errors import ModelInvalidError
from model_api.model import OnnxModel
from model_api.tabular import Tabular, tabular
from tests.conftest import MODEL_V1

F = onnx.TensorProto.FLOAT


def load(
    tmp_path: Path, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
) -> OnnxModel:
    """A model passing its first input through to each output (Identity, or a Reshape
    for other ranks), enough for onnxruntime to report the signature."""
    nodes = []
    for out in outputs:
        nodes.append(oh.make_node("Identity", [inputs[0].name], [out.name]))
    graph = oh.make_graph(nodes, "g", inputs, outputs)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m" / "v1"
    path.mkdir(parents=True)
    onnx.save(model, path / "model.onnx")
    return OnnxModel.load(path)


def test_the_iris_classifier_answers_its_probabilities_with_labels() -> None:
    view = tabular(OnnxModel.load(MODEL_V1))
    assert isinstance(view, Tabular)
    assert (view.input.name, view.output.name, view.features) == ("input", "probabilities", 4)
    assert view.labels == ["setosa", "versicolor", "virginica"]


def test_a_regressor_answers_its_first_float_output(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        [oh.make_tensor_value_info("x", F, ["N", 8])],
        [oh.make_tensor_value_info("y", F, ["N", 8])],
    )
    view = tabular(model)
    assert isinstance(view, Tabular)
    assert (view.output.name, view.features, view.labels) == ("y", 8, None)


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (
            [
                oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 8]),
                oh.make_tensor_value_info("mask", onnx.TensorProto.INT64, ["N", 8]),
            ],
            "it takes 2 inputs",
        ),
        ([oh.make_tensor_value_info("img", F, ["N", 3, 4, 4])], "not rows of a fixed number"),
        ([oh.make_tensor_value_info("x", F, ["N", "F"])], "not rows of a fixed number"),
        (
            [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 8])],
            "not rows of a fixed number of floats",
        ),
    ],
)
def test_other_models_are_not_tabular_and_the_reason_says_why(
    tmp_path: Path, inputs: list[onnx.ValueInfoProto], reason: str
) -> None:
    outputs = [oh.make_tensor_value_info("out", inputs[0].type.tensor_type.elem_type, None)]
    view = tabular(load(tmp_path, inputs, outputs))
    assert isinstance(view, str) and reason in view


def test_labels_that_fit_no_output_are_a_broken_version(tmp_path: Path) -> None:
    model = load(
        tmp_path,
        [oh.make_tensor_value_info("x", F, ["N", 2])],
        [oh.make_tensor_value_info("prob", F, ["N", 2])],
    )
    model.labels = ["a", "b", "c"]
    with pytest.raises(ModelInvalidError, match=r"\[2\] classes but its labels are 3"):
        tabular(model)


def test_one_output_per_class_is_answered_as_rows_of_them(tmp_path: Path) -> None:
    """scikit-learn exported with zipmap="columns": the label, then one [N] output of
    probabilities per class. /predict answers them side by side, as the default export's
    [N, classes]; /predict/label names the largest with label.json's labels."""
    from fastapi.testclient import TestClient
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from model_api.config import ApiSettings
    from model_api.main import create_app
    from tests.unit.test_api_app import wait_ready

    x, y = load_iris(return_X_y=True)
    fitted = LogisticRegression(max_iter=500).fit(x, y)
    exported = to_onnx(
        fitted,
        x[:1].astype(np.float32),
        options={id(fitted): {"zipmap": "columns"}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    version = tmp_path / "columns" / "v1"
    version.mkdir(parents=True)
    onnx.save(exported, version / "model.onnx")
    model = OnnxModel.load(version)
    view = tabular(model)
    assert isinstance(view, Tabular) and len(view.columns) == 3 and view.labels is None
    rows = x[[0, 100, 60]].astype(np.float32)
    expected = np.stack(model.session.run(list(view.outputs), {"X": rows}), axis=1)

    names = ["setosa", "versicolor", "virginica"]
    (version / "label.json").write_text(json.dumps(dict(enumerate(names))))
    with TestClient(create_app(ApiSettings(MODEL_DIR=str(version)))) as client:  # type: ignore[call-arg]
        wait_ready(client)
        predicted = client.post("/predict", json={"data": rows.tolist()}).json()["prediction"]
        labelled = client.post("/predict/label", json={"data": rows.tolist()}).json()
    assert np.array(predicted, dtype=np.float32).tolist() == expected.tolist()
    assert labelled == {"prediction": [names[i] for i in expected.argmax(axis=1)]}
    assert labelled["prediction"] == ["setosa", "virginica", "versicolor"]

    (version / "label.json").write_text(json.dumps({"0": "a", "1": "b"}))
    with pytest.raises(ModelInvalidError, match=r"3 class outputs \(.*\) but its labels are 2"):
        tabular(OnnxModel.load(version))
