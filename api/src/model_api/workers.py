"""Readiness across worker processes (API_WORKERS > 1).

The kernel hands each new connection to any worker, and each worker answers /ready for
itself: a container would report ready as soon as one worker is warm while another,
still loading or warming up, answers 503 to the predictions it is handed. So the
workers share a directory, made by the process that starts them (its path in
READY_DIR_ENV): a worker that is ready writes a marker named by its pid, and /ready is
200 only while every worker has one. A worker that died leaves a marker whose process is
gone; it does not count, so the container is not ready again until its replacement has
warmed up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

READY_DIR_ENV = "MODEL_API_WORKERS_READY_DIR"


def make_ready_dir() -> str:
    """For the process that starts the workers: a new, empty directory (under /tmp, the
    tmpfs under a read-only root), named in the environment the workers inherit."""
    directory = tempfile.mkdtemp(prefix="model-api-ready-")
    os.environ[READY_DIR_ENV] = directory
    return directory


class Peers:
    """This worker's view of its siblings' readiness. Without a shared directory (one
    worker, or an app built in process) it is always ready."""

    def __init__(self, directory: str | None, workers: int) -> None:
        self.directory = Path(directory) if directory else None
        self.workers = workers
        self.pid = os.getpid()

    @classmethod
    def from_env(cls, workers: int) -> Peers:
        return cls(os.environ.get(READY_DIR_ENV) if workers > 1 else None, workers)

    def mark_ready(self) -> None:
        if self.directory is not None:
            (self.directory / str(self.pid)).touch()

    def unmark(self) -> None:
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / str(self.pid)).unlink()

    def all_ready(self) -> bool:
        if self.directory is None:
            return True
        try:
            names = os.listdir(self.directory)
        except OSError:
            return False
        return sum(1 for name in names if _alive(name)) >= self.workers


def _alive(name: str) -> bool:
    try:
        os.kill(int(name), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # exists, another user's (not ours in a container, but still alive)
    return True
