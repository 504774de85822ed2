"""model_loadtest.thresholds and model_load_bench.capacity_report: when a run or a step
counts as held."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_load_bench import capacity_report as report
from model_loadtest import thresholds

RunFigures = thresholds.RunFigures


def test_a_clean_fast_run_holds() -> None:
    assert thresholds.breaches(RunFigures(1000, 0, 20.0, 90.0), 100, 20) == []


@pytest.mark.parametrize(
    ("run", "message"),
    [
        (RunFigures(1000, 1, 20.0, 90.0), "1 of 1000 requests failed (0.10%)"),
        (RunFigures(1000, 0, 140.0, 90.0), "p99 140 ms above the bound of 100 ms"),
        (RunFigures(1000, 0, 20.0, 12.5), "throughput 12.5 req/s below the floor of 20 req/s"),
        (RunFigures(0, 0, 0.0, 0.0), "no request completed"),
    ],
)
def test_each_threshold_fails_a_run(run: Any, message: str) -> None:
    assert thresholds.breaches(run, 100, 20) == [message]


def test_all_breaches_are_reported_and_zero_switches_a_check_off() -> None:
    slow = RunFigures(10, 10, 900.0, 1.0)
    assert len(thresholds.breaches(slow, 100, 20)) == 3
    assert thresholds.breaches(RunFigures(10, 0, 900.0, 1.0), 0, 0) == []


def step(users: int, p99: float, failures: int = 0, requests: int = 100) -> dict[str, Any]:
    return {
        "users": users,
        "requests": requests,
        "failures": failures,
        "rps": users * 9.5,
        "p50_ms": p99 / 4,
        "p95_ms": p99 / 2,
        "p99_ms": p99,
    }


def test_verdict_is_the_last_step_before_the_first_break() -> None:
    steps = [step(4, 5), step(16, 20), step(32, 90), step(64, 150), step(96, 60)]
    assert report.highest_held(steps, 100)["users"] == 32
    assert report.verdict(steps, 100).startswith("capacity: 32 users held p99 <= 100 ms")
    assert "304 req/s" in report.verdict(steps, 100)


def test_failures_or_no_requests_break_a_step() -> None:
    assert report.highest_held([step(4, 5), step(16, 5, failures=1)], 100)["users"] == 4
    assert report.highest_held([step(4, 5, requests=0)], 100) is None
    assert "NOT HELD" in report.verdict([step(4, 500)], 100)


def test_report_writes_the_chart_and_exits_on_the_verdict(tmp_path: Path) -> None:
    steps_json = tmp_path / "steps.json"
    steps_json.write_text(json.dumps({"think_time_s": 0.1, "steps": [step(4, 5), step(16, 500)]}))
    assert report.main([str(steps_json), "--p99-ms", "100"]) == 0
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.main([str(steps_json), "--p99-ms", "1"]) == 1
    assert report.main([str(tmp_path / "missing.json")]) == 2


def test_cpu_figures_reach_the_verdict_and_the_chart(tmp_path: Path) -> None:
    steps = [
        {**step(4, 5), "api_cpu_cores": 0.1, "locust_cpu_cores": 0.2},
        {**step(16, 9), "api_cpu_cores": 0.4, "locust_cpu_cores": 0.7},
    ]
    assert report.verdict(steps, 100).endswith("API CPU 0.40 cores")
    steps_json = tmp_path / "steps.json"
    steps_json.write_text(json.dumps({"steps": steps}))
    assert report.main([str(steps_json), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000
