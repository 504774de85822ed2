"""The Model-Load flow with real processes: fake-gcs-server -> loader -> uvicorn API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from model_load_harness.fakegcs import FakeGcs
from model_load_harness.ports import free_port
from tests.conftest import SETOSA, VIRGINICA
from tests.integration.conftest import BUCKET, StartApi, run_api_to_exit, run_loader

V1_URI = f"gs://{BUCKET}/iris_svc/v1/"


def loader_env(
    fake_gcs: FakeGcs, model_dir: Path, uri: str = V1_URI, **extra: str
) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": fake_gcs.url,
        "MODEL_URI": uri,
        "MODEL_DIR": str(model_dir),
        "LOADER_WAIT_SECONDS": "5",
        **extra,
    }


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_loader_publishes_the_bucket_prefix_with_its_checksums(loaded_model_dir: Path) -> None:
    current = loaded_model_dir / "current"
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["source_uri"] == V1_URI
    by_name = {o["name"]: o for o in manifest["objects"]}
    assert set(by_name) == {"model.onnx", "label.json", "sample.json"}
    model = by_name["model.onnx"]
    assert model["uri"] == f"{V1_URI}model.onnx"
    assert model["crc32c"] and model["md5"] and model["generation"]


def test_seed_curl_examples(loaded_model_dir: Path, start_api: StartApi) -> None:
    api = start_api(loaded_model_dir)
    assert httpx.get(f"{api.url}/health").json() == {"health": "ok"}
    setosa = httpx.post(f"{api.url}/predict", json={"data": [SETOSA]}).json()["prediction"]
    virginica = httpx.post(f"{api.url}/predict", json={"data": [VIRGINICA]}).json()["prediction"]
    assert setosa[0] >= 0.9
    assert virginica[2] >= 0.9
    metadata = httpx.get(f"{api.url}/metadata").json()
    assert metadata["source_uri"] == V1_URI and metadata["model_version"] == "v1"


def test_all_150_iris_rows_agree_with_sklearn(
    loaded_model_dir: Path,
    start_api: StartApi,
    iris_rows: np.ndarray,
    sklearn_proba: np.ndarray,
) -> None:
    api = start_api(loaded_model_dir)
    response = httpx.post(f"{api.url}/predict", json={"data": iris_rows.tolist()})
    assert response.status_code == 200
    np.testing.assert_allclose(np.array(response.json()["prediction"]), sklearn_proba, atol=1e-5)


def test_bad_inputs_are_4xx(loaded_model_dir: Path, start_api: StartApi) -> None:
    api = start_api(loaded_model_dir)
    for body in ('{"data": [[1, 2, 3]]}', '{"data": [[NaN, 1, 2, 3]]}', '{"data": []}', "{oops"):
        response = httpx.post(
            f"{api.url}/predict", content=body, headers={"Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.json()["error"]


def test_second_run_is_up_to_date(fake_gcs: FakeGcs, loaded_model_dir: Path) -> None:
    before = (loaded_model_dir / "current").resolve()
    result = run_loader(loader_env(fake_gcs, loaded_model_dir))
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr
    assert (loaded_model_dir / "current").resolve() == before


def test_missing_prefix_exits_4_and_publishes_nothing(fake_gcs: FakeGcs, tmp_path: Path) -> None:
    result = run_loader(loader_env(fake_gcs, tmp_path, f"gs://{BUCKET}/iris_svc/v404/"))
    assert result.returncode == 4
    errors = error_lines(result.stderr)
    assert (
        len(errors) == 1
        and "not found: no objects under gs://ml-models/iris_svc/v404/" in errors[0]
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "current").exists()
    assert not list(tmp_path.glob(".staging-*"))


def test_missing_bucket_exits_4(fake_gcs: FakeGcs, tmp_path: Path) -> None:
    result = run_loader(loader_env(fake_gcs, tmp_path, "gs://no-such-bucket/iris_svc/v1/"))
    assert result.returncode == 4, result.stderr
    assert "404" in error_lines(result.stderr)[0]


def test_single_object_uri(fake_gcs: FakeGcs, tmp_path: Path) -> None:
    result = run_loader(
        loader_env(fake_gcs, tmp_path, f"{V1_URI}model.onnx", LOADER_REQUIRE_FILES="model.onnx")
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "current").iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]


def test_unreachable_storage_exits_3_within_the_wait(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_loader(
        {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}",
            "MODEL_URI": V1_URI,
            "MODEL_DIR": str(tmp_path),
            "LOADER_WAIT_SECONDS": "2",
        }
    )
    assert result.returncode == 3
    assert time.monotonic() - started < 15
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "not reachable within 2 s" in errors[0]
    assert "Connection refused" in errors[0]


def test_loader_waits_for_an_emulator_that_starts_late(gcs_data: Path, tmp_path: Path) -> None:
    late = FakeGcs(url=f"http://127.0.0.1:{free_port()}", data=gcs_data)
    # Start the emulator once the loader has found it missing (not after a fixed delay:
    # on a busy machine the loader's own start-up can take longer than that).
    process = subprocess.Popen(
        [sys.executable, "-m", "model_loader"],
        env={
            **os.environ,
            **loader_env(late, tmp_path / "m", LOADER_WAIT_SECONDS="30"),
            "LOADER_TERMINATION_LOG": str(tmp_path / "termination-log"),
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "not answering yet" in line:
                late.start()
                break
        lines.extend(process.stderr)
        assert process.wait(timeout=60) == 0, "".join(lines)
    finally:
        process.kill()
        late.stop()
    stderr = "".join(lines)
    assert "not answering yet" in stderr
    tmp_path = tmp_path / "m"
    assert (tmp_path / "current" / "model.onnx").is_file()


def test_api_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    result = run_api_to_exit({"MODEL_DIR": str(tmp_path)})
    assert result.returncode == 3
    assert "cannot serve the model: no model.onnx in" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_off_gcp_without_credentials_fails_in_seconds_with_the_hint(tmp_path: Path) -> None:
    # No emulator, no key file, no gcloud login (HOME is empty), no metadata server:
    # KServe-style loaders wait minutes here; this one must say what to do, quickly.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
    }
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "model_loader"],
        env={
            **env,
            "MODEL_URI": V1_URI,
            "MODEL_DIR": str(tmp_path / "m"),
            "LOADER_TERMINATION_LOG": str(tmp_path / "termination-log"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 5, result.stderr
    assert time.monotonic() - started < 30
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json" in errors[0]
