"""model_api.model: loading a model directory, or refusing it with a reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_api.errors import ModelInvalidError, ModelMissingError
from model_api.model import OnnxModel, resolve_model_dir
from tests.conftest import MODEL_V1, SETOSA


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    target = tmp_path / "v1"
    shutil.copytree(MODEL_V1, target)
    return target


def test_loads_the_committed_model() -> None:
    model = OnnxModel.load(MODEL_V1)
    assert (model.name, model.version) == ("iris_svc", "v1")
    assert model.labels == ["setosa", "versicolor", "virginica"]
    assert model.n_features == 4
    assert model.sample == [SETOSA]
    proba = model.predict_proba(np.array([SETOSA], dtype=np.float32))
    assert proba.shape == (1, 3) and proba[0].argmax() == 0
    model.warmup()


def test_prefers_the_loaders_current_link(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    shutil.copytree(MODEL_V1, tmp_path / "versions" / "abc")
    (tmp_path / "current").symlink_to(Path("versions") / "abc")
    assert resolve_model_dir(tmp_path) == (tmp_path / "versions" / "abc").resolve()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match=r"no model\.onnx"):
        OnnxModel.load(tmp_path)


def test_missing_labels(model_dir: Path) -> None:
    (model_dir / "label.json").unlink()
    with pytest.raises(ModelMissingError, match=r"no label\.json"):
        OnnxModel.load(model_dir)


def test_corrupt_onnx(model_dir: Path) -> None:
    (model_dir / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelInvalidError, match="ONNX Runtime cannot load it"):
        OnnxModel.load(model_dir)


def test_labels_that_do_not_fit_the_model(model_dir: Path) -> None:
    (model_dir / "label.json").write_text(json.dumps({"0": "a", "1": "b"}))
    with pytest.raises(ModelInvalidError, match=r"3 classes but label\.json has 2 labels"):
        OnnxModel.load(model_dir)


def test_bytes_that_differ_from_the_manifest(model_dir: Path) -> None:
    manifest = {"objects": [{"name": "model.onnx", "sha256": "0" * 64}]}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelInvalidError, match="differs from the loader's manifest"):
        OnnxModel.load(model_dir)


def test_malformed_label_json(model_dir: Path) -> None:
    (model_dir / "label.json").write_text("{oops")
    with pytest.raises(ModelInvalidError, match="not readable JSON"):
        OnnxModel.load(model_dir)


def test_one_row_through_bound_buffers_equals_session_run() -> None:
    model = OnnxModel.load(MODEL_V1)
    model.warmup()
    rows = np.array([[5.9, 3.0, 5.1, 1.8], [5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    for row in rows:
        one = row.reshape(1, -1)
        (expected,) = model.session.run([model.probabilities_name], {model.input_name: one})
        got = model.predict_proba(one)
        assert np.array_equal(got, expected)
    first = model.predict_proba(rows[:1])
    model.predict_proba(rows[1:])
    assert np.array_equal(first, model.predict_proba(rows[:1]))  # answers are copies


def test_a_concurrent_one_row_call_falls_back_to_session_run() -> None:
    model = OnnxModel.load(MODEL_V1)
    bound = model._one_row
    assert bound is not None
    row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    with bound._busy:  # another thread is inside the bound run
        assert bound.run(row) is None
        assert model.predict_proba(row).shape == (1, 3)


def test_bound_buffers_that_disagree_are_dropped_at_warmup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = OnnxModel.load(MODEL_V1)
    assert model._one_row is not None
    monkeypatch.setattr(model._one_row, "run", lambda row: np.zeros((1, 3), dtype=np.float32))
    model.warmup()
    assert model._one_row is None
    row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
    assert model.predict_proba(row)[0][0] > 0.9
