"""Model updates on the running compose stack, with steady traffic through the proxy:
`make rollout` v1 -> v2 -> v1 (and `make rollback`) fails no request, and versions that
cannot be served abort the rollout with the old replicas serving."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from model_load_harness.compose import Stack
from tests.e2e.traffic import Traffic, summary

pytestmark = pytest.mark.docker

V1 = "gs://ml-models/iris_svc/v1/"
V2 = "gs://ml-models/iris_svc/v2/"


@pytest.fixture(scope="module")
def v2(stack: Stack, tmp_path_factory: pytest.TempPathFactory, train_module: ModuleType) -> str:
    src = tmp_path_factory.mktemp("v2")
    train_module.export(src, svc_c=0.3)
    stack.publish(src, V2)
    return V2


def versions_served(stack: Stack) -> set[str]:
    """What the replicas answer, asked through the proxy often enough to reach each."""
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        return {client.get("/ready").json()["model_version"] for _ in range(20)}


def roll(stack: Stack, old: str, new: str, *make_args: str) -> float:
    """Roll out under traffic; every answer must succeed with one version, the old one
    before, only the new one once the rollout returned. Returns its duration."""
    with Traffic(stack.api) as traffic:
        traffic.wait_for(100)
        began = time.monotonic()
        result = stack.rollout(*make_args)
        returned = time.monotonic()
        traffic.wait_for(100, sent_since=returned)
    answers = traffic.answers
    before = [a for a in answers if a.sent < began]
    during = [a for a in answers if began <= a.sent < returned]
    after = [a for a in answers if a.sent >= returned]
    print(
        f"\n{old} -> {new}: `make {'rollout' if make_args else 'rollback'}` took "
        f"{returned - began:.1f} s; {summary(answers)}; during: "
        f"{dict(Counter(a.version for a in during))}\n{result.stdout}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [a for a in answers if a.failure] == []
    assert {a.version for a in before} == {old}
    assert {a.version for a in during} <= {old, new}
    assert len(after) >= 100 and {a.version for a in after} == {new}
    assert re.search(rf"done: 2 replicas serve iris_svc {new} ", result.stdout), result.stdout
    # What a later `docker compose up` must be given to keep serving it.
    assert re.search(rf"keep MODEL_URI=gs://\S+/iris_svc/{new}/ in your", result.stdout)
    return returned - began


def test_rollout_and_back_fail_no_request(stack: Stack, v2: str) -> None:
    before = {c["Id"] for c in stack.replicas()}
    roll(stack, "v1", "v2", f"MODEL_URI={v2}")
    replicas = stack.replicas()
    assert len(replicas) == 2 and not before & {c["Id"] for c in replicas}
    assert all(c["State"]["Health"]["Status"] == "healthy" for c in replicas)
    assert versions_served(stack) == {"v2"}
    # The proxy routes to the two new replicas (a removed one's address lingers, DOWN,
    # for the resolver's `hold obsolete`).
    assert stack.routed() == stack.replica_addresses()

    roll(stack, "v2", "v1", f"MODEL_URI={V1}")
    assert versions_served(stack) == {"v1"}


def test_rollback_returns_to_the_version_served_before(stack: Stack, v2: str) -> None:
    roll(stack, "v1", "v2", f"MODEL_URI={v2}")
    roll(stack, "v2", "v1")  # make rollback: `previous` on the volume is v1
    assert versions_served(stack) == {"v1"}


def failed_rollout(stack: Stack, model_uri: str) -> str:
    """A rollout that must fail, under traffic: no request fails, the old replicas (all
    of them, untouched) answer v1 throughout. Returns the rollout's output."""
    before = {c["Id"] for c in stack.replicas()}
    with Traffic(stack.api) as traffic:
        traffic.wait_for(50)
        result = stack.rollout(f"MODEL_URI={model_uri}")
        traffic.wait_for(50)
    print(f"\n{summary(traffic.answers)}\n{result.stdout}")
    assert result.returncode != 0
    assert [a for a in traffic.answers if a.failure] == []
    assert {a.version for a in traffic.answers} == {"v1"}
    assert {c["Id"] for c in stack.replicas()} == before
    return result.stdout


def test_a_failing_loader_aborts_and_the_old_replicas_keep_serving(stack: Stack) -> None:
    out = failed_rollout(stack, "gs://ml-models/iris_svc/v404/")
    # The loader's one line, as it printed it.
    line = out.strip().splitlines()[-1]
    assert "rollout failed: the loader exited 4:" in line
    assert "not found: no objects under gs://ml-models/iris_svc/v404/" in line


def test_a_model_the_api_cannot_serve_aborts_and_the_old_version_is_published_again(
    stack: Stack, tmp_path: Path
) -> None:
    """The loader accepts it (checksums match, required files present); the API cannot
    load it (exit 3): the new replica is removed, no old one was touched, and `current`
    on the volume is the served version again, so a restarted old replica serves it."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an ONNX model")
    (broken / "label.json").write_text('{"0": "setosa", "1": "versicolor", "2": "virginica"}')
    stack.publish(broken, "gs://ml-models/iris_svc/broken/")
    out = failed_rollout(stack, "gs://ml-models/iris_svc/broken/")
    assert "cannot serve the model" in out
    assert f"publishing {V1} again" in out
    assert len(stack.containers()["api"]) == 2  # the failed replica is gone
    current = stack.compose("exec", "-T", "api", "cat", "/models/current/manifest.json").stdout
    assert f'"source_uri": "{V1}"' in current
