"""A container's CPU time, from its cgroup's accounting: what `docker stats` reads, as a
counter (so a window's cores are its difference over the window's seconds)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_FILES = (
    "/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage",  # cgroup v1, nanoseconds
    "/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage",
    "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat",  # cgroup v2, usage_usec
)


def cpu_usage_file(container: str) -> Path | None:
    """The cgroup file holding the container's CPU time, or None when not found."""
    inspect = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container],
        capture_output=True,
        text=True,
        check=False,
    )
    if inspect.returncode != 0:
        log.warning("no CPU figures: docker inspect %s: %s", container, inspect.stderr.strip())
        return None
    for pattern in CGROUP_FILES:
        path = Path(pattern.format(id=inspect.stdout.strip()))
        if path.exists():
            return path
    log.warning("no CPU figures: no cgroup CPU accounting file for %s", container)
    return None


def cpu_seconds(path: Path | None) -> float | None:
    if path is None:
        return None
    text = path.read_text()
    if path.name == "cpu.stat":
        usec = next(line.split()[1] for line in text.splitlines() if line.startswith("usage_usec"))
        return int(usec) / 1e6
    return int(text) / 1e9
