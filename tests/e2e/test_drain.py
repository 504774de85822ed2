"""Stopping a replica under load (`docker stop`: SIGTERM, as a rollout does), counted from
a client on the compose network (tests/e2e/drain_client.py, run in the API image, which
has python3).

Through the proxy, what a user sees: four clients, each opening a new connection per
POST /predict (256 rows), knowing nothing of readiness, keep sending while one of the two
replicas stops: not one request fails, not even a refused connection.

Straight to one replica, what the proxy relies on (the API's readiness-first drain):
/ready turns 503 at once; clients following it go on for one more second (as a
Service's endpoints, or the proxy's probe, take a moment to drop a terminating replica)
and every request that was connected and sent in that time, or before it, got a
complete 200: zero in-flight failures, while requests were still being served after
/ready failed. A client that ignores readiness and keeps connecting until the port
closes is measured too: it is served all through the drain, and any in-flight failure
must fall within a second of the port closing (connections in the kernel's listen
backlog at that instant are reset by the kernel; no server can accept those once it
stops listening).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from model_load_harness.compose import Stack
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

CLIENT = ROOT / "tests" / "e2e" / "drain_client.py"


def load_through_stop(replica: dict[str, Any], *client_args: str) -> dict[str, Any]:
    """Start the client container, stop `replica` once it is under load, return the counts."""
    network = next(iter(replica["NetworkSettings"]["Networks"]))
    client = subprocess.Popen(
        [
            "docker", "run", "--rm", "--network", network, "--user", "10001:10001",
            "-v", f"{CLIENT}:/drain_client.py:ro", "--entrypoint", "python3",
            replica["Config"]["Image"], "/drain_client.py", *client_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "load started"
        flowing = client.stdout.readline().strip()  # after 100 ok requests, however long
        assert flowing == "load flowing", flowing
        subprocess.run(
            ["docker", "stop", "-t", "60", replica["Id"]],
            check=True,
            capture_output=True,
            timeout=90,
        )
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def replicas(stack: Stack) -> list[dict[str, Any]]:
    """Both replicas running (a test before may have stopped one)."""
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
    running = stack.replicas()
    assert len(running) == 2
    return running


def address(replica: dict[str, Any]) -> str:
    return next(iter(replica["NetworkSettings"]["Networks"].values()))["IPAddress"]


def test_a_replica_stopping_behind_the_proxy_fails_nothing(
    stack: Stack, replicas: list[dict[str, Any]]
) -> None:
    counts = load_through_stop(
        replicas[0], "--host", "proxy", "--threads", "4", "--rows", "256",
        "--ignore-ready", "--max-seconds", "12",
    )  # fmt: skip
    print(f"\none of two replicas stopped, clients through the proxy: {counts}")
    assert counts["ok"] > 100, counts
    assert counts["refused"] == 0 and counts["in_flight"] == 0, counts
    assert counts["not_ready_at"] is None, counts  # the proxy stayed ready throughout


def test_stop_under_load_fails_no_request_in_flight(
    stack: Stack, replicas: list[dict[str, Any]]
) -> None:
    replica = replicas[0]
    counts = load_through_stop(
        replica, "--host", address(replica), "--threads", "4", "--rows", "256"
    )
    print(f"\ndrain, clients following /ready: {counts}")
    assert counts["in_flight"] == 0, counts
    assert counts["ok"] > 100 and counts["ok_after_not_ready"] > 0, counts
    logs = subprocess.run(
        ["docker", "logs", replica["Id"]], capture_output=True, text=True, check=True
    )
    logs_text = logs.stdout + logs.stderr
    assert "draining; /ready answers 503" in logs_text and "Finished server process" in logs_text
    assert "Cancel" not in logs_text and "Traceback" not in logs_text


def test_a_client_ignoring_readiness_fails_only_as_the_port_closes(
    stack: Stack, replicas: list[dict[str, Any]]
) -> None:
    replica = replicas[1]
    naive = load_through_stop(
        replica, "--host", address(replica), "--threads", "4", "--rows", "256",
        "--ignore-ready",
    )  # fmt: skip
    print(f"\ndrain, clients ignoring /ready until the port closes: {naive}")
    assert naive["ok"] > 100 and naive["refused"] > 0, naive
    # Served through the drain; what fails, fails as the port closes (the listen
    # backlog), never during the drain: within a second of the first refused connect.
    assert naive["ok_after_not_ready"] > 0, naive
    closed_at = naive["first_refused_at"]
    assert all(abs(t - closed_at) < 1.0 for t in naive["in_flight_failed_at"]), naive
