"""The locust container of the `loadtest` compose profile, against the compose stack."""

from __future__ import annotations

import pytest

from model_load_harness.compose import Stack

pytestmark = pytest.mark.docker


def test_plain_up_leaves_locust_out_and_the_profile_brings_it_in(stack: Stack) -> None:
    assert "locust" not in stack.compose("config", "--services").stdout.split()
    assert "locust" not in stack.containers()
    services = stack.compose("--profile", "loadtest", "config", "--services").stdout.split()
    assert "locust" in services


def test_locust_container_load_tests_the_api_over_the_compose_network(stack: Stack) -> None:
    stack.compose("--profile", "loadtest", "build", "locust", timeout=900)
    result = stack.compose(
        "--profile", "loadtest", "run", "--rm", "--no-deps", "locust",
        "--headless", "-u", "4", "-r", "4", "-t", "5s", "--only-summary", "--p99-ms", "2000",
        check=False, timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "load test held" in output
    assert " 0(0.00%)" in output.split("Aggregated", 1)[1]
