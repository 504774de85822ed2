"""The real Compose stack: built images, compose networks, the named volume.

Skipped when no Docker engine (or no Compose v2) is reachable, unless REQUIRE_DOCKER=1:
then that is a failure, as in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from google.cloud import storage

from tests.conftest import ROOT, free_port, models_script


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


@dataclass
class Stack:
    """One compose project with its own name and host ports, so tests never collide
    with a stack the developer has running."""

    project: str
    env: dict[str, str] = field(default_factory=dict)
    overrides: list[Path] = field(default_factory=list)  # extra compose files, applied last

    def __post_init__(self) -> None:
        self.api_port = free_port()
        self.gcs_port = free_port()
        self.env = {
            **os.environ,
            "API_HOST_PORT": str(self.api_port),
            "FAKE_GCS_HOST_PORT": str(self.gcs_port),
            **self.env,
        }

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gcs(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                "docker",
                "compose",
                "--project-directory",
                str(ROOT),
                "-f",
                str(ROOT / "compose.yaml"),
                *(arg for path in self.overrides for arg in ("-f", str(path))),
                "-p",
                self.project,
                *args,
            ],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            raise AssertionError(
                f"docker compose {command} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def containers(self) -> dict[str, dict[str, Any]]:
        """service -> `docker inspect` of its container (stopped ones included)."""
        ids = self.compose("ps", "-a", "-q").stdout.split()
        if not ids:
            return {}
        inspected = json.loads(
            subprocess.run(
                ["docker", "inspect", *ids], capture_output=True, text=True, check=True
            ).stdout
        )
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def volumes(self) -> list[str]:
        return subprocess.run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()

    def publish(self, src: Path, uri: str, sign_key: Path | None = None) -> None:
        """Upload a version directory to this stack's emulator, as `make publish` does
        (signed with `sign_key`, as `make publish SIGN_KEY=...` does)."""
        with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": self.gcs}):
            models_script("publish").publish(src, uri, storage.Client(), sign_key)

    def inspect(self, service: str) -> dict[str, Any]:
        return self.containers()[service]

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=120)


@pytest.fixture(scope="session")
def built_images() -> None:
    """Build the three images once for the session (layer-cached between runs)."""
    Stack("modelload-e2e-build").compose("build", timeout=1800)


@pytest.fixture(scope="module")
def stack(built_images: None) -> Iterator[Stack]:
    stack = Stack(f"modelload-e2e-{os.getpid()}")
    stack.down()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "180")
    yield stack
    stack.down()
