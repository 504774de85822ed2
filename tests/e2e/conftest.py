"""The real Compose stack (model_load_harness.compose.Stack): built images, compose
networks, the named volume.

Skipped when no Docker engine (or no Compose v2) is reachable, unless REQUIRE_DOCKER=1:
then that is a failure, as in CI.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from model_load_harness.compose import Stack


def _docker_problem() -> str | None:
    for command in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(command)}` failed: {exc}"
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(command)}` failed: {last}"
    return None


@pytest.fixture(scope="session", autouse=True)
def docker_engine() -> None:
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but no usable Docker: {problem}", pytrace=False)
    pytest.skip(f"no usable Docker engine/Compose v2 ({problem}); run `bash .ci/prepare`")


@pytest.fixture(scope="session")
def built_images() -> None:
    """Build the three images once for the session (layer-cached between runs)."""
    Stack("modelload-e2e-build").compose("build", timeout=1800)


@pytest.fixture(scope="module")
def stack(built_images: None) -> Iterator[Stack]:
    stack = Stack(f"modelload-e2e-{os.getpid()}")
    stack.up()
    yield stack
    stack.down()
