"""Waiting for a condition against a deadline, never sleeping and hoping: poll, and fail
with what was awaited (and, for a process, that it died) once the deadline passes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """The condition did not hold within the deadline."""


class ProcessExited(RuntimeError):
    """The process that should have brought the condition about exited first."""


def wait_until(
    condition: Callable[[], T | None],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.05,
    process: subprocess.Popen | None = None,
) -> T:
    """Call `condition` every `interval` s until it returns something truthy, and return
    that. WaitTimeout after `timeout` s; ProcessExited as soon as `process` (if given) has
    exited, since the condition will not come true then."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise ProcessExited(f"process exited with {process.returncode} before {what}")
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """GET url's status code; None when nothing answers (refused, reset, timed out)."""
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.TransportError:
        return None


def wait_http(
    url: str,
    timeout: float = 60.0,
    process: subprocess.Popen | None = None,
    ok: Callable[[int], bool] = lambda status: status == 200,
    interval: float = 0.05,
) -> int:
    """Wait until GET url answers a status `ok` accepts (200 by default); return it."""

    def accepted() -> int | None:
        status = http_status(url)
        return status if status is not None and ok(status) else None

    return wait_until(accepted, f"{url} answering", timeout, interval, process)
