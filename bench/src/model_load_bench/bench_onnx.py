"""The plain ONNX Runtime loop: what a model costs with no server at all.

    uv run python -m model_load_bench.bench_onnx build/models/mlp_bench/v1/model.onnx
    make bench-onnx      # mlp_bench (make bench-models first) -> bench/results/onnx_loop.md

One `session.run` after another in one thread, for each intra-op thread count (--threads,
default 1 and 2) and batch size (--batches, default 1 and 16): milliseconds per run (median)
and rows per second. The configurations are interleaved in --rounds rounds (5) of --seconds
each (2), and each figure is the median over the rounds, so a burst of other load on a
shared machine moves one round, not one configuration. This is the baseline a server's
figures on the same model are compared with (issue: V2 at 16 connections vs the plain loop
at batch 1 and 16, same total threads).

The model must take one FP32 input [N, features] (the benchmark models of model_tools.zoo).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_load_harness.machine import describe_machine


@dataclass(frozen=True)
class Config:
    threads: int
    batch: int


@dataclass(frozen=True)
class Figures:
    ms_per_run: float  # median of the rounds' median run time
    rows_per_s: float  # median of the rounds' throughput


def session_for(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(session: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    inputs = session.get_inputs()
    arg = inputs[0]
    if len(inputs) != 1 or arg.type != "tensor(float)" or len(arg.shape) != 2:
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise SystemExit(f"bench_onnx: needs one FP32 input [N, features], got {got}")
    features = arg.shape[1]
    if not isinstance(features, int):
        raise SystemExit(f"bench_onnx: the feature dimension must be fixed, got {arg.shape}")
    rows = np.random.RandomState(0).random_sample((batch, features)).astype(np.float32)
    return {arg.name: rows}


def one_round(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float
) -> tuple[float, float]:
    """Run for `seconds`: the median run time (ms) and the rows per second."""
    rows = next(iter(feeds.values())).shape[0]
    times = []
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        session.run(None, feeds)
        times.append(time.perf_counter() - now)
    elapsed = time.perf_counter() - start
    return statistics.median(times) * 1e3, rows * len(times) / elapsed


def measure(
    path: Path, configs: list[Config], rounds: int, seconds: float, warmup: int = 20
) -> dict[Config, Figures]:
    sessions = {t: session_for(path, t) for t in sorted({c.threads for c in configs})}
    feeds = {c: feeds_for(sessions[c.threads], c.batch) for c in configs}
    for c in configs:
        for _ in range(warmup):
            sessions[c.threads].run(None, feeds[c])
    samples: dict[Config, list[tuple[float, float]]] = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            samples[c].append(one_round(sessions[c.threads], feeds[c], seconds))
    return {
        c: Figures(statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
        for c, runs in samples.items()
    }


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table(path: Path, figures: dict[Config, Figures]) -> str:
    lines = [
        f"Model: `{path}` ({path.stat().st_size / 1e6:.1f} MB)",
        "",
        "| intra-op threads | batch | ms per run (median) | rows/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c.threads} | {c.batch} | {f.ms_per_run:.2f} | {f.rows_per_s:,.0f} |"
        for c, f in figures.items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model.onnx with one FP32 [N, features] input")
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts (1,2)")
    parser.add_argument("--batches", default="1,16", help="batch sizes (1,16)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per configuration and round (2)"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the table and the machine here (markdown)"
    )
    args = parser.parse_args()
    configs = [
        Config(int(t), int(b)) for t in args.threads.split(",") for b in args.batches.split(",")
    ]
    load_before = load()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = table(args.model, measure(args.model, configs, args.rounds, args.seconds))
    print(result)
    if args.out:
        machine = describe_machine(
            f"onnxruntime {ort.__version__}",
            f"load average before {load_before}, after {load()}",
            load=False,
        )
        args.out.write_text(
            f"# The plain ONNX Runtime loop\n\n`make bench-onnx` on {started}: one "
            f"`session.run` after another, {args.rounds} interleaved rounds of {args.seconds:g} s "
            "per configuration, medians over the rounds. Ms per run is the median run, which "
            "other load on the machine barely moves; rows/s counts every run, stalls included: "
            "where the two disagree (rows/s well below batch x 1000 / ms), other processes took "
            "the cores, mostly from the runs with 2 threads.\n\n"
            f"{result}\n\nMachine: {machine}.\n"
        )


if __name__ == "__main__":
    main()
