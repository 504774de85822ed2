"""A model saved with external data (its weights in another file than model.onnx), from
the real fake-gcs-server through the real loader to the real API; and a version that
lacks that file, refused by the loader before anything is published."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.cloud import storage
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from model_load_harness.api import launch_api, stop_api
from model_load_harness.fakegcs import FakeGcs
from tests.integration.conftest import BUCKET, run_loader


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FP32 [N, 64] -> [N, 64] through a 64x64 matrix kept in weights.bin."""
    path = tmp_path_factory.mktemp("external")
    weights = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [nh.from_array(weights, "w")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path / "model.onnx", save_as_external_data=True, location="weights.bin",
              size_threshold=0)  # fmt: skip
    return path


Upload = Callable[[Path, list[str]], str]


@pytest.fixture
def upload(fake_gcs: FakeGcs) -> Iterator[Upload]:
    def put(src: Path, names: list[str]) -> str:
        prefix = f"external/{uuid.uuid4().hex[:8]}/"
        bucket = storage.Client().bucket(BUCKET)
        for name in names:
            bucket.blob(prefix + name).upload_from_filename(str(src / name))
        return f"gs://{BUCKET}/{prefix}"

    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": fake_gcs.url}):
        yield put


def load(fake_gcs: FakeGcs, model_dir: Path, uri: str) -> tuple[int, list[str]]:
    result = run_loader(
        {"STORAGE_EMULATOR_HOST": fake_gcs.url, "MODEL_URI": uri, "MODEL_DIR": str(model_dir),
         "LOADER_WAIT_SECONDS": "5", "MODEL_NAME": "external", "MODEL_VERSION": "1"}
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    return result.returncode, [line for line in result.stderr.splitlines() if " ERROR " in line]


def test_a_model_with_external_data_is_loaded_whole_and_served(
    fake_gcs: FakeGcs, upload: Upload, external_model: Path, tmp_path: Path
) -> None:
    uri = upload(external_model, ["model.onnx", "weights.bin"])
    code, errors = load(fake_gcs, tmp_path, uri)
    assert code == 0 and errors == []
    assert {p.name for p in (tmp_path / "current").iterdir()} >= {"model.onnx", "weights.bin"}
    x = np.random.default_rng(1).random((2, 64), dtype=np.float32)
    alone = ort.InferenceSession(str(external_model / "model.onnx")).run(None, {"x": x})[0]
    server = launch_api(tmp_path, API_ACCESS_LOG="false")
    try:
        body = {"inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        answer = httpx.post(f"{server.url}/v2/models/external/infer", json=body, timeout=30)
    finally:
        stop_api(server)
    assert answer.status_code == 200, answer.text
    got = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 64)
    np.testing.assert_allclose(got, alone, rtol=1e-6)


def test_a_version_without_its_weights_file_is_not_published(
    fake_gcs: FakeGcs, upload: Upload, external_model: Path, tmp_path: Path
) -> None:
    """Published, it would have failed in the API (ONNX Runtime's 'External data path
    does not exist'), each replica restarting; refused, the previous version stays."""
    uri = upload(external_model, ["model.onnx"])
    code, errors = load(fake_gcs, tmp_path, uri)
    assert code == 4 and len(errors) == 1
    assert "model.onnx keeps tensors in weights.bin, which the version does not hold" in errors[0]
    assert not (tmp_path / "current").exists() and not list(tmp_path.glob(".staging-*"))

    code, errors = load(fake_gcs, tmp_path, f"{uri}model.onnx")  # the object, not its prefix
    assert code == 4 and "MODEL_URI names one object: name its prefix" in errors[0]
