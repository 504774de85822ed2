"""The machine a benchmark ran on, in one line for its report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def tool_version(*command: str) -> str:
    """The first line a tool prints about its version ("" when it is missing)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip().split("\n", 1)[0]


def docker_version() -> str:
    version = tool_version("docker", "version", "--format", "{{.Server.Version}}")
    return f"Docker Engine {version}" if version else "no Docker Engine"


def describe_machine(*extras: str, load: bool = True) -> str:
    """CPU, cores, memory, OS, Python, then `extras` (tool versions, the setup), then the
    load average now (unless `load` is false: the caller reports it its own way):
    "Intel(R) ..., 2 CPUs, 8 GiB RAM; Linux 6.1 x86_64; Python 3.12.3; ...; load
    average 0.52, 0.40, 0.31"."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    average = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    parts = [
        f"{cpu_model()}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB RAM",
        f"{platform.system()} {platform.release()} {platform.machine()}",
        f"Python {platform.python_version()}",
        *(e for e in extras if e),
    ]
    if load:
        parts.append(f"load average {average}")
    return "; ".join(parts)
