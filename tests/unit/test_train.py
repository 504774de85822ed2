"""models/: the committed v1 is what model_tools.train produces, bit for bit in behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from model_tools import zoo
from tests.conftest import MODEL_V1, ROOT


def _onnx_proba(path: Path, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (proba,) = session.run(["probabilities"], {"input": rows})
    return proba


def test_committed_v1_matches_sklearn_on_all_150_rows(
    iris_rows: np.ndarray, sklearn_proba: np.ndarray
) -> None:
    proba = _onnx_proba(MODEL_V1 / "model.onnx", iris_rows)
    assert proba.shape == (150, 3)
    np.testing.assert_allclose(proba, sklearn_proba, atol=1e-5)


def test_reexport_reproduces_the_committed_artifact(
    tmp_path: Path, train_module: ModuleType, iris_rows: np.ndarray
) -> None:
    train_module.export(tmp_path)
    np.testing.assert_allclose(
        _onnx_proba(tmp_path / "model.onnx", iris_rows),
        _onnx_proba(MODEL_V1 / "model.onnx", iris_rows),
        atol=1e-6,
    )
    for name in ("label.json", "sample.json"):
        assert (tmp_path / name).read_text() == (MODEL_V1 / name).read_text()


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_reexport_in_a_fresh_process_is_byte_identical(tmp_path: Path, hash_seed: str) -> None:
    """`make models` leaves the committed model untouched, whatever the hash seed."""
    subprocess.run(
        [sys.executable, "-m", "model_tools.train", "--out", str(tmp_path)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        check=True,
        timeout=300,
    )
    assert (tmp_path / "model.onnx").read_bytes() == (MODEL_V1 / "model.onnx").read_bytes()


def test_graph_has_plain_tensor_outputs_no_zipmap() -> None:
    graph = onnx.load(str(MODEL_V1 / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["label", "probabilities"]
    assert "ZipMap" not in {node.op_type for node in graph.node}
    probabilities = graph.output[1].type.tensor_type
    assert probabilities.elem_type == onnx.TensorProto.FLOAT
    assert probabilities.shape.dim[1].dim_value == 3


def test_labels_and_the_seeds_examples() -> None:
    assert json.loads((MODEL_V1 / "label.json").read_text()) == {
        "0": "setosa",
        "1": "versicolor",
        "2": "virginica",
    }
    proba = _onnx_proba(
        MODEL_V1 / "model.onnx", np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], np.float32)
    )
    assert proba[0].argmax() == 0 and proba[0, 0] > 0.95
    assert proba[1].argmax() == 2 and proba[1, 2] > 0.95


def test_the_repository_commits_one_copy_of_the_model() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.onnx"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    committed = {f"models/{name}/v1/model.onnx" for name in zoo.COMMITTED}
    assert [f for f in tracked if f not in committed] == ["models/iris_svc/v1/model.onnx"]
