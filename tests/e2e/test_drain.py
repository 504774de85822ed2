"""`docker compose stop api` under load: the graceful drain, counted from a client on the
compose network (tests/e2e/drain_client.py, run in the API image, which has python3).

What it proves: four clients, each opening a new connection per POST /predict (256 rows),
keep sending while the API receives SIGTERM. /ready turns 503 at once; the clients go on
for one more second (as a Service's endpoints take a moment to drop a terminating pod)
and every request that was connected and sent in that time, or before it, got a complete
200: zero in-flight failures, while requests were still being served after /ready failed.
A client that ignores readiness and keeps connecting until the port closes is measured
too: it is served all through the drain, and any in-flight failure must fall within a
second of the port closing (connections in the kernel's listen backlog at that instant
are reset by the kernel; no server can accept those once it stops listening).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.docker

CLIENT = ROOT / "tests" / "e2e" / "drain_client.py"


def load_through_stop(stack: Stack, *client_args: str) -> dict[str, Any]:
    """Start the client container, stop the API once it is under load, return the counts."""
    api = stack.inspect("api")
    network = next(iter(api["NetworkSettings"]["Networks"]))
    client = subprocess.Popen(
        [
            "docker", "run", "--rm", "--network", network, "--user", "10001:10001",
            "-v", f"{CLIENT}:/drain_client.py:ro", "--entrypoint", "python3",
            api["Config"]["Image"], "/drain_client.py", *client_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "load started"
        time.sleep(3)
        stack.compose("stop", "api", timeout=60)
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_stop_under_load_fails_no_request_in_flight(built_images: None) -> None:
    stack = Stack(f"modelload-e2e-drain-{os.getpid()}")
    try:
        stack.compose("up", "-d", "--wait", "--wait-timeout", "180")
        counts = load_through_stop(stack, "--threads", "4", "--rows", "256")
        print(f"\ndrain, clients following /ready: {counts}")
        assert counts["in_flight"] == 0, counts
        assert counts["ok"] > 100 and counts["ok_after_not_ready"] > 0, counts
        logs = stack.compose("logs", "--no-color", "api").stdout
        assert "draining; /ready answers 503" in logs and "Finished server process" in logs
        assert "Cancel" not in logs and "Traceback" not in logs

        stack.compose("start", "api")
        stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
        naive = load_through_stop(stack, "--threads", "4", "--rows", "256", "--ignore-ready")
        print(f"drain, clients ignoring /ready until the port closes: {naive}")
        assert naive["ok"] > 100 and naive["refused"] > 0, naive
        # Served through the drain; what fails, fails as the port closes (the listen
        # backlog), never during the drain: within a second of the first refused connect.
        assert naive["ok_after_not_ready"] > 0, naive
        closed_at = naive["first_refused_at"]
        assert all(abs(t - closed_at) < 1.0 for t in naive["in_flight_failed_at"]), naive
    finally:
        stack.down()
