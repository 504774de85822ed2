"""model_loader.onnx_refs: the files a model.onnx keeps its tensors in, read without an
ONNX library, checked against models the onnx package saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from model_loader.onnx_refs import NotOnnx, external_files
from tests.conftest import ROOT


def matmul(name: str = "w") -> onnx.GraphProto:
    weights = nh.from_array(np.ones((64, 64), dtype=np.float32), name)
    return oh.make_graph(
        [oh.make_node("MatMul", ["x", name], ["y"])],
        "matmul",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [weights],
    )


def save(model: onnx.ModelProto, path: Path, location: str | None, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if location is None:
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, location=location,
                  size_threshold=0, **options)  # fmt: skip
    return path


def test_models_with_their_weights_inside_name_no_file(tmp_path: Path) -> None:
    assert external_files(save(oh.make_model(matmul()), tmp_path / "m.onnx", None)) == set()
    for model in sorted((ROOT / "models").glob("*/v1/model.onnx")):
        assert external_files(model) == set(), model


def test_initializers_constants_and_subgraphs_name_their_files(tmp_path: Path) -> None:
    assert external_files(save(oh.make_model(matmul()), tmp_path / "a.onnx", "weights.bin")) == {
        "weights.bin"
    }
    # A Constant's value (an attribute), and an initializer inside an If's branch.
    value = nh.from_array(np.ones((64, 64), dtype=np.float32), "constant_value")
    constant = oh.make_node("Constant", [], ["c"], value=value)
    branch = oh.make_graph(
        [oh.make_node("MatMul", ["x", "branch_weights"], ["y"])], "then", [],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [nh.from_array(np.ones((64, 64), dtype=np.float32), "branch_weights")],
    )  # fmt: skip
    graph = oh.make_graph(
        [constant, oh.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)],
        "nested",
        [oh.make_tensor_value_info("flag", TensorProto.BOOL, []),
         oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
    )  # fmt: skip
    (tmp_path / "b" / "data").mkdir(parents=True)
    path = save(oh.make_model(graph), tmp_path / "b" / "model.onnx", "data/tensors.bin",
                convert_attribute=True)  # fmt: skip
    assert external_files(path) == {"data/tensors.bin"}
    # A file per tensor, named after it: each place is found.
    path = save(oh.make_model(graph), tmp_path / "c" / "model.onnx", "unused",
                convert_attribute=True, all_tensors_to_one_file=False)  # fmt: skip
    assert external_files(path) == {"constant_value", "branch_weights"}


def test_bytes_that_are_no_protobuf_are_said_so(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    for data in (b"\x08\x07garbage\xff\xff", b"\x3a\xff\xff\x01abc", b"\x80"):
        path.write_bytes(data)
        with pytest.raises(NotOnnx):
            external_files(path)
    path.write_bytes(b"")
    assert external_files(path) == set()
