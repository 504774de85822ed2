"""Real processes on loopback: the fake-gcs-server binary, the loader, the API under uvicorn."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_load_harness.api import ApiServer, launch_api, stop_api
from model_load_harness.fakegcs import FakeGcs
from model_load_harness.ports import free_port
from tests.conftest import MODEL_V1

BUCKET = "ml-models"


@pytest.fixture(scope="session")
def gcs_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's preload: bucket ml-models holding iris_svc/v1 from models/."""
    data = tmp_path_factory.mktemp("gcs-data")
    shutil.copytree(MODEL_V1, data / BUCKET / "iris_svc" / "v1")
    return data


@pytest.fixture(scope="session")
def fake_gcs(gcs_data: Path) -> Iterator[FakeGcs]:
    server = FakeGcs(gcs_data)
    server.start()
    yield server
    server.stop()


def run_loader(
    env: dict[str, str], timeout: float = 60, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MODEL_URI", "MODEL_DIR")}
    # Never /dev/termination-log on the test machine (root may write there).
    full_env["LOADER_TERMINATION_LOG"] = str(Path(env["MODEL_DIR"]).parent / "termination-log")
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "model_loader", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_api_to_exit(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m model_api` with only `env` (and PATH) on a free port, for a start that
    must fail: it returns when the API exits."""
    return subprocess.run(
        [sys.executable, "-m", "model_api"],
        env={"API_PORT": str(free_port()), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


StartApi = Callable[..., ApiServer]


@pytest.fixture
def start_api() -> Iterator[StartApi]:
    """Start `python -m model_api` (real uvicorn) on a free port; wait until /ready."""
    started: list[ApiServer] = []

    def start(model_dir: Path, **env: str) -> ApiServer:
        server = launch_api(model_dir, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_api(server)


@pytest.fixture(scope="session")
def loaded_model_dir(fake_gcs: FakeGcs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODEL_DIR the real loader published iris_svc/v1 into (with its manifest)."""
    model_dir = tmp_path_factory.mktemp("api-models")
    result = run_loader(
        {
            "STORAGE_EMULATOR_HOST": fake_gcs.url,
            "MODEL_URI": f"gs://{BUCKET}/iris_svc/v1/",
            "MODEL_DIR": str(model_dir),
            "LOADER_WAIT_SECONDS": "5",
        }
    )
    assert result.returncode == 0, result.stderr
    return model_dir


@pytest.fixture(scope="session")
def fake_gcs_url(fake_gcs: FakeGcs) -> str:
    return fake_gcs.url
