"""Stopping a child process: politely, then firmly."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> str:
    """SIGTERM, then SIGKILL after `grace` s; return what it printed to a pipe, if any."""
    process.terminate()
    try:
        out, _ = process.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    return out or ""
