"""Faults on the running compose stack, each with its observable outcome."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SETOSA
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.docker


def wait_ready(url: str, timeout: float = 60) -> float:
    """Seconds until GET url answers 200."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout} s")


def test_emulator_starting_late_is_waited_for(built_images: None) -> None:
    stack = Stack(f"modelload-e2e-late-{os.getpid()}")
    try:
        stack.compose("up", "-d", "--no-deps", "loader")  # storage does not exist yet
        time.sleep(10)
        stack.compose("up", "-d", "--wait", "--wait-timeout", "120")
        loader = stack.inspect("loader")["State"]
        assert loader["ExitCode"] == 0
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "not answering yet" in logs and "published iris_svc v1" in logs
        assert httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).status_code == 200
    finally:
        stack.down()


def test_a_full_model_volume_fails_the_loader_with_the_numbers(
    built_images: None, tmp_path: Path
) -> None:
    override = tmp_path / "tiny-volume.yaml"
    override.write_text(
        "volumes:\n  models:\n    driver_opts:\n"
        "      {type: tmpfs, device: tmpfs, o: 'size=16k,uid=10001,gid=10001'}\n"
    )
    stack = Stack(f"modelload-e2e-full-{os.getpid()}", overrides=[override])
    try:
        result = stack.compose("up", "-d", "--wait", "--wait-timeout", "60", check=False)
        assert result.returncode != 0
        assert stack.inspect("loader")["State"]["ExitCode"] == 8
        assert stack.inspect("api")["State"]["Status"] == "created"
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "destination: MODEL_DIR /models has" in logs and "the model needs" in logs
    finally:
        stack.down()


def _api_worker_pid(stack: Stack) -> int:
    """Host PID of the uvicorn process (the child of the container's init)."""
    init_pid = stack.inspect("api")["State"]["Pid"]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == init_pid:
            return int(stat.parent.name)
    raise AssertionError(f"no child of the api's init (pid {init_pid})")


@pytest.mark.skipif(os.geteuid() != 0, reason="signalling a container's process needs root")
def test_a_killed_api_process_is_restarted_and_requests_fail_fast(stack: Stack) -> None:
    durations: list[tuple[bool, float]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    ok = client.post(f"{stack.api}/predict", json={"data": [SETOSA]}).is_success
                except httpx.HTTPError:
                    ok = False
                durations.append((ok, time.monotonic() - started))
                if not ok:
                    time.sleep(0.02)

    restarts_before = stack.inspect("api")["RestartCount"]
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1)
        os.kill(_api_worker_pid(stack), signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(0.5)
        wait_ready(f"{stack.api}/ready")
        recovery = time.monotonic() - killed_at
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
    failed = [d for ok, d in durations if not ok]
    print(
        f"\nkilled api: back to ready in {recovery:.2f} s; {len(failed)} requests failed "
        f"during the gap, slowest failure {max(failed, default=0):.3f} s"
    )
    assert stack.inspect("api")["RestartCount"] == restarts_before + 1
    assert failed, "the kill did not interrupt service at all: was the right process killed?"
    assert max(failed) < 5, "a request hung instead of failing fast"
    assert recovery < 30
    assert durations[-1][0], "the API did not serve again after the restart"
