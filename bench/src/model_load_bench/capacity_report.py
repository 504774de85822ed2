"""Chart and verdict of a step-load run (the JSON capacity.py writes).

    python -m model_load_bench.capacity_report steps.json --p99-ms 100 --out capacity.png

Prints one line: the highest step that held the latency bound with zero failures, and
exits 1 when not even the first step held (or the file holds no step).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

Step = dict[str, Any]
CPU_SERIES = {"api_cpu_cores": "API container", "locust_cpu_cores": "locust (the generator)"}


def held(step: Step, p99_bound_ms: float) -> bool:
    return step["requests"] > 0 and step["failures"] == 0 and step["p99_ms"] <= p99_bound_ms


def highest_held(steps: list[Step], p99_bound_ms: float) -> Step | None:
    """The last step of the unbroken run of held steps from the start.

    A step that holds only after an earlier one broke does not count: capacity is what
    the service holds on the way up, not a lucky sample past the knee.
    """
    best = None
    for step in steps:
        if not held(step, p99_bound_ms):
            break
        best = step
    return best


def verdict(steps: list[Step], p99_bound_ms: float) -> str:
    best = highest_held(steps, p99_bound_ms)
    if best is None:
        return (
            f"capacity: NOT HELD - even {steps[0]['users'] if steps else 0} user(s) broke "
            f"p99 <= {p99_bound_ms:g} ms with zero failures"
        )
    cpu = best.get("api_cpu_cores")
    return (
        f"capacity: {best['users']} users held p99 <= {p99_bound_ms:g} ms with 0 failures: "
        f"{best['rps']:.0f} req/s, p50 {best['p50_ms']:.0f} ms, p95 {best['p95_ms']:.0f} ms, "
        f"p99 {best['p99_ms']:.0f} ms" + ("" if cpu is None else f", API CPU {cpu:.2f} cores")
    )


def chart(document: dict[str, Any], p99_bound_ms: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = document["steps"]
    users = [s["users"] for s in steps]
    best = highest_held(steps, p99_bound_ms)
    with_cpu = any(s.get(k) is not None for s in steps for k in CPU_SERIES)
    fig, axes = plt.subplots(
        3 if with_cpu else 2,
        1,
        sharex=True,
        figsize=(8, 9 if with_cpu else 7),
        layout="constrained",
        height_ratios=[2, 2, 1] if with_cpu else [1, 1],
    )
    top, bottom = axes[0], axes[1]

    top.plot(users, [s["rps"] for s in steps], "o-", color="tab:blue", label="served req/s")
    think = document.get("think_time_s") or 0
    if think > 0:
        top.plot(
            users,
            [u / think for u in users],
            ":",
            color="grey",
            label=f"offered if latency were 0 (users / {think:g} s think time)",
        )
    top.set_ylabel("throughput (req/s)")
    top.set_ylim(bottom=0)

    for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        bottom.plot(users, [s[key] for s in steps], style, label=key.removesuffix("_ms"))
    bottom.axhline(
        p99_bound_ms, color="red", linestyle="--", label=f"p99 bound {p99_bound_ms:g} ms"
    )
    failed = [s for s in steps if s["failures"]]
    if failed:
        bottom.plot(
            [s["users"] for s in failed],
            [s["p99_ms"] for s in failed],
            "x",
            color="red",
            markersize=12,
            label="step with failures",
        )
    bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms, log scale)")
    if with_cpu:
        cpu = axes[2]
        for key, label in CPU_SERIES.items():
            if any(s.get(key) is not None for s in steps):
                cpu.plot(users, [s.get(key) or 0 for s in steps], "o-", label=label)
        cpu.set_ylabel("CPU (cores)")
        cpu.set_ylim(bottom=0)
    axes[-1].set_xlabel("offered load: concurrent users (closed loop)")

    for axis in axes:
        if best is not None:
            axis.axvline(best["users"], color="green", alpha=0.5, label="highest step held")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="upper left", fontsize="small")
    lines = textwrap.wrap(verdict(steps, p99_bound_ms), width=95)
    fig.suptitle("\n".join([title, *lines]), fontsize="medium")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps_json", type=Path)
    parser.add_argument("--p99-ms", type=float, default=100.0, help="latency bound (100)")
    parser.add_argument("--out", type=Path, help="PNG chart (default: next to the JSON)")
    parser.add_argument("--title", default="Model-Load API: step-load capacity")
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.steps_json.read_text())
    except (OSError, ValueError) as exc:
        print(f"capacity_report: cannot read {args.steps_json}: {exc}", file=sys.stderr)
        return 2
    steps = document.get("steps") or []
    out = args.out or args.steps_json.with_name("capacity.png")
    if steps:
        chart(document, args.p99_ms, out, args.title)
        print(f"chart: {out}")
    print(verdict(steps, args.p99_ms))
    return 0 if highest_held(steps, args.p99_ms) else 1


if __name__ == "__main__":
    sys.exit(main())
