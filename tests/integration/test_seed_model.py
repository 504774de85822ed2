"""The seed's own model, stored the seed's way, through the real fake-gcs-server, loader
and API. The seed's iris_svc.onnx was a classifier exported with scikit-learn's defaults:
its probabilities are a ZipMap (per row, a map of class -> probability), which the
seed's code read as `list(session.run(None, feeds)[1][0].values())`; and the bucket held
that one file, `iris_svc.onnx`. MODEL_URI naming it publishes it as the version's
model.onnx (model iris_svc, version 1); the labels come from LABEL_FILEPATH, as the seed's
did; and the API serves it on the seed's routes with the seed's very numbers, and over
V2 as FP32 [rows, classes].
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from google.cloud import storage
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from model_load_harness.api import ApiServer, launch_api, stop_api
from model_load_harness.fakegcs import FakeGcs
from model_tools import publish, train
from tests.conftest import SETOSA, VIRGINICA
from tests.integration.conftest import BUCKET, run_loader

ROWS = np.array([SETOSA, VIRGINICA, [6.0, 2.9, 4.5, 1.5]], dtype=np.float32)


@pytest.fixture(scope="module")
def book_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris_svc as the seed made it: the default export (ZipMap on), and its label.json."""
    pipeline, _, labels = train.train()
    with train.svc_probability_deprecation_ignored():
        exported = convert_sklearn(
            pipeline,
            initial_types=[("input", FloatTensorType([None, 4]))],
            target_opset=train.TARGET_OPSET,
        )
    path = tmp_path_factory.mktemp("book") / "iris_svc" / "v1"
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(exported.SerializeToString())
    (path / "label.json").write_text(json.dumps(labels))
    return path


@pytest.fixture(scope="module")
def loaded(fake_gcs: FakeGcs, book_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MODEL_DIR after the loader ran on gs://ml-models/seed/iris_svc.onnx, the one file."""
    uri = f"gs://{BUCKET}/seed/iris_svc.onnx"
    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": fake_gcs.url}):
        storage.Client().bucket(BUCKET).blob("seed/iris_svc.onnx").upload_from_filename(
            str(book_model / "model.onnx")
        )
    model_dir = tmp_path_factory.mktemp("seed-volume")
    env = {"STORAGE_EMULATOR_HOST": fake_gcs.url, "MODEL_URI": uri, "MODEL_DIR": str(model_dir)}
    result = run_loader(env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((model_dir / "current" / "manifest.json").read_text())
    assert (manifest["model_name"], manifest["model_version"]) == ("iris_svc", "1")
    assert [(o["name"], o["uri"]) for o in manifest["objects"]] == [("model.onnx", uri)]
    again = run_loader(env)  # nothing changed in the bucket: nothing to do
    assert again.returncode == 0 and "up to date" in again.stderr
    return model_dir


@pytest.fixture(scope="module")
def api(loaded: Path, book_model: Path) -> Iterator[ApiServer]:
    """The seed kept label.json beside its app (/workdir/config/label.json, in the image),
    not in the bucket, and named it with LABEL_FILEPATH."""
    server = launch_api(
        loaded, API_ACCESS_LOG="false", LABEL_FILEPATH=str(book_model / "label.json")
    )
    yield server
    stop_api(server)


@pytest.fixture(scope="module")
def book_answers(book_model: Path) -> list[list[float]]:
    """What the seed's code computed for each row: the ZipMap's values, row by row."""
    session = ort.InferenceSession(str(book_model / "model.onnx"))
    assert "seq(map" in session.get_outputs()[1].type  # the export did zip its maps
    return [
        [float(v) for v in session.run(None, {"input": row[None]})[1][0].values()] for row in ROWS
    ]


def test_predict_answers_the_seeds_probabilities(
    api: ApiServer, book_answers: list[list[float]]
) -> None:
    for row, want in zip(ROWS.tolist(), book_answers, strict=True):
        got = httpx.post(f"{api.url}/predict", json={"data": [row]})
        assert got.status_code == 200, got.text
        np.testing.assert_allclose(got.json()["prediction"], want, rtol=1e-6, atol=1e-7)
    labels = [
        httpx.post(f"{api.url}/predict/label", json={"data": [r]}).json() for r in ROWS[:2].tolist()
    ]
    assert labels == [{"prediction": "setosa"}, {"prediction": "virginica"}]
    assert httpx.get(f"{api.url}/label").json() == {
        "0": "setosa",
        "1": "versicolor",
        "2": "virginica",
    }


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_serves_the_zipmap_as_rows_of_probabilities(
    api: ApiServer, book_answers: list[list[float]], binary: bool
) -> None:
    client = triton.InferenceServerClient(api.url.removeprefix("http://"))
    metadata = client.get_model_metadata("iris_svc")
    assert metadata["outputs"] == [
        {"name": "output_label", "datatype": "INT64", "shape": [-1]},
        {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3]},
    ]
    tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("output_label", "output_probability")
    ]
    result = client.infer("iris_svc", [tensor], outputs=outputs)
    probabilities = result.as_numpy("output_probability")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, book_answers, rtol=1e-5, atol=1e-6)
    assert result.as_numpy("output_label").tolist() == np.argmax(book_answers, axis=1).tolist()


def test_make_publish_takes_the_one_file_as_a_version(fake_gcs: FakeGcs, book_model: Path) -> None:
    """`make publish SRC=iris_svc.onnx`: a version holding it alone, as model.onnx."""
    lone = book_model.parent / "iris_svc.onnx"
    lone.write_bytes((book_model / "model.onnx").read_bytes())
    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": fake_gcs.url}):
        client = storage.Client()
        uri = f"gs://{BUCKET}/seed-published/v1/"
        assert publish.publish_path(lone, uri, client) == [f"{uri}model.onnx"]
        blob = client.bucket(BUCKET).blob("seed-published/v1/model.onnx")
        assert blob.download_as_bytes() == lone.read_bytes()
