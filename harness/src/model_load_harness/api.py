"""`python -m model_api` (real uvicorn) as a process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from model_load_harness.ports import free_port
from model_load_harness.processes import stop_process
from model_load_harness.waiting import ProcessExited, wait_http


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[str]


def launch_api(
    model_dir: Path,
    wait_path: str = "/ready",
    *,
    timeout: float = 60.0,
    capture: bool = True,
    **env: str,
) -> ApiServer:
    """Start the API on MODEL_DIR=model_dir with one worker, no drain and `env` over the
    inherited environment; return once `wait_path` answers 200. `capture`: its output
    goes to a pipe stop_api() returns (keep it short: a full pipe blocks the server);
    otherwise to /dev/null, as under sustained load."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "model_api"],
        env={
            **os.environ,
            "MODEL_DIR": str(model_dir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "API_WORKERS": "1",
            "API_DRAIN_SECONDS": "0",  # stopping need not wait for a drain
            **env,
        },
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = ApiServer(f"http://127.0.0.1:{port}", process)
    try:
        wait_http(f"{server.url}{wait_path}", timeout, process)
    except ProcessExited as exc:  # the API's own last words say why it could not start
        output = stop_api(server).strip().splitlines()
        errors = [line for line in output if " ERROR " in line or " CRITICAL " in line]
        raise ProcessExited(f"{exc}; it said: {' | '.join(errors or output[-5:])}") from None
    except BaseException:
        stop_api(server)
        raise
    return server


def stop_api(server: ApiServer) -> str:
    """Stop it (SIGTERM, then SIGKILL after 15 s) and return everything it printed."""
    return stop_process(server.process)


@contextlib.contextmanager
def running_api(model_dir: Path, **kwargs: object) -> Iterator[ApiServer]:
    """launch_api() for the length of a `with` block."""
    server = launch_api(model_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_api(server)
