"""The API's throughput and latency next to two ceilings, measured in one run.

    uv run python -m model_load_bench.bench_api            # or: make bench-api

Starts everything on 127.0.0.1 (free ports) and drives it with wrk (a native load
generator; Debian: `apt-get install -y wrk`) at 16 connections, a warm-up, then >= 10 s
per scenario:

  (a) HTTP ceiling: a bare ASGI app under the same uvicorn settings as the API (its
      guard protocol, keep-alive, concurrency limit: model_api.server.uvicorn_options),
      reading the same POST body and returning a fixed small JSON body;
  (b) compute ceiling: ONNX Runtime `session.run` on one row in a loop, in process; and
      the same with the CPU caches flushed between runs, as serving HTTP does;
  references: the bare app under stock uvicorn (no guard: what the guard costs),
      FastAPI with one route returning the same fixed body (the framework's cost), and
      the bare app and the API under granian (another ASGI server: what switching
      servers would buy);
  the API (iris_svc): POST /predict with 1 row and with 32 rows, POST /v2/.../infer with
      1 row, with each INFERENCE_MODE (loop, thread); /predict without the access log.

Then two models of the zoo (models/README.md; built by `make bench-models` if missing):

  compute-bound, mlp_bench (~1.8 ms per row on one core): V2 JSON with 1 row at 16
      connections, API_WORKERS=auto (the rule gives one worker of 2 threads on 2 CPUs), with
      batching on (the default) and off (model-config.json max_batch_size 0), against the
      plain onnxruntime loop with the same 2 threads at batch 1 and batch 16
      (bench_onnx.py), in turn, `--rounds` times;
  large, large_mlp (256 MiB): the API with default settings, its processes' total resident
      memory after 20 requests, against the goal 1.25 x the model + 150 MiB.

(a), /predict with 1 row and V2 with 1 row run first, in turn, `--rounds` times (5), and
count as their medians; the goal's ratios are the medians of the rounds' ratios (each
round's scenarios run back to back): on a shared machine the load moves between
scenarios. Prints req/s, p50 and p99 per scenario, the ratio to (a), resident memory per
worker and the machine, and writes the same to bench/results/api.md. Compare ratios
within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from model_load_harness import ROOT
from model_load_harness.api import running_api
from model_load_harness.machine import describe_machine, tool_version
from model_load_harness.ports import free_port
from model_load_harness.processes import stop_process
from model_load_harness.waiting import wait_http

MODEL_DIR = ROOT / "models" / "iris_svc" / "v1"
RESULTS = ROOT / "bench" / "results" / "api.md"
SETOSA = [5.1, 3.5, 1.4, 0.2]
ROWS_32 = [[5.1 + i * 0.05, 3.5, 1.4 + i * 0.15, 0.2 + i * 0.07] for i in range(32)]
V2_PATH = "/v2/models/iris_svc/versions/v1/infer"

# How the reference apps run: under uvicorn with the API's own settings (its protocol
# class, keep-alive, concurrency limit...), on 127.0.0.1 at the port given.
RUN_LIKE_THE_API = """
from model_api.config import ApiSettings
from model_api.server import uvicorn_options

options = {**uvicorn_options(ApiSettings()), "host": "127.0.0.1", "port": int(sys.argv[1])}
uvicorn.run(app, workers=1, **options)
"""

# The bare app (a): what uvicorn + httptools + uvloop can do with no framework at all.
BARE_APP = (
    textwrap.dedent(
        """
    import sys, uvicorn

    BODY = b'{"prediction":[0.9714092016220093,0.015860972926020622,0.012729969806969166]}'
    HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the request body, as the API must
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    """
    )
    + RUN_LIKE_THE_API
)

# A reference point between (a) and the API: FastAPI itself, one route returning the same
# bytes, so the table shows what the framework costs before any of our code runs.
FASTAPI_APP = (
    textwrap.dedent(
        """
    import sys, uvicorn
    from fastapi import FastAPI, Request, Response

    BODY = b'{"prediction":[0.9714092016220093,0.015860972926020622,0.012729969806969166]}'
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")
    """
    )
    + RUN_LIKE_THE_API
)

# The bare app under stock uvicorn (httptools, no guard): what the guard costs.
STOCK_APP = BARE_APP.replace(
    RUN_LIKE_THE_API,
    """
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
""",
)

# Another well-kept ASGI server, on its public CLI, set up like the API's uvicorn (one
# worker, uvloop, HTTP/1 only): what switching servers would buy.
GRANIAN = [
    sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1",
    "--loop", "uvloop", "--runtime-mode", "st", "--http", "1", "--no-ws",
    "--host", "127.0.0.1", "--log-level", "warning",
]  # fmt: skip

# wrk: POST a fixed body; print the summary as one JSON line at the end.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "non2xx": %d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    ratio: float | None = None  # to (a); None: rps / (a)'s rps
    requests: int = 0


def wait_answering(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the server answers anything but a 5xx (the reference apps have no /ready)."""
    wait_http(url, timeout, process, ok=lambda status: status < 500, interval=0.1)


def wrk(
    url: str,
    body: str,
    seconds: float,
    args: argparse.Namespace,
    name: str,
    before_measuring: Callable[[], None] | None = None,
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(body=body))
    try:
        command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-s", script.name]
        # Warm-up (discarded), then the measured run.
        subprocess.run([*command, f"-d{args.warmup}s", url], capture_output=True, check=True)
        if before_measuring is not None:
            before_measuring()
        out = subprocess.run(
            [*command, f"-d{seconds:g}s", "--latency", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    return Result(
        name,
        r["requests"] / (r["duration_us"] / 1e6),
        r["p50_us"] / 1000,
        r["p99_us"] / 1000,
        r["errors"] + r["non2xx"],
        requests=r["requests"],
    )


def rss_mib(pid: int) -> dict[int, float]:
    """Resident memory of the server's processes that serve (its workers, or itself)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    pids = [c for c in children if _is_worker(c)] or [pid]
    out = {}
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out[p] = int(line.split()[1]) / 1024
    return out


def _is_worker(pid: int) -> bool:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    return b"multiprocessing" in cmdline or b"spawn_main" in cmdline


def compute_ceiling(seconds: float, cold: bool = False) -> Result:
    """(b) session.run on one row, in a loop, with the API's session options. `cold`: with
    4 MiB of other memory read between two runs (only the runs are timed), as a server's
    network stack, interpreter and framework do between two requests: what an inference
    costs when its code and data are no longer in the CPU caches."""
    import numpy as np

    from model_api.model import OnnxModel

    model = OnnxModel.load(MODEL_DIR)
    session, feeds = model.session, {"input": np.asarray([SETOSA], dtype=np.float32)}
    outputs = ["probabilities"]
    other = np.ones(4 << 20, dtype=np.uint8)
    for _ in range(1000):
        session.run(outputs, feeds)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if cold:
            other.sum()
        t0 = time.perf_counter_ns()
        session.run(outputs, feeds)
        times.append(time.perf_counter_ns() - t0)
    q = statistics.quantiles(times, n=100)
    return Result(
        f"(b) compute ceiling: session.run, 1 row{', cold caches' if cold else ''}",
        1e9 / statistics.mean(times),
        q[49] / 1e6,
        q[98] / 1e6,
    )


def machine() -> str:
    import onnxruntime
    import uvicorn

    return describe_machine(
        f"uvicorn {uvicorn.__version__}, onnxruntime {onnxruntime.__version__}",
        tool_version("wrk", "-v").split(" Copyright")[0].strip(),
    )


def api_settings(args: argparse.Namespace, mode: str, **settings: str) -> dict[str, str]:
    """The API's settings: the defaults but for `mode` and `settings` (name: value)."""
    return {
        "API_WORKERS": str(args.workers),
        "INFERENCE_MODE": mode,
        "LOG_LEVEL": args.log_level,
        **settings,
    }


@contextlib.contextmanager
def api_server(model_dir: Path, **settings: str) -> Iterator[tuple[str, int]]:
    """`python -m model_api` with these settings, once ready: (its URL, its pid). Its
    output goes to /dev/null: the access log of a load run would fill a pipe."""
    with running_api(model_dir, timeout=300, capture=False, **settings) as server:
        yield server.url, server.process.pid


def run_api(
    args: argparse.Namespace, mode: str, only_one_row: bool = False, **settings: str
) -> tuple[list[Result], dict[int, float]]:
    """The API's scenarios, or only /predict and V2 with 1 row (only_one_row), or only
    /predict with 1 row (other `settings` than the defaults)."""
    with api_server(MODEL_DIR, **api_settings(args, mode, **settings)) as (url, pid):
        v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
        if settings:
            label = "".join(f", {name}={value}" for name, value in settings.items())
            one = wrk(f"{url}/predict", json.dumps({"data": [SETOSA]}), args.duration, args,
                      f"API /predict, 1 row ({mode}{label})")  # fmt: skip
            return [one], rss_mib(pid)
        if only_one_row:
            pair = [
                wrk(f"{url}/predict", json.dumps({"data": [SETOSA]}), args.duration, args,
                    f"API /predict, 1 row ({mode})"),
                wrk(f"{url}{V2_PATH}", json.dumps(v2), args.duration, args,
                    f"API V2 infer, 1 row ({mode})"),
            ]  # fmt: skip
            return pair, rss_mib(pid)
        results = [
            wrk(f"{url}/predict", json.dumps({"data": [SETOSA]}), args.duration, args,
                f"API /predict, 1 row ({mode})"),
            wrk(f"{url}/predict", json.dumps({"data": ROWS_32}), args.duration, args,
                f"API /predict, 32 rows ({mode})"),
            wrk(f"{url}{V2_PATH}", json.dumps(v2), args.duration, args,
                f"API V2 infer, 1 row ({mode})"),
        ]  # fmt: skip
        return results, rss_mib(pid)


def median_of(runs: list[Result], rounds: int) -> Result:
    """The run with the median req/s, named as the median of `rounds` interleaved runs."""
    middle = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
    spread = ", ".join(f"{r.rps:,.0f}" for r in runs)
    name = f"{middle.name}: median of {rounds} interleaved runs ({spread})"
    return Result(name, middle.rps, middle.p50_ms, middle.p99_ms, middle.errors)


def run_bare(args: argparse.Namespace, source: str = BARE_APP, name: str = "") -> Result:
    port = free_port()
    return run_server(
        [sys.executable, "-c", source, str(port)],
        port,
        "/",
        args,
        name or "(a) HTTP ceiling: bare ASGI app, same uvicorn",
    )


def run_server(
    command: list[str],
    port: int,
    ready: str,
    args: argparse.Namespace,
    name: str,
    env: dict[str, str] | None = None,
) -> Result:
    """POST /predict with 1 row to a server started by `command` on `port`, once `ready`
    answers."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_answering(f"http://127.0.0.1:{port}{ready}", process, timeout=300)
        return wrk(
            f"http://127.0.0.1:{port}/predict", json.dumps({"data": [SETOSA]}), args.duration,
            args, name,
        )  # fmt: skip
    finally:
        stop_process(process, grace=20)


def run_granian(args: argparse.Namespace) -> list[Result]:
    """The bare app (a) and the API, each under granian instead of uvicorn (the API then
    without its guard: granian's protocol is its own)."""
    import granian

    version = granian.__version__
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "bare_app.py").write_text(BARE_APP.replace(RUN_LIKE_THE_API, ""))
        port = free_port()
        bare = run_server(
            [*GRANIAN, "--port", str(port), "--working-dir", directory, "bare_app:app"],
            port, "/", args, f"reference: bare app, granian {version}",
        )  # fmt: skip
    port = free_port()
    env = {**os.environ, "MODEL_DIR": str(MODEL_DIR), **api_settings(args, "auto")}
    api = run_server(
        [*GRANIAN, "--port", str(port), "--factory", "model_api.main:app_from_env"],
        port, "/ready", args, f"reference: API /predict, 1 row, granian {version} (no guard)",
        env,
    )  # fmt: skip
    return [bare, api]


def instructions_per_request(
    command: list[str],
    env: dict[str, str],
    ready: str,
    url: str,
    args: argparse.Namespace,
    body: str = json.dumps({"data": [SETOSA]}),
) -> tuple[float, int]:
    """User-space instructions the server executes per request over a wrk run, counted by
    callgrind: unlike seconds, the same for the same code whatever else the machine does
    (callgrind slows the server ~50x; the count per request barely moves with the rate).
    All its threads count; system calls and the kernel's work do not."""
    with tempfile.TemporaryDirectory() as out:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_answering(ready, process, timeout=300)

            def control(option: str) -> None:
                subprocess.run(
                    ["callgrind_control", option, str(process.pid)],
                    capture_output=True,
                    check=True,
                )

            # Count from the end of the warm-up to the end of the run: zero, then dump.
            result = wrk(url, body, args.duration, args, "", lambda: control("-z"))
            control("-d")
            dump = Path(out, f"cg.{process.pid}.1").read_text()
        finally:
            stop_process(process, grace=20)
    total = next(int(x.split()[1]) for x in dump.splitlines() if x.startswith("summary:"))
    return total / result.requests, result.requests


def count_instructions(args: argparse.Namespace) -> None:
    """--instructions: (a) and /predict with 1 row, under callgrind."""
    if shutil.which("callgrind_control") is None:
        sys.exit("valgrind not found: install it first (Debian/Ubuntu: apt-get install valgrind)")
    print(f"machine: {machine()}", flush=True)
    port = free_port()
    bare = instructions_per_request(
        [sys.executable, "-c", BARE_APP, str(port)],
        dict(os.environ),
        f"http://127.0.0.1:{port}/",
        f"http://127.0.0.1:{port}/predict",
        args,
    )
    counts = {"(a) bare ASGI app": bare}
    port = free_port()
    counts["reference: bare app, stock uvicorn (no guard)"] = instructions_per_request(
        [sys.executable, "-c", STOCK_APP, str(port)],
        dict(os.environ),
        f"http://127.0.0.1:{port}/",
        f"http://127.0.0.1:{port}/predict",
        args,
    )
    v2 = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
    for path, body in (("/predict", {"data": [SETOSA]}), (V2_PATH, v2)):
        port = free_port()
        # INFERENCE_MODE=loop, as auto chooses natively: callgrind slows the warm-up
        # inference ~50x, over the threshold for a thread of its own.
        counts[f"API {path}, 1 row"] = instructions_per_request(
            [sys.executable, "-m", "model_api"],
            {
                **os.environ,
                "MODEL_DIR": str(MODEL_DIR),
                "API_HOST": "127.0.0.1",
                "API_PORT": str(port),
                **api_settings(args, "loop"),
            },
            f"http://127.0.0.1:{port}/ready",
            f"http://127.0.0.1:{port}{path}",
            args,
            json.dumps(body),
        )
    for name, (count, requests) in counts.items():
        ratio = f", ratio (a) / it: {bare[0] / count:.0%}" if name != "(a) bare ASGI app" else ""
        print(f"{name}: {count:,.0f} instructions per request ({requests:,} requests){ratio}")


BENCH_MODELS = ROOT / "build" / "models"
MLP_FEATURES = 256


def bench_model(name: str) -> Path:
    """build/models/<name>/v1, built by model_tools.zoo (make bench-models) if missing."""
    path = BENCH_MODELS / name / "v1"
    if not (path / "model.onnx").is_file():
        print(f"building {name} (make bench-models)...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "model_tools.zoo", "--out", str(BENCH_MODELS), name],
            check=True,
        )
    return path


def model_settings(args: argparse.Namespace) -> dict[str, str]:
    """A zoo model's API settings: the defaults (API_WORKERS=auto...)."""
    return {"API_WORKERS": "auto", "LOG_LEVEL": args.log_level}


def run_model_api(args: argparse.Namespace, model_dir: Path, name: str, label: str) -> Result:
    """V2 JSON, 1 row of mlp_bench's 256 features: req/s (= rows/s)."""
    with api_server(model_dir, **model_settings(args)) as (url, _):
        row = [round(0.001 * (i % 997), 3) for i in range(MLP_FEATURES)]
        tensor = {"name": "input", "shape": [1, MLP_FEATURES], "datatype": "FP32", "data": row}
        body = json.dumps({"inputs": [tensor]})
        return wrk(f"{url}/v2/models/{name}/infer", body, args.duration, args, label)


def total_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its children (the supervisor and workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def compute_bound(args: argparse.Namespace) -> list[str]:
    """mlp_bench: the API with batching on and off against the plain loops, in turn."""
    from model_load_bench import bench_onnx

    model_dir = bench_model("mlp_bench")
    unbatched = Path(tempfile.mkdtemp(prefix="mlp-unbatched-")) / "mlp_bench" / "v1"
    unbatched.mkdir(parents=True)
    (unbatched / "model.onnx").symlink_to(model_dir / "model.onnx")
    (unbatched / "model-config.json").write_text('{"batching": {"max_batch_size": 0}}')
    configs = [bench_onnx.Config(2, 1), bench_onnx.Config(2, 16)]
    runs: dict[str, list[float]] = {"loop1": [], "loop16": [], "on": [], "off": []}
    p99: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        loops = bench_onnx.measure(model_dir / "model.onnx", configs, 1, min(args.duration, 5))
        runs["loop1"].append(loops[configs[0]].rows_per_s)
        runs["loop16"].append(loops[configs[1]].rows_per_s)
        for key, where in (("on", model_dir), ("off", unbatched)):
            result = run_model_api(args, where, "mlp_bench", f"mlp_bench, batching {key}")
            runs[key].append(result.rps)
            p99[key].append(result.p99_ms)
        print(
            "mlp_bench rows/s: loop b1 {:,.0f}, loop b16 {:,.0f}, API batching on {:,.0f}, "
            "off {:,.0f}".format(*(runs[k][-1] for k in ("loop1", "loop16", "on", "off"))),
            flush=True,
        )
    median = {k: statistics.median(v) for k, v in runs.items()}
    over_b1 = statistics.median(a / b for a, b in zip(runs["on"], runs["loop1"], strict=True))
    of_b16 = statistics.median(a / b for a, b in zip(runs["on"], runs["loop16"], strict=True))
    return [
        "| mlp_bench (FP32 [N, 256] -> 2048 x3 -> 10) | rows/s | p99 ms | vs loop b1 "
        "| vs loop b16 |",
        "|---|---:|---:|---:|---:|",
        f"| onnxruntime loop, 2 threads, batch 1 | {median['loop1']:,.0f} | | 1.00x | |",
        f"| onnxruntime loop, 2 threads, batch 16 | {median['loop16']:,.0f} | | | 100% |",
        f"| API, V2 JSON 1 row, 16 connections, batching on (default) | {median['on']:,.0f} | "
        f"{statistics.median(p99['on']):.1f} | {over_b1:.2f}x | {of_b16:.0%} |",
        f"| API, the same, batching off (max_batch_size 0) | {median['off']:,.0f} | "
        f"{statistics.median(p99['off']):.1f} | "
        f"{median['off'] / median['loop1']:.2f}x | {median['off'] / median['loop16']:.0%} |",
        "",
        f"Medians of {args.rounds} rounds, each running the four in turn; the ratios are the "
        "medians of the rounds' ratios. API_WORKERS=auto and ORT_INTRA_OP_THREADS=auto: for "
        "this compute-bound model one worker with 2 intra-op threads, the same 2 threads as "
        "the loops, its calls in a thread of their own (INFERENCE_MODE=auto).",
    ]


def large_model(args: argparse.Namespace) -> list[str]:
    """large_mlp: the API's total RSS with default settings, against the goal."""
    model_dir = bench_model("large_mlp")
    size = (model_dir / "model.onnx").stat().st_size
    with api_server(model_dir, **model_settings(args)) as (url, pid):
        tensor = {"name": "input", "shape": [1, 4096], "datatype": "FP32", "data": [0.001] * 4096}
        for _ in range(20):
            httpx.post(
                f"{url}/v2/models/large_mlp/infer", json={"inputs": [tensor]}, timeout=60
            ).raise_for_status()
        rss = total_rss_kib(pid) * 1024
    goal = 1.25 * size + 150 * 2**20
    verdict = "met" if rss <= goal else "NOT met"
    return [
        f"large_mlp ({size / 2**20:.0f} MiB), default settings ({os.cpu_count()} CPUs): total "
        f"API RSS after 20 requests {rss / 2**20:.0f} MiB; goal <= 1.25 x the model + 150 MiB "
        f"= {goal / 2**20:.0f} MiB: {verdict}.",
    ]


def report(
    rows: list[Result],
    ceiling: Result,
    memory: dict[str, dict[int, float]],
    args: argparse.Namespace,
) -> str:
    lines = [
        "| scenario | req/s | p50 ms | p99 ms | ratio to (a) | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r.ratio if r.ratio is not None else r.rps / ceiling.rps
        cells = [r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", f"{ratio:.0%}"]
        lines.append("| " + " | ".join([*cells, str(r.errors)]) + " |")
    mem = "; ".join(
        f"{mode}: " + ", ".join(f"{v:.0f} MiB" for v in per.values())
        for mode, per in memory.items()
    )
    lines += [
        "",
        f"wrk: {args.connections} connections, {args.threads} threads, {args.warmup} s warm-up "
        f"then {args.duration:g} s per scenario; API_WORKERS={args.workers}, "
        f"LOG_LEVEL={args.log_level} (access log on). (b) runs in process, no HTTP.",
        f"Resident memory per API worker after its runs: {mem}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per scenario (>= 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="API_WORKERS for the API")
    parser.add_argument("--log-level", default="INFO", help="the API's LOG_LEVEL")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved runs of (a) and /predict 1 row"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--iris-only", action="store_true", help="skip the compute-bound and large models"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per request of (a) and /predict under callgrind",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit(
            "wrk not found: install it first (Debian/Ubuntu: `apt-get install -y wrk`, "
            "macOS: `brew install wrk`; `bash .ci/prepare` does it on Debian)"
        )
    if args.instructions:
        count_instructions(args)
        return

    started = datetime.now(UTC)
    description = machine()
    print(f"machine: {description}", flush=True)
    # The goal's scenarios, (a), /predict and V2 with 1 row, in turn: on a shared machine
    # the load moves between scenarios, and the medians of interleaved runs resist that.
    rounds: tuple[list[Result], list[Result], list[Result]] = ([], [], [])
    for _ in range(args.rounds):
        rounds[0].append(run_bare(args))
        predict, v2 = run_api(args, "auto", only_one_row=True)[0]
        rounds[1].append(predict)
        rounds[2].append(v2)
        print(
            f"(a) {rounds[0][-1].rps:,.0f} req/s, /predict {predict.rps:,.0f} req/s, "
            f"V2 {v2.rps:,.0f} req/s",
            flush=True,
        )
    bare, *headlines = (median_of(runs, args.rounds) for runs in rounds)
    # Each round's scenarios ran back to back: the median of their ratios resists the load
    # drifting over the run better than the ratio of the medians.
    for headline, runs in zip(headlines, rounds[1:], strict=True):
        ratios = [api.rps / ceiling.rps for ceiling, api in zip(rounds[0], runs, strict=True)]
        headline.ratio = statistics.median(ratios)
        headline.name += (
            "; ratio: median of the rounds' ratios (" + ", ".join(f"{r:.0%}" for r in ratios) + ")"
        )
    references = [
        run_bare(args, STOCK_APP, "reference: bare app, stock uvicorn (no guard)"),
        run_bare(args, FASTAPI_APP, "reference: FastAPI, one route, fixed body"),
        *run_granian(args),
    ]
    for r in references:
        print(f"{r.name}: {r.rps:,.0f} req/s", flush=True)
    rows, memory = [bare, *headlines, *references], {}
    for mode in ("loop", "thread"):
        results, memory[mode] = run_api(args, mode)
        for r in results:
            print(f"{r.name}: {r.rps:,.0f} req/s", flush=True)
        rows += results
    results, _ = run_api(args, "auto", API_ACCESS_LOG="false")
    print(f"{results[0].name}: {results[0].rps:,.0f} req/s", flush=True)
    rows += results
    rows += [compute_ceiling(min(args.duration, 5)), compute_ceiling(min(args.duration, 5), True)]

    table = report(rows, bare, memory, args)
    if not args.iris_only:
        table += "\n\n" + "\n".join(compute_bound(args))
        table += "\n\n" + "\n".join(large_model(args))
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# API benchmark\n\n"
        f"`make bench-api` ({Path(__file__).name}), {started:%Y-%m-%d %H:%M} UTC.\n\n"
        f"Machine: {description}.\n\n"
        f"{table}\n"
    )
    print(
        f"\nwritten to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
    )


if __name__ == "__main__":
    main()
