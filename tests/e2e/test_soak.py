"""The soak's short CI variant: `model_load_bench.soak` for 60 s on its own compose stack at
the soak's load (134 users), zero failed requests and the API's RSS within the soak's
noise bound (8 MiB + 5% of the RSS after the warm-up). `make soak` runs it for 10 min."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker


def test_a_minute_at_soak_load_has_no_errors_and_no_rss_growth(
    built_images: None, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "model_load_bench.soak",
            "--duration",
            "60",
            "--warmup-seconds",
            "15",
            "--out",
            str(tmp_path / "run"),
            "--report",
            str(tmp_path / "soak.md"),
            "--project",
            f"modelload-e2e-soak-{os.getpid()}",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    summary = re.search(
        r"soak held: 134 users for 60 s, (\d+) requests, 0 failures, (\d+) req/s.*"
        r"start ([\d.]+) MiB, end ([\d.]+) MiB",
        result.stdout,
    )
    assert summary, result.stdout
    requests, _, start, end = map(float, summary.groups())
    assert requests > 60 * 100  # the load really ran: > 100 req/s on any machine
    assert abs(end - start) <= 8 + 0.05 * start
    rss = (tmp_path / "run" / "rss.csv").read_text().splitlines()
    assert len(rss) >= 10  # sampled every 5 s over the minute
    assert "| minute | req/s |" in (tmp_path / "soak.md").read_text()
