"""Cold start of the compose stack: `docker compose up -d` (images built) -> /ready = 200.

    uv run python loadtest/bench_startup.py --runs 5

Each run starts from nothing (`down -v`: no containers, an empty model volume), so
the loader downloads the model every time. Prints every run, the median and the
machine. Also splits the median by phase from the containers' own timestamps:
emulator start, loader run, API start to ready. Uses its own compose project and
host ports, so a stack you have running is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "modelload-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        ["docker", "compose", "--project-directory", str(ROOT), "-p", PROJECT, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


def timestamps(env: dict[str, str]) -> dict[str, dict[str, datetime]]:
    ids = subprocess.run(
        ["docker", "compose", "--project-directory", str(ROOT), "-p", PROJECT, "ps", "-a", "-q"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    out: dict[str, dict[str, datetime]] = {}
    for c in json.loads(subprocess.check_output(["docker", "inspect", *ids])):
        state = c["State"]
        times = {
            k: datetime.fromisoformat(state[k][:26].rstrip("Z"))
            for k in ("StartedAt", "FinishedAt")
        }
        # A service with replicas (api): the first one to start.
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        if service not in out or times["StartedAt"] < out[service]["StartedAt"]:
            out[service] = times
    return out


def one_run(env: dict[str, str], url: str) -> tuple[float, float, float]:
    compose(env, "down", "-v")
    started = time.perf_counter()
    wall_start = datetime.now(UTC).replace(tzinfo=None)
    compose(env, "up", "-d")
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    total = time.perf_counter() - started
    ts = timestamps(env)
    loader = (ts["loader"]["FinishedAt"] - ts["loader"]["StartedAt"]).total_seconds()
    api_start = (ts["api"]["StartedAt"] - wall_start).total_seconds()
    return total, loader, total - api_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    port = free_port()
    env = {**os.environ, "API_HOST_PORT": str(port), "FAKE_GCS_HOST_PORT": str(free_port())}
    url = f"http://127.0.0.1:{port}/ready"
    compose(env, "build", "--quiet")
    runs = []
    try:
        for i in range(args.runs):
            total, loader, api = one_run(env, url)
            runs.append((total, loader, api))
            print(
                f"run {i + 1}: up -d -> ready {total:.2f} s (loader ran {loader:.2f} s, "
                f"api start -> ready {api:.2f} s)"
            )
    finally:
        compose(env, "down", "-v")
    med = [statistics.median(r[i] for r in runs) for i in range(3)]
    print(
        f"median of {len(runs)}: up -d -> ready {med[0]:.2f} s; loader {med[1]:.2f} s; "
        f"api start -> ready {med[2]:.2f} s"
    )
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, docker "
        + subprocess.check_output(
            ["docker", "version", "--format", "{{.Server.Version}}"], text=True
        ).strip()
    )


if __name__ == "__main__":
    main()
