"""Soak: steady locust traffic on the compose stack for a long while, errors and memory watched.

    uv run python -m model_load_bench.soak --users 134 --duration 600 --report bench/results/soak.md
    make soak                                        # the same, 10 minutes

Starts its own compose project (own name, free host ports; a stack you have running is
left alone), waits until the API is ready, then runs the traffic of locustfile.py headless
at --users for --duration seconds (through the proxy, as a user's traffic) while sampling
the API replicas' memory every --sample-seconds: the resident set (RSS) of every process
in the replicas' containers, summed, from `docker top`. Afterwards it prints, and with
--report writes as Markdown:

- requests, failures, req/s, p50/p99 over the whole run (locust's stats CSV);
- p99 over time: per minute, the highest of locust's rolling p99 (locust's history CSV
  keeps a 10 s window every second) and the median req/s;
- RSS idle (ready, before any traffic), at "start" (after --warmup-seconds of load: the
  first requests allocate buffers, pools and arenas once) and at the end.

Exit code 1 when any request failed or the RSS grew from start to end by more than
--rss-bound-mib plus --rss-bound-percent of the start (the noise bound), 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path

from model_load_harness import ROOT
from model_load_harness.compose import Stack
from model_load_harness.machine import describe_machine, docker_version
from model_load_harness.waiting import wait_http

# The locustfile as locust loads it: by path (found, not imported: importing locust here
# would patch this process with gevent).
LOCUSTFILE = find_spec("model_loadtest.locustfile").origin

MIB = 1024 * 1024


HEALTHCHECK_MARK = "urllib.request"  # compose's healthcheck: a python3 -c living ~0.1 s


def container_rss_bytes(container: str) -> int:
    """Summed RSS of the container's processes (docker top runs ps on the host), the
    short-lived healthcheck process left out."""
    out = subprocess.run(
        ["docker", "top", container, "-o", "pid,rss,args"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return (
        1024
        * sum(  # ps reports KiB
            int(line.split()[1]) for line in out[1:] if HEALTHCHECK_MARK not in line
        )
    )


@dataclass
class Sample:
    seconds: float
    rss: int


class RssSampler(threading.Thread):
    def __init__(self, containers: list[str], every: float) -> None:
        super().__init__(daemon=True)
        self.containers, self.every = containers, every
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = sum(container_rss_bytes(c) for c in self.containers)
            except subprocess.CalledProcessError:
                rss = 0  # the container went away: shows as a zero in the series
            self.samples.append(Sample(time.monotonic() - self.started, rss))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def aggregated(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return row
    raise SystemExit(f"soak: no Aggregated row in {path}")


def per_minute(history: Path) -> list[dict[str, float]]:
    """Per minute of the run: median req/s and the highest rolling p99 (ms)."""
    minutes: dict[int, list[tuple[float, float, float]]] = {}
    with history.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        return []
    first = int(rows[0]["Timestamp"])
    for row in rows:
        if row["99%"] in ("N/A", "") or float(row["Requests/s"]) == 0:
            continue
        minute = (int(row["Timestamp"]) - first) // 60
        minutes.setdefault(minute, []).append(
            (float(row["Requests/s"]), float(row["99%"]), float(row["Total Failure Count"]))
        )
    return [
        {
            "minute": m + 1,
            "rps": statistics.median(v[0] for v in values),
            "p99_max": max(v[1] for v in values),
            "p99_median": statistics.median(v[1] for v in values),
            "failures": max(v[2] for v in values),
        }
        for m, values in sorted(minutes.items())
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=134, help="locust users (134)")
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--duration", type=int, default=600, help="seconds of load (600)")
    parser.add_argument("--warmup-seconds", type=float, default=30)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--rss-bound-mib", type=float, default=8)
    parser.add_argument("--rss-bound-percent", type=float, default=5)
    parser.add_argument("--out", type=Path, help="run folder (default results/soak/<UTC time>)")
    parser.add_argument("--report", type=Path, help="write the figures here as Markdown")
    parser.add_argument("--project", default=f"modelload-soak-{os.getpid()}")
    args = parser.parse_args()
    if args.users < 1 or args.duration < 1 or args.warmup_seconds >= args.duration:
        print("soak: need --users >= 1, --duration >= 1, --warmup-seconds < --duration")
        return 2

    out = args.out or ROOT / "results" / "soak" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    stack = Stack(args.project)
    host = stack.api
    try:
        stack.up()
        wait_http(f"{host}/ready", timeout=120, interval=0.2)
        replicas = stack.container_ids("api")
        workers = [
            " ".join(line.split()[1:])[:60]
            for api in replicas
            for line in subprocess.check_output(
                ["docker", "top", api, "-o", "pid,args"], text=True
            ).splitlines()[1:]
            if HEALTHCHECK_MARK not in line
        ]
        idle_rss = sum(container_rss_bytes(api) for api in replicas)
        load_before = os.getloadavg()
        started_at = datetime.now(UTC)
        sampler = RssSampler(replicas, args.sample_seconds)
        sampler.start()
        with (out / "locust.log").open("w") as log:
            locust = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    LOCUSTFILE,
                    "--headless",
                    "--host",
                    host,
                    "-u",
                    str(args.users),
                    "-r",
                    str(args.spawn_rate),
                    "-t",
                    f"{args.duration}s",
                    "--csv",
                    str(out / "stats"),
                    "--csv-full-history",  # rolling (10 s) percentiles in the history
                    "--only-summary",
                    "--p99-ms",
                    "0",
                    "--min-rps",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        sampler.stop()
        load_after = os.getloadavg()
        restarts = sum(
            int(count)
            for count in subprocess.check_output(
                ["docker", "inspect", "--format", "{{.RestartCount}}", *replicas], text=True
            ).split()
        )
    finally:
        stack.down()

    total = aggregated(out / "stats_stats.csv")
    minutes = per_minute(out / "stats_stats_history.csv")
    with (out / "rss.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "rss_bytes"])
        writer.writerows((round(s.seconds, 1), s.rss) for s in sampler.samples)
    after_warmup = [s for s in sampler.samples if s.seconds >= args.warmup_seconds]
    if not after_warmup:
        print("soak: no RSS sample after the warm-up")
        return 1
    rss_start, rss_end = after_warmup[0].rss, sampler.samples[-1].rss
    rss_peak = max(s.rss for s in sampler.samples)
    bound = args.rss_bound_mib * MIB + args.rss_bound_percent / 100 * rss_start
    growth = rss_end - rss_start
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    problems = []
    if locust.returncode != 0 and failures == 0:
        problems.append(f"locust exited {locust.returncode} (see {out / 'locust.log'})")
    if failures:
        problems.append(f"{failures} of {requests} requests failed")
    if growth > bound:
        problems.append(
            f"RSS grew {growth / MIB:.1f} MiB, above the noise bound of {bound / MIB:.1f} MiB"
        )
    if restarts:
        problems.append(f"the API replicas restarted {restarts} times")
    summary = (
        f"soak {'FAILED: ' + '; '.join(problems) if problems else 'held'}: "
        f"{args.users} users for {args.duration} s, {requests} requests, {failures} failures, "
        f"{float(total['Requests/s']):.0f} req/s, p50 {total['50%']} ms, p99 {total['99%']} ms; "
        f"API RSS idle {idle_rss / MIB:.1f} MiB, start {rss_start / MIB:.1f} MiB, "
        f"end {rss_end / MIB:.1f} MiB (growth {growth / MIB:+.1f} MiB, bound "
        f"{bound / MIB:.1f} MiB), peak {rss_peak / MIB:.1f} MiB"
    )
    print(summary)
    print(f"run folder: {out}")
    if args.report:
        args.report.write_text(
            report(
                args,
                summary,
                total,
                minutes,
                (idle_rss, rss_start, rss_end, rss_peak, bound),
                (started_at, load_before, load_after, workers),
            )
        )
        print(f"report: {args.report}")
    return 1 if problems else 0


def report(
    args: argparse.Namespace,
    summary: str,
    total: dict[str, str],
    minutes: list[dict[str, float]],
    rss: tuple[int, int, int, int, float],
    run: tuple[datetime, tuple[float, ...], tuple[float, ...], list[str]],
) -> str:
    idle, start, end, peak, bound = (v / MIB for v in rss)
    started_at, load_before, load_after, processes = run
    lines = [
        "# Soak: the API replicas under steady load (development machine, shared)",
        "",
        f"**{summary}.**",
        "",
        "## How it was run",
        "",
        "```bash",
        f"make soak SOAK_USERS={args.users} SOAK_SECONDS={args.duration}",
        f"# = uv run python -m model_load_bench.soak --users {args.users} "
        f"--duration {args.duration} "
        "--report bench/results/soak.md",
        "```",
        "",
        f"- Started {started_at:%Y-%m-%d %H:%M} UTC. The compose stack as shipped "
        "(compose.yaml defaults: 2 replicas of 1 CPU behind the proxy, `API_WORKERS=auto`, "
        f"access log on, 512 MiB memory limit), {len(processes)} processes in the replicas: "
        + "; ".join(f"`{p}`" for p in processes)
        + ".",
        f"- locust (`locustfile.py`, think time 0.1 s) on the same host at {args.users} users, "
        "about 70% of the 192 users one API container held in the capacity run "
        "(`capacity.md`), through the proxy's port on 127.0.0.1; every answer checked.",
        f"- RSS: the summed resident set of the replicas' processes (`docker top`), every "
        f"{args.sample_seconds:g} s. *Start* is the first sample after {args.warmup_seconds:g} s "
        "of load (the first requests allocate buffers and arenas once), *end* the last one. "
        f"Noise bound: growth up to {args.rss_bound_mib:g} MiB + {args.rss_bound_percent:g}% "
        "of the start.",
        "",
        "## The machine",
        "",
        f"{describe_machine(docker_version())}. **Shared**: other engineers were building "
        "images and running test "
        "suites at the same time; locust and the API share the same CPUs. Load average "
        f"{load_before[0]:.1f} before the run, {load_after[0]:.1f} after it.",
        "",
        "## Whole run",
        "",
        "| requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {total['Request Count']} | {total['Failure Count']} | "
        f"{float(total['Requests/s']):.0f} | {total['50%']} | {total['95%']} | "
        f"{total['99%']} | {float(total['Max Response Time']):.0f} |",
        "",
        "## p99 over time",
        "",
        "Per minute: the median throughput and the highest and median of locust's rolling "
        "p99 (a 10 s window, sampled every second).",
        "",
        "| minute | req/s | p99 ms (highest) | p99 ms (median) | failures so far |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {m['minute']} | {m['rps']:.0f} | {m['p99_max']:.0f} | {m['p99_median']:.0f} | "
            f"{m['failures']:.0f} |"
            for m in minutes
        ),
        "",
        "## API replicas RSS (summed)",
        "",
        "| idle (ready, no load) | start | end | growth | peak | noise bound |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {idle:.1f} MiB | {start:.1f} MiB | {end:.1f} MiB | {end - start:+.1f} MiB | "
        f"{peak:.1f} MiB | {bound:.1f} MiB |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
