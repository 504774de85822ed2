"""The API as a real uvicorn process: V2 through tritonclient, metrics, request ids,
readiness, the body limit, and exit codes for a model that cannot be served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from model_api.deferred import FLUSH_SECONDS
from model_load_harness.api import ApiServer, launch_api, stop_api
from model_load_harness.ports import free_port
from model_load_harness.waiting import wait_http
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA
from tests.integration.conftest import StartApi, run_api_to_exit, run_loader


@pytest.fixture(scope="module")
def api(loaded_model_dir: Path) -> Iterator[ApiServer]:
    server = launch_api(loaded_model_dir, MAX_BODY_BYTES="65536", MAX_BATCH_SIZE="200")
    yield server
    stop_api(server)


@pytest.fixture
def client(api: ApiServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(api.url.removeprefix("http://"))
    yield c
    c.close()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- Open Inference Protocol (V2) with the official client ------------------------------
def test_v2_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "model-load-api"
    assert client.is_model_ready("iris_svc") and client.is_model_ready("iris_svc", "v1")
    metadata = client.get_model_metadata("iris_svc", "v1")
    assert metadata["versions"] == ["v1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_all_150_rows_equals_sklearn(
    client: triton.InferenceServerClient,
    iris_rows: np.ndarray,
    sklearn_proba: np.ndarray,
    binary: bool,
) -> None:
    rows = iris_rows[:150]
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = client.infer(
        "iris_svc", [tensor], model_version="v1", outputs=outputs, request_id="r-7"
    )
    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["model_version"] == "v1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), sklearn_proba, atol=1e-4)
    assert result.as_numpy("label").tolist() == sklearn_proba.argmax(1).tolist()


def test_v2_classification_gives_the_top_classes_with_their_labels(
    client: triton.InferenceServerClient,
) -> None:
    """Triton's classification extension: the labels travel with the model."""
    tensor = triton.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array([SETOSA, VIRGINICA], dtype=np.float32))
    wanted = [triton.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer("iris_svc", [tensor], outputs=wanted)
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2)
    first = [x.decode().split(":") for x in top[:, 0]]
    assert [(index, label) for _, index, label in first] == [("0", "setosa"), ("2", "virginica")]
    assert float(first[0][0]) > 0.9


def test_v2_infer_with_the_clients_defaults(client: triton.InferenceServerClient) -> None:
    """No outputs named: the client asks for every output in binary."""
    tensor = triton.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array([SETOSA, VIRGINICA], dtype=np.float32))
    result = client.infer("iris_svc", [tensor])
    assert result.as_numpy("probabilities").shape == (2, 3)
    assert result.as_numpy("label").tolist() == [0, 2]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_v2_infer_with_a_compressed_request(
    client: triton.InferenceServerClient, algorithm: str
) -> None:
    """tritonclient's request_compression_algorithm: the binary body, compressed whole."""
    tensor = triton.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.array([SETOSA, VIRGINICA], dtype=np.float32))
    plain = client.infer("iris_svc", [tensor]).as_numpy("probabilities")
    result = client.infer("iris_svc", [tensor], request_compression_algorithm=algorithm)
    assert result.as_numpy("label").tolist() == [0, 2]
    assert np.array_equal(result.as_numpy("probabilities"), plain)


def test_v2_output_selection_and_plain_json(api: ApiServer) -> None:
    body = {
        "id": "abc",
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [SETOSA]}],
        "outputs": [{"name": "label"}],
    }
    response = httpx.post(f"{api.url}/v2/models/iris_svc/infer", json=body)
    assert response.status_code == 200 and response.headers["x-model-version"] == "v1"
    assert response.json() == {
        "model_name": "iris_svc",
        "model_version": "v1",
        "id": "abc",
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}],
    }


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/resnet/infer", 404),
        ("/v2/models/iris_svc/versions/v9/infer", 404),
        ("/v2/models/iris_svc/versions/v1/infer", 200),
    ],
)
def test_v2_unknown_model_or_version_is_404(api: ApiServer, path: str, status: int) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
    response = httpx.post(f"{api.url}{path}", json=body)
    assert response.status_code == status
    if status == 404:
        assert "not found" in response.json()["error"] or "no version" in response.json()["error"]


def test_v2_errors_reach_the_client(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"the model takes \[-1, 4\]") as err:
        client.infer("iris_svc", [tensor])
    assert err.value.status() == "400"
    with pytest.raises(InferenceServerException, match="not found") as err:
        client.get_model_metadata("other")
    assert err.value.status() == "404"


# -- observability ------------------------------------------------------------------------
def test_metrics_count_the_traffic(api: ApiServer) -> None:
    key = ("http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    before = samples(api.url).get(key, 0.0)
    for _ in range(7):
        httpx.post(f"{api.url}/predict", json={"data": [SETOSA, VIRGINICA]})
    httpx.post(f"{api.url}/predict", json={"data": []})
    after = samples(api.url)
    assert after[key] - before == 7
    assert after[(key[0], (("method", "POST"), ("route", "/predict"), ("status", "422")))] >= 1
    info = [k for k in after if k[0] == "model_info"]
    assert len(info) == 1 and dict(info[0][1])["version"] == "v1"
    assert len(dict(info[0][1])["sha256"]) == 64
    assert after[("model_load_seconds", ())] > 0
    assert after[("model_inference_seconds_count", ())] >= 7
    # 7 requests of 2 rows and 1 refused: at least 14 rows in at most 7 calls.
    assert after[("model_call_rows_sum", ())] >= 14
    # Unknown paths share one label: a scan cannot blow up the series count.
    httpx.get(f"{api.url}/no/such/{time.time()}")
    assert any(
        dict(k[1]).get("route") == "<unmatched>"
        for k in samples(api.url)
        if k[0].startswith("http_")
    )


def test_request_id_and_model_version_headers(api: ApiServer) -> None:
    given = httpx.post(
        f"{api.url}/predict", json={"data": [SETOSA]}, headers={"X-Request-ID": "trace-42"}
    )
    assert given.headers["x-request-id"] == "trace-42"
    assert given.headers["x-model-version"] == "v1"
    generated = httpx.get(f"{api.url}/predict/test/label")
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.headers["x-model-version"] == "v1"


def test_json_access_log_carries_the_request_id(start_api: StartApi) -> None:
    server = start_api(MODEL_V1, LOG_FORMAT="json")
    httpx.post(f"{server.url}/predict", json={"data": [SETOSA]}, headers={"X-Request-ID": "r-99"})
    lines = [json.loads(line) for line in stop_api(server).splitlines() if line.startswith("{")]
    access = [x for x in lines if x["name"] == "model_api.access" and x["request_id"] == "r-99"]
    assert len(access) == 1
    assert access[0]["path"] == "/predict" and access[0]["status"] == 200
    assert {"time", "severity", "message", "duration_ms"} <= set(access[0])


def test_metrics_add_up_across_workers(loaded_model_dir: Path, start_api: StartApi) -> None:
    server = start_api(loaded_model_dir, API_WORKERS="2")
    # A new connection each time: the kernel spreads them over the workers. /ready (which
    # start_api waited for) says 200 only once both workers are warm (model_api.workers),
    # however long a busy machine makes the second one take: none answers 503.
    statuses: Counter[int] = Counter(
        httpx.post(f"{server.url}/predict", json={"data": [SETOSA]}).status_code for _ in range(20)
    )
    assert statuses == {200: 20}, statuses

    def key(status: int) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = (("method", "POST"), ("route", "/predict"), ("status", str(status)))
        return ("http_requests_total", labels)

    def counted() -> dict[int, float]:
        metrics = samples(server.url)
        return {status: metrics.get(key(status), 0.0) for status in statuses}

    # Any worker may answer the scrape; each reads every worker's files, which a worker
    # brings up to date within FLUSH_SECONDS of a request (the answering one at once),
    # given its event loop gets the CPU: waited for, generously.
    deadline = time.monotonic() + 30
    while counted() != statuses and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS / 2)
    for _ in range(3):
        assert counted() == statuses
    assert sum(1 for k in samples(server.url) if k[0] == "model_info") == 1


# -- readiness and start-up failures -------------------------------------------------------
def test_ready_goes_503_to_200_when_the_model_arrives(fake_gcs_url: str, tmp_path: Path) -> None:
    server = launch_api(tmp_path, wait_path="/health", MODEL_WAIT_SECONDS="60")
    try:
        assert httpx.get(f"{server.url}/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert httpx.post(f"{server.url}/predict", json={"data": [SETOSA]}).status_code == 503
        result = run_loader(
            {
                "STORAGE_EMULATOR_HOST": fake_gcs_url,
                "MODEL_URI": "gs://ml-models/iris_svc/v1/",
                "MODEL_DIR": str(tmp_path),
                "LOADER_WAIT_SECONDS": "5",
            }
        )
        assert result.returncode == 0, result.stderr
        wait_http(f"{server.url}/ready", timeout=30, process=server.process)
        assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    finally:
        output = stop_api(server)
    assert "waiting for the model" in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_corrupt_model_exits_3_with_one_line(tmp_path: Path, workers: str) -> None:
    shutil.copytree(MODEL_V1, tmp_path / "v1")
    (tmp_path / "v1" / "model.onnx").write_bytes(b"not an onnx model")
    result = subprocess.run(
        [sys.executable, "-m", "model_api"],
        env={
            "MODEL_DIR": str(tmp_path / "v1"),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(free_port()),
            "API_WORKERS": workers,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cannot serve the model:" in errors[0]
    assert "ONNX Runtime cannot load it" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


# -- the body limit -------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413(api: ApiServer) -> None:
    big = b'{"data": [' + b"[1, 2, 3, 4], " * 6000 + b"[1, 2, 3, 4]]}"
    declared = httpx.post(
        f"{api.url}/predict", content=big, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and "MAX_BODY_BYTES=65536" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    for path in ("/predict", "/v2/models/iris_svc/infer"):
        streamed = httpx.post(
            f"{api.url}{path}", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
        assert "exceeds MAX_BODY_BYTES=65536" in streamed.json()["error"]


def test_several_workers_without_a_writable_metrics_dir_exit_2(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = run_api_to_exit(
        {"MODEL_DIR": str(MODEL_V1), "API_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(not_a_dir)}
    )
    assert result.returncode == 2
    assert "needs a writable directory for the workers' metrics" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
