"""`docker compose up` end to end: the pattern, its guarantees, its failure mode."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from model_api.deferred import FLUSH_SECONDS
from model_load_harness.compose import Stack
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA

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


# Run inside a replica's container (python3, no client library): wait until ready,
# send V2 inferences on new connections (the kernel spreads them over the workers), then
# scrape /metrics until all of them are counted; print both as JSON.
IN_CONTAINER = """
import json, sys, time, urllib.error, urllib.request
base, count, flush = "http://127.0.0.1:8000", 10, float(sys.argv[1])
deadline = time.monotonic() + 60
while True:
    try:
        if urllib.request.urlopen(base + "/ready", timeout=2).status == 200:
            break
    except OSError:
        pass
    assert time.monotonic() < deadline, "not ready within 60 s"
    time.sleep(0.2)
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                               "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
# /ready is 200 only once both workers are warm, so none should answer 503; one that does
# is counted (the test fails on it) and the request sent again, to show the rest.
answers, unready, deadline = [], 0, time.monotonic() + 60
while len(answers) < count:
    request = urllib.request.Request(base + "/v2/models/iris_svc/versions/v1/infer", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            outputs = {o["name"]: o["data"] for o in json.load(r)["outputs"]}
            answers.append([r.status, r.headers["x-model-version"],
                            outputs["probabilities"][0] > 0.9])
    except urllib.error.HTTPError as exc:
        assert exc.code == 503 and time.monotonic() < deadline, exc
        unready += 1
line = 'http_requests_total{method="POST",route="/v2/models/{name}/versions/{version}/infer",'
deadline = time.monotonic() + 30  # each worker flushes its counts within `flush` seconds
while True:
    metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    if line + 'status="200"} %d.0' % count in metrics or time.monotonic() > deadline:
        break
    time.sleep(flush / 2)
print(json.dumps({"answers": answers, "unready": unready, "metrics": metrics}))
"""


def test_v2_and_metrics_of_several_workers_in_the_hardened_container(stack: Stack) -> None:
    """A replica given two CPUs runs two workers (API_WORKERS=auto); with a read-only
    root their metrics are summed from files in the /tmp tmpfs. Tried in a one-off
    container of the api service (`compose run`: its image, settings and hardening; not
    in the proxy's rotation) with API_WORKERS=2."""
    name = f"{stack.project}-two-workers"
    stack.compose("run", "-d", "--no-deps", "--name", name, "-e", "API_WORKERS=2", "api")
    try:
        result = subprocess.run(
            ["docker", "exec", name, "python3", "-c", IN_CONTAINER, str(FLUSH_SECONDS)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        top = subprocess.run(
            ["docker", "top", name, "-o", "pid,args"], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True)
    assert out["unready"] == 0, "a worker answered 503 after /ready said 200"
    assert out["answers"] == [[200, "v1", True]] * 10  # setosa, with p > 0.9
    line = 'http_requests_total{method="POST",route="/v2/models/{name}/versions/{version}/infer"'
    assert f'{line},status="200"}} 10.0' in out["metrics"]
    info = [x for x in out["metrics"].splitlines() if x.startswith("model_info{")]
    assert len(info) == 1 and 'name="iris_svc"' in info[0] and 'version="v1"' in info[0]
    assert top.count("--multiprocessing-fork") == 2, top  # the two workers


def test_loader_ran_once_and_exited_zero_before_the_api_started(stack: Stack) -> None:
    containers = stack.containers()
    (loader,) = (c["State"] for c in containers["loader"])
    replicas = [c["State"] for c in containers["api"]]
    assert loader["Status"] == "exited" and loader["ExitCode"] == 0
    assert len(replicas) == 2  # API_REPLICAS' default
    for api in replicas:
        assert api["Status"] == "running" and api["Health"]["Status"] == "healthy"
        assert loader["FinishedAt"] <= api["StartedAt"]
    (proxy,) = (c["State"] for c in containers["proxy"])
    assert proxy["Health"]["Status"] == "healthy"
    assert min(api["StartedAt"] for api in replicas) <= proxy["StartedAt"]


def test_the_api_mounts_the_model_volume_read_only_and_runs_unprivileged(stack: Stack) -> None:
    for api in stack.replicas():
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
    # Only the proxy publishes the API's port, on 127.0.0.1.
    ports = stack.inspect("proxy")["NetworkSettings"]["Ports"]["8000/tcp"]
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
        assert stack.inspect("loader")["State"]["ExitCode"] == 4
        for api in [*containers["api"], *containers["proxy"]]:
            assert api["State"]["Status"] == "created"
            assert api["State"]["StartedAt"].startswith("0001-01-01")
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "not found: no objects under gs://ml-models/iris_svc/v404/" in logs
        assert "Traceback" not in logs
    finally:
        stack.down()
