"""Cold start of the compose stack: `docker compose up -d` (images built) -> /ready = 200.

    uv run python -m model_load_bench.bench_startup --runs 5

Each run starts from nothing (`down -v`: no containers, an empty model volume), so
the loader downloads the model every time. Prints every run, the median and the
machine. Also splits the median by phase from the containers' own timestamps:
emulator start, loader run, API start to ready. Uses its own compose project and
host ports, so a stack you have running is left alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from model_load_harness.compose import Stack
from model_load_harness.machine import describe_machine, docker_version
from model_load_harness.waiting import wait_http

PROJECT = "modelload-bench"


def timestamps(stack: Stack) -> dict[str, dict[str, datetime]]:
    """service -> when its first container started and finished."""
    out: dict[str, dict[str, datetime]] = {}
    for service, containers in stack.containers().items():
        for c in containers:
            state = c["State"]
            times = {
                k: datetime.fromisoformat(state[k][:26].rstrip("Z"))
                for k in ("StartedAt", "FinishedAt")
            }
            # A service with replicas (api): the first one to start.
            if service not in out or times["StartedAt"] < out[service]["StartedAt"]:
                out[service] = times
    return out


def one_run(stack: Stack) -> tuple[float, float, float]:
    stack.compose("down", "-v")
    started = time.perf_counter()
    wall_start = datetime.now(UTC).replace(tzinfo=None)
    stack.compose("up", "-d")
    wait_http(f"{stack.api}/ready", timeout=600, interval=0.01)
    total = time.perf_counter() - started
    ts = timestamps(stack)
    loader = (ts["loader"]["FinishedAt"] - ts["loader"]["StartedAt"]).total_seconds()
    api_start = (ts["api"]["StartedAt"] - wall_start).total_seconds()
    return total, loader, total - api_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    stack = Stack(PROJECT)
    stack.compose("build", "--quiet", timeout=1800)
    runs = []
    try:
        for i in range(args.runs):
            total, loader, api = one_run(stack)
            runs.append((total, loader, api))
            print(
                f"run {i + 1}: up -d -> ready {total:.2f} s (loader ran {loader:.2f} s, "
                f"api start -> ready {api:.2f} s)"
            )
    finally:
        stack.compose("down", "-v")
    med = [statistics.median(r[i] for r in runs) for i in range(3)]
    print(
        f"median of {len(runs)}: up -d -> ready {med[0]:.2f} s; loader {med[1]:.2f} s; "
        f"api start -> ready {med[2]:.2f} s"
    )
    print(f"machine: {describe_machine(docker_version())}")


if __name__ == "__main__":
    main()
