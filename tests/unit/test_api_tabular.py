"""model_api.tabular: which models the seed's /predict contract fits, and how."""

from __future__ import annotations

from pathlib import Path

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
