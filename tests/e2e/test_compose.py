"""`docker compose up` end to end: the pattern, its guarantees, its failure mode."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from model_api.deferred import FLUSH_SECONDS
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.docker


def test_seed_predictions_through_the_published_port(stack: Stack) -> None:
    assert httpx.get(f"{stack.api}/health").json() == {"health": "ok"}
    setosa = httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).json()["prediction"]
    virginica = httpx.post(f"{stack.api}/predict", json={"data": [VIRGINICA]}).json()["prediction"]
    assert setosa[0] >= 0.9 and virginica[2] >= 0.9
    ready = httpx.get(f"{stack.api}/ready").json()
    assert ready == {"ready": True, "model_name": "iris_svc", "model_version": "v1"}
    metadata = httpx.get(f"{stack.api}/metadata").json()
    assert metadata["source_uri"] == "gs://ml-models/iris_svc/v1/"


def test_v2_and_metrics_in_the_hardened_container(stack: Stack) -> None:
    """The default worker count (the container's CPUs) with a read-only root: the
    metrics of all workers are summed from files in the /tmp tmpfs."""
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
    for _ in range(10):
        response = httpx.post(f"{stack.api}/v2/models/iris_svc/versions/v1/infer", json=body)
        assert response.status_code == 200 and response.headers["x-model-version"] == "v1"
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["label"] == [0] and outputs["probabilities"][0] > 0.9
    line = 'http_requests_total{method="POST",route="/v2/models/{name}/versions/{version}/infer"'
    # A worker adds its requests to the shared files within FLUSH_SECONDS; the one
    # answering the scrape at once.
    deadline = time.monotonic() + 20 * FLUSH_SECONDS
    metrics = httpx.get(f"{stack.api}/metrics").text
    while f'{line},status="200"}} 10.0' not in metrics and time.monotonic() < deadline:
        time.sleep(FLUSH_SECONDS / 2)
        metrics = httpx.get(f"{stack.api}/metrics").text
    assert f'{line},status="200"}} 10.0' in metrics
    info = [x for x in metrics.splitlines() if x.startswith("model_info{")]
    assert len(info) == 1 and 'name="iris_svc"' in info[0] and 'version="v1"' in info[0]


def test_loader_ran_once_and_exited_zero_before_the_api_started(stack: Stack) -> None:
    containers = stack.containers()
    loader, api = containers["loader"]["State"], containers["api"]["State"]
    assert loader["Status"] == "exited" and loader["ExitCode"] == 0
    assert api["Status"] == "running" and api["Health"]["Status"] == "healthy"
    assert loader["FinishedAt"] <= api["StartedAt"]


def test_the_api_mounts_the_model_volume_read_only_and_runs_unprivileged(stack: Stack) -> None:
    api = stack.containers()["api"]
    mounts = {m["Destination"]: m for m in api["Mounts"]}
    assert mounts["/models"]["Type"] == "volume" and mounts["/models"]["RW"] is False
    assert api["Config"]["User"] == "10001:10001"
    assert api["HostConfig"]["ReadonlyRootfs"] is True
    assert api["HostConfig"]["CapDrop"] == ["ALL"]
    write = stack.compose(
        "exec",
        "-T",
        "api",
        "python3",
        "-c",
        "open('/models/current/model.onnx', 'ab')",
        check=False,
    )
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    ports = api["NetworkSettings"]["Ports"]["8000/tcp"]
    assert [p["HostIp"] for p in ports] == ["127.0.0.1"]


def test_the_emulator_is_reachable_from_the_host(stack: Stack) -> None:
    listing = httpx.get(f"{stack.gcs}/storage/v1/b/ml-models/o", params={"prefix": "iris_svc/v1/"})
    names = sorted(item["name"] for item in listing.json()["items"])
    assert names == sorted(f"iris_svc/v1/{p.name}" for p in MODEL_V1.iterdir())


def test_model_update_and_rollback_without_rebuilding(
    stack: Stack, tmp_path: Path, train_module: ModuleType
) -> None:
    """The README's update: publish v2 to the bucket, point MODEL_URI at it, `up -d`."""
    train_module.export(tmp_path / "v2", svc_c=0.3)
    stack.publish(tmp_path / "v2", "gs://ml-models/iris_svc/v2/")

    stack.compose("up", "-d", "--wait", MODEL_URI="gs://ml-models/iris_svc/v2/")
    assert httpx.get(f"{stack.api}/ready").json()["model_version"] == "v2"
    v2 = httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).json()["prediction"]

    stack.compose("up", "-d", "--wait")  # MODEL_URI back to its default: v1
    assert httpx.get(f"{stack.api}/ready").json()["model_version"] == "v1"
    v1 = httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).json()["prediction"]
    assert v1 != v2


def test_down_removes_containers_and_the_volume(built_images: None) -> None:
    stack = Stack(f"modelload-e2e-down-{os.getpid()}")
    stack.compose("up", "-d", "--wait", "--wait-timeout", "180")
    assert stack.volumes()
    stack.down()
    assert stack.containers() == {}
    assert stack.volumes() == []


def test_a_missing_model_fails_up_and_the_api_never_starts(built_images: None) -> None:
    stack = Stack(
        f"modelload-e2e-missing-{os.getpid()}", {"MODEL_URI": "gs://ml-models/iris_svc/v404/"}
    )
    try:
        result = stack.compose("up", "-d", "--wait", "--wait-timeout", "120", check=False)
        assert result.returncode != 0
        assert "didn't complete successfully" in result.stderr
        containers = stack.containers()
        assert containers["loader"]["State"]["ExitCode"] == 4
        assert containers["api"]["State"]["Status"] == "created"
        assert containers["api"]["State"]["StartedAt"].startswith("0001-01-01")
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "not found: no objects under gs://ml-models/iris_svc/v404/" in logs
        assert "Traceback" not in logs
    finally:
        stack.down()
