"""Step-load capacity run: the traffic of locustfile.py at a rising number of users.

    locust -f bench/src/model_load_bench/capacity.py --headless --host URL --steps-out steps.json
    python -m model_load_bench.capacity_report steps.json          # or both: make loadtest-capacity

The user count climbs through --steps (default 4,16,32,48,64,80,96,128,192), holding each
for --step-seconds (15). Each step is measured after --settle-seconds (5), so spawning and
the queue left by the previous step do not count against it: requests, failures,
throughput and the p50/p95/p99 latency of that window go to --steps-out as JSON, which
capacity_report.py turns into the chart and the verdict.

With --api-container NAME (a local Docker container), the CPU the API used in each window
(in cores, from its cgroup) is recorded too: the figure the HPA's CPU target is about.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment

from model_load_bench.container_cpu import cpu_seconds, cpu_usage_file
from model_loadtest.locustfile import ModelUser  # noqa: F401  (the user class this shape drives)

log = logging.getLogger("loadtest.capacity")


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--steps",
        default="4,16,32,48,64,80,96,128,192",
        env_var="LOCUST_STEPS",
        help="user counts of the steps, comma-separated",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=15,
        env_var="LOCUST_STEP_SECONDS",
        help="how long each step lasts",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=5,
        env_var="LOCUST_SETTLE_SECONDS",
        help="the start of each step left out of its figures",
    )
    parser.add_argument(
        "--steps-out",
        default="steps.json",
        env_var="LOCUST_STEPS_OUT",
        help="where the per-step figures are written (JSON)",
    )
    parser.add_argument(
        "--api-container",
        default="",
        env_var="LOCUST_API_CONTAINER",
        help="Docker container of the API, to record its CPU use per step",
    )


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_ms:
        return 0.0
    rank = max(1, round(q * len(sorted_ms) + 0.5 - 1e-9))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


@dataclass
class Step:
    users: int
    started: float
    measured_from: float
    ended: float | None = None
    times_ms: list[float] = field(default_factory=list)
    failures: int = 0
    cpu_at_measure: float | None = None
    cpu_at_end: float | None = None
    own_cpu_at_measure: float = 0.0
    own_cpu_at_end: float = 0.0
    cpu_from: float = 0.0  # when the CPU readings of the window started

    def figures(self) -> dict[str, Any]:
        seconds = max((self.ended or time.monotonic()) - self.measured_from, 1e-9)
        times = sorted(self.times_ms)
        window = max((self.ended or time.monotonic()) - self.cpu_from, 1e-9)
        cpu = None
        if self.cpu_at_measure is not None and self.cpu_at_end is not None:
            cpu = round((self.cpu_at_end - self.cpu_at_measure) / window, 3)
        own_cpu = (self.own_cpu_at_end - self.own_cpu_at_measure) / window
        return {
            "users": self.users,
            "seconds": round(seconds, 2),
            "requests": len(times),
            "failures": self.failures,
            "rps": round(len(times) / seconds, 2),
            "p50_ms": round(percentile(times, 0.50), 2),
            "p95_ms": round(percentile(times, 0.95), 2),
            "p99_ms": round(percentile(times, 0.99), 2),
            "api_cpu_cores": cpu,
            # locust itself: near 1.0 means the generator, not the API, was the limit.
            "locust_cpu_cores": round(own_cpu, 3),
        }


class Recorder:
    """Buckets each request into the step it completed in, after that step's settle time."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.cpu_file: Path | None = None

    def enter(self, users: int, settle: float) -> None:
        self.close()
        now = time.monotonic()
        self.steps.append(Step(users, now, now + settle))

    def record(self, response_time: float, failed: bool) -> None:
        if not self.steps or time.monotonic() < self.steps[-1].measured_from:
            return
        step = self.steps[-1]
        if not step.times_ms:
            step.cpu_from = time.monotonic()
            step.cpu_at_measure = cpu_seconds(self.cpu_file)
            step.own_cpu_at_measure = time.process_time()
        step.times_ms.append(response_time)
        step.failures += failed

    def close(self) -> None:
        if self.steps and self.steps[-1].ended is None:
            self.steps[-1].ended = time.monotonic()
            self.steps[-1].cpu_at_end = cpu_seconds(self.cpu_file)
            self.steps[-1].own_cpu_at_end = time.process_time()


RECORDER = Recorder()


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise ValueError(f"--steps {text!r}: expected user counts >= 1, e.g. 4,16,32")
    return steps


class StepLoad(LoadTestShape):
    """Users climb through --steps, one step every --step-seconds, then the run stops."""

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        steps = parse_steps(options.steps)
        index = int(self.get_run_time() // options.step_seconds)
        if index >= len(steps):
            RECORDER.close()
            return None
        if len(RECORDER.steps) <= index:
            RECORDER.enter(steps[index], options.settle_seconds)
            log.info("step %d/%d: %d users", index + 1, len(steps), steps[index])
        return steps[index], 100.0  # the highest rate locust spawns without a warning


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    try:
        parse_steps(options.steps)
        if options.step_seconds <= options.settle_seconds:
            raise ValueError("--step-seconds must be longer than --settle-seconds")
    except ValueError as exc:
        log.error("%s", exc)
        sys.exit(2)


@events.test_start.add_listener
def _find_cpu(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None and options.api_container:
        RECORDER.cpu_file = cpu_usage_file(options.api_container)


@events.request.add_listener
def _on_request(response_time: float, exception: BaseException | None, **_: Any) -> None:
    RECORDER.record(response_time, exception is not None)


@events.quitting.add_listener
def _write(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    RECORDER.close()
    out = Path(options.steps_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "host": environment.host,
        "think_time_s": options.think_time,
        "step_seconds": options.step_seconds,
        "settle_seconds": options.settle_seconds,
        "steps": [s.figures() for s in RECORDER.steps],
    }
    out.write_text(json.dumps(document, indent=2) + "\n")
    log.info("per-step figures: %s", out)
    # Steps past the knee are expected to fail; capacity_report.py gives the verdict.
    environment.process_exit_code = 0 if RECORDER.steps else 1
