"""Faults on the running compose stack, each with its observable outcome."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_load_harness.compose import Stack
from tests.conftest import SETOSA
from tests.e2e.traffic import Traffic, summary

pytestmark = pytest.mark.docker


def test_emulator_starting_late_is_waited_for(built_images: None) -> None:
    stack = Stack(f"modelload-e2e-late-{os.getpid()}")
    try:
        stack.compose("up", "-d", "--no-deps", "loader")  # storage does not exist yet
        # Storage comes once the loader has found it missing (a fixed delay would race the
        # loader's start-up on a busy machine), well within its LOADER_WAIT_SECONDS.
        wait_for(
            lambda: "not answering yet" in stack.compose("logs", "--no-color", "loader").stdout,
            "the loader finding no storage",
        )
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
        assert [c["State"]["Status"] for c in stack.containers()["api"]] == ["created"] * 2
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "destination: MODEL_DIR /models has" in logs and "the model needs" in logs
    finally:
        stack.down()


def _main_pid(container: dict[str, Any]) -> int:
    """Host PID of the container's main process: the child of its init (docker-init),
    or the init itself where there is none (the proxy runs as PID 1)."""
    init_pid = container["State"]["Pid"]
    if not container["HostConfig"].get("Init"):
        return int(init_pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == init_pid:
            return int(stat.parent.name)
    raise AssertionError(f"no child of {container['Name']}'s init (pid {init_pid})")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> float:
    """Seconds until condition() holds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.skipif(os.geteuid() != 0, reason="signalling a container's process needs root")
def test_a_killed_replica_fails_no_request_and_returns(stack: Stack) -> None:
    """kill -9 of one replica's API process, from the host: its container exits and is
    restarted by its policy; meanwhile the proxy sends everything to the other replica,
    retrying the requests that were on the killed one."""
    victim, other = stack.replicas()
    restarts = victim["RestartCount"]
    with Traffic(stack.api) as traffic:
        traffic.wait_for(100)
        os.kill(_main_pid(victim), signal.SIGKILL)
        killed_at = time.monotonic()

        def back() -> bool:
            again = next(c for c in stack.replicas() if c["Id"] == victim["Id"])
            return (
                again["RestartCount"] == restarts + 1
                and again["State"].get("Health", {}).get("Status") == "healthy"
            )

        recovery = wait_for(
            lambda: any(c["Id"] == victim["Id"] for c in stack.replicas()) and back(),
            "the killed replica back and healthy",
        )
        # The proxy routes to it again: both replicas up in its view.
        wait_for(
            lambda: stack.routed() == stack.replica_addresses(),
            "the proxy sees both replicas up",
        )
        traffic.wait_for(100)
    answers = traffic.answers
    during = [a for a in answers if a.sent >= killed_at - 1]
    print(f"\nkilled one replica: back and healthy in {recovery:.1f} s; {summary(answers)}")
    assert [a for a in answers if a.failure] == []
    assert len(during) > 100
    assert next(c for c in stack.replicas() if c["Id"] == other["Id"])["RestartCount"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="signalling a container's process needs root")
def test_a_killed_proxy_is_the_outage_and_restarts_by_its_policy(stack: Stack) -> None:
    """The one component whose loss is felt: requests fail, fast, until Docker restarts
    it (restart: unless-stopped); then everything is served again."""
    proxy = stack.inspect("proxy")
    with Traffic(stack.api, clients=2, rate=20, timeout=5) as traffic:
        traffic.wait_for(40)
        os.kill(_main_pid(proxy), signal.SIGKILL)
        killed_at = time.monotonic()
        recovery = wait_for(
            lambda: (
                stack.inspect("proxy")["RestartCount"] == proxy["RestartCount"] + 1
                and stack.inspect("proxy")["State"].get("Health", {}).get("Status") == "healthy"
            ),
            "the proxy restarted and healthy",
        )
        traffic.wait_for(40)
    answers = traffic.answers
    failed = [a for a in answers if a.failure]
    print(f"\nkilled the proxy: healthy again in {recovery:.1f} s; {summary(answers)}")
    assert failed, "killing the proxy interrupted nothing: was the right process killed?"
    assert all(a.sent >= killed_at - 1 for a in failed)
    assert max(a.took for a in failed) < 5, "a request hung instead of failing"
    assert all(a.failure is None for a in answers[-20:]), "not serving after the restart"
