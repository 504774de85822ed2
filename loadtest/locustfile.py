"""Realistic traffic for one Model-Load API, every answer checked.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000      # or: make loadtest

Task weights (a user's next request is drawn with these odds, out of 100):

    predict_one    50  POST /predict, one iris row (the 150 rows of iris.csv in rotation)
    predict_label  20  POST /predict/label, one iris row
    predict_batch  15  POST /predict, a batch of 2-32 iris rows
    v2_infer       10  POST /v2/models/<model>/infer, 1-32 rows (FP32 [n, 4]); only when
                       GET /v2/models/<model> answers 200 at test start, otherwise its share
                       goes to the others in proportion
    health          3  GET /health
    metadata        2  GET /metadata

Between two requests a user waits a uniform 0.5x-1.5x of --think-time (default 0.1 s), so
offered load grows with the user count (closed loop).

Every response is checked (response_checks.py): status, shape, probabilities summing to 1,
labels of the set, one result per row. A wrong answer is a failure. At the end of a
headless run, thresholds.py decides the exit code: any failure, p99 above --p99-ms or
throughput below --min-rps makes it 1.

Options this file adds (each also an environment variable):
    --think-time S   LOCUST_THINK_TIME   mean wait between a user's requests (0.1)
    --p99-ms MS      LOCUST_P99_MS       p99 bound over all requests; 0: off (0)
    --min-rps R      LOCUST_MIN_RPS      throughput floor; 0: off (0)
    --model NAME     LOCUST_MODEL        model name in the V2 paths (iris_svc)

Needs only locust (no numpy, no scikit-learn): the rows come from iris.csv next to this file.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from response_checks import (
    WrongAnswer,
    check_health,
    check_labels,
    check_metadata,
    check_probabilities,
    check_status,
    check_v2_infer,
)
from thresholds import RunFigures, breaches

log = logging.getLogger("loadtest")

IRIS_CSV = Path(__file__).with_name("iris.csv")
BATCH_SIZES = (2, 32)
POOL = 64  # pre-built batches of each kind
JSON_HEADERS = {"Content-Type": "application/json"}


def read_iris(path: Path = IRIS_CSV) -> tuple[list[list[float]], list[str]]:
    """The 150 iris rows (4 features each) and the label set, in class-index order."""
    with path.open(newline="") as f:
        records = list(csv.DictReader(f))
    rows = [[float(r[k]) for k in list(r)[:4]] for r in records]
    labels = list(dict.fromkeys(r["species"] for r in records))
    return rows, labels


@dataclass(frozen=True)
class Payload:
    body: bytes
    rows: int


def seed_payload(rows: list[list[float]]) -> Payload:
    return Payload(json.dumps({"data": rows}).encode(), len(rows))


def v2_payload(rows: list[list[float]]) -> Payload:
    flat = [v for row in rows for v in row]
    tensor = {"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": flat}
    return Payload(json.dumps({"inputs": [tensor]}).encode(), len(rows))


# Payloads are built once, at import; tasks only pick one.
ROWS, LABELS = read_iris()
_rng = random.Random(6)
_batches = [_rng.sample(ROWS, _rng.randint(*BATCH_SIZES)) for _ in range(POOL)]
SINGLE = [seed_payload([row]) for row in ROWS]
BATCH = [seed_payload(rows) for rows in _batches]
V2 = [v2_payload([row]) for row in ROWS[::10]] + [v2_payload(rows) for rows in _batches]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--think-time",
        type=float,
        default=0.1,
        env_var="LOCUST_THINK_TIME",
        help="mean seconds a user waits between requests",
    )
    parser.add_argument(
        "--p99-ms",
        type=float,
        default=0.0,
        env_var="LOCUST_P99_MS",
        help="fail a headless run whose p99 is above this (0: off)",
    )
    parser.add_argument(
        "--min-rps",
        type=float,
        default=0.0,
        env_var="LOCUST_MIN_RPS",
        help="fail a headless run below this many requests/s (0: off)",
    )
    parser.add_argument(
        "--model",
        default="iris_svc",
        env_var="LOCUST_MODEL",
        help="model name in the V2 inference paths",
    )


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    for flag in ("think_time", "p99_ms", "min_rps"):
        if getattr(options, flag) < 0:
            log.error("--%s must be >= 0, got %s", flag.replace("_", "-"), getattr(options, flag))
            sys.exit(2)


class IrisUser(FastHttpUser):
    """One client of the API; `host` comes from --host (or the web UI)."""

    think_time: float = 0.1
    v2_path: str = "/v2/models/iris_svc/infer"

    def wait_time(self) -> float:
        return random.uniform(0.5, 1.5) * self.think_time

    def _post(self, path: str, payload: Payload, name: str, check: Callable[[Any], None]) -> None:
        with self.client.post(
            path, data=payload.body, headers=JSON_HEADERS, name=name, catch_response=True
        ) as response:
            _judge(response, check)

    def _get(self, path: str, check: Callable[[Any], None]) -> None:
        with self.client.get(path, catch_response=True) as response:
            _judge(response, check)

    @task(50)
    def predict_one(self) -> None:
        payload = random.choice(SINGLE)
        self._post(
            "/predict",
            payload,
            "/predict [1 row]",
            lambda body: check_probabilities(body, 1, len(LABELS)),
        )

    @task(20)
    def predict_label(self) -> None:
        payload = random.choice(SINGLE)
        self._post(
            "/predict/label",
            payload,
            "/predict/label [1 row]",
            lambda body: check_labels(body, 1, LABELS),
        )

    @task(15)
    def predict_batch(self) -> None:
        payload = random.choice(BATCH)
        self._post(
            "/predict",
            payload,
            "/predict [2-32 rows]",
            lambda body: check_probabilities(body, payload.rows, len(LABELS)),
        )

    @task(10)
    def v2_infer(self) -> None:
        payload = random.choice(V2)
        self._post(
            self.v2_path,
            payload,
            "/v2/models/{model}/infer [1-32 rows]",
            lambda body: check_v2_infer(body, payload.rows, len(LABELS), LABELS),
        )

    @task(3)
    def health(self) -> None:
        self._get("/health", check_health)

    @task(2)
    def metadata(self) -> None:
        self._get("/metadata", lambda body: check_metadata(body, LABELS))


def _judge(response: ResponseContextManager, check: Callable[[Any], None]) -> None:
    if response.status_code == 0:
        return  # no HTTP answer at all: locust records the connection error itself
    try:
        check_status(response.status_code)
        check(response.json())
    except WrongAnswer as exc:
        response.failure(f"{exc} (body: {(response.text or '')[:120]})")
    except ValueError as exc:  # the body is not JSON
        response.failure(f"invalid JSON: {exc}")
    else:
        response.success()


def probe_v2(host: str, model: str, timeout: float = 5.0) -> bool:
    """Does the API serve the V2 protocol for this model? (GET /v2/models/<model> is 200)"""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/v2/models/{model}", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


_ALL_TASKS = list(IrisUser.tasks)


@events.test_start.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    IrisUser.think_time = options.think_time if options else 0.1
    model = options.model if options else "iris_svc"
    IrisUser.v2_path = f"/v2/models/{model}/infer"
    v2 = bool(environment.host) and probe_v2(str(environment.host), model)
    IrisUser.tasks = [t for t in _ALL_TASKS if v2 or t is not IrisUser.v2_infer]
    log.info("V2 inference %s (GET /v2/models/%s)", "enabled" if v2 else "off: not served", model)


def run_figures(environment: Environment) -> RunFigures:
    total = environment.stats.total
    return RunFigures(
        requests=total.num_requests,
        failures=total.num_failures,
        p99_ms=total.get_response_time_percentile(0.99) or 0.0,
        rps=total.total_rps,
    )


@events.quitting.add_listener
def _verdict(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.headless or environment.shape_class is not None:
        return  # a step-load run is judged step by step (capacity.py)
    figures = run_figures(environment)
    found = breaches(figures, options.p99_ms, options.min_rps)
    summary = f"{figures.requests} requests, {figures.rps:.1f} req/s, p99 {figures.p99_ms:.0f} ms"
    if found:
        log.error("load test FAILED (%s): %s", summary, "; ".join(found))
        environment.process_exit_code = 1
    else:
        log.info("load test held (%s, 0 failures)", summary)
