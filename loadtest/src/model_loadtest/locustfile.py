"""Realistic traffic for one Model-Load API, whatever model it serves; every answer checked.

    locust -f loadtest/src/model_loadtest/locustfile.py --host http://127.0.0.1:8000
    make loadtest                                      # the same, with pass/fail thresholds

At test start the user finds out what is served and builds its requests from that alone:
the model's name (--model, else GET /ready, else GET /metadata), its signature (GET
/v2/models/<name>: inputs and outputs with name, datatype, shape) and its labels (GET
/metadata). v2_requests.py turns the signature into valid V2 bodies.

Task weights (a user's next request is drawn with these odds, out of 100):

    predict_one    50  POST /predict, one row          } only for a classifier-shaped model (one
    predict_label  20  POST /predict/label, one row    } numeric input [N, features], an output
    predict_batch  15  POST /predict, 2-32 rows        } [N, classes], labels), e.g. iris; rows
                                                         from iris.csv for 4 features, else drawn
    v2_infer       10  POST /v2/models/<model>/infer: every input, --rows rows where the batch
                       dimension is dynamic, --dim for other dynamic dimensions, values by datatype
    health          3  GET /health
    metadata        2  GET /metadata (when it answered 200 at start)

A task that does not apply gives its share to the others in proportion. An API that
answers no V2 model metadata gets the seed's iris traffic (/predict, /predict/label).

Between two requests a user waits a uniform 0.5x-1.5x of --think-time (default 0.1 s), so
offered load grows with the user count (closed loop).

Every response is checked (response_checks.py): status, and for V2 every declared output
with its datatype, shape and value count; for classifier-shaped models also probabilities
summing to 1, labels of the set, one result per row. A wrong answer is a failure. At the
end of a headless run, thresholds.py decides the exit code: any failure, p99 above
--p99-ms or throughput below --min-rps makes it 1.

Options this file adds (each also an environment variable):
    --think-time S   LOCUST_THINK_TIME   mean wait between a user's requests (0.1)
    --p99-ms MS      LOCUST_P99_MS       p99 bound over all requests; 0: off (0)
    --min-rps R      LOCUST_MIN_RPS      throughput floor; 0: off (0)
    --model NAME     LOCUST_MODEL        model name in the V2 paths (default: discovered)
    --rows N         LOCUST_ROWS         rows per V2 request where the batch is dynamic (1)
    --dim N          LOCUST_DIM          size of the other dynamic dimensions (8)

Needs only locust (no numpy, no scikit-learn): the iris rows come from iris.csv next to this file.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from locust import FastHttpUser, events, task
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment

from model_loadtest.response_checks import (
    WrongAnswer,
    check_health,
    check_labels,
    check_metadata,
    check_probabilities,
    check_status,
    check_v2_infer,
    check_v2_outputs,
)
from model_loadtest.thresholds import RunFigures, breaches
from model_loadtest.v2_requests import (
    BadMetadata,
    Signature,
    concrete_shape,
    infer_request,
    parse_metadata,
    seed_features,
    tensor_data,
)

log = logging.getLogger("loadtest")

IRIS_CSV = Path(__file__).with_name("iris.csv")
DEFAULT_MODEL = "iris_svc"  # when nothing names the served model (an API without /ready)
BATCH_SIZES = (2, 32)
POOL = 64  # pre-built requests of each kind
SEED_ROWS = 150  # rows drawn for a classifier whose features are not iris's
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


@dataclass
class Traffic:
    """What a run sends, decided once at test start from what the API serves."""

    model: str = DEFAULT_MODEL
    labels: list[str] | None = None  # None: unknown, not checked
    single: list[Payload] = field(default_factory=list)  # empty: no seed tasks
    batch: list[Payload] = field(default_factory=list)
    v2: list[Payload] = field(default_factory=list)  # empty: no V2 task
    signature: Signature | None = None
    metadata: bool = True  # GET /metadata answered at start

    @property
    def v2_path(self) -> str:
        return f"/v2/models/{quote(self.model, safe='')}/infer"


def seed_traffic(traffic: Traffic, rows: list[list[float]], rng: random.Random) -> None:
    traffic.single = [seed_payload([row]) for row in rows]
    traffic.batch = [seed_payload(rng.sample(rows, rng.randint(*BATCH_SIZES))) for _ in range(POOL)]


def v2_traffic(
    traffic: Traffic, signature: Signature, rows: int, dim: int, rng: random.Random
) -> None:
    traffic.signature = signature
    # The rows a request carries: `rows` for a dynamic batch dimension, else the fixed size.
    sent = (concrete_shape(signature.inputs[0], rows, dim) or [1])[0]
    traffic.v2 = [
        Payload(json.dumps(infer_request(signature.inputs, rows, dim, rng)).encode(), sent)
        for _ in range(POOL)
    ]


def plan_traffic(
    model: str,
    v2_metadata: Any,
    metadata: Any,
    rows: int = 1,
    dim: int = 8,
    rng: random.Random | None = None,
) -> tuple[Traffic, str]:
    """The run's traffic from what discovery found (None: that endpoint did not answer 200),
    and one line saying what was chosen and why."""
    rng = rng or random.Random(6)
    traffic = Traffic(model=model, metadata=metadata is not None)
    iris_rows, iris_labels = read_iris()
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    traffic.labels = [str(x) for x in labels] if isinstance(labels, list) else None
    try:
        signature = parse_metadata(v2_metadata) if v2_metadata is not None else None
    except BadMetadata as exc:
        log.warning("GET /v2/models/%s: %s", model, exc)
        signature = None
    if signature is None:
        # An API without V2 model metadata (or none answering yet): the seed's iris traffic,
        # /metadata included, so a stopped API fails the run with the reason.
        traffic.labels = traffic.labels or iris_labels
        traffic.metadata = True
        seed_traffic(traffic, iris_rows, rng)
        return traffic, f"V2 inference off: not served (GET /v2/models/{model}); seed routes only"
    v2_traffic(traffic, signature, rows, dim, rng)
    features = seed_features(signature, len(traffic.labels or []))
    if features is not None:
        seed_rows = (
            iris_rows
            if features == len(iris_rows[0])
            else [tensor_data("FP32", features, rng) for _ in range(SEED_ROWS)]
        )
        seed_traffic(traffic, seed_rows, rng)
    inputs = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in signature.inputs)
    seed = "with" if traffic.single else "without"
    return traffic, f"V2 inference enabled for {model} ({inputs}), {seed} the seed routes"


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
        default="",
        env_var="LOCUST_MODEL",
        help="model name in the V2 paths (default: the one GET /ready or /metadata names)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=1,
        env_var="LOCUST_ROWS",
        help="rows per V2 request where the model's batch dimension is dynamic",
    )
    parser.add_argument(
        "--dim",
        type=int,
        default=8,
        env_var="LOCUST_DIM",
        help="size of the other dynamic dimensions of V2 inputs (e.g. sequence length)",
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
    for flag in ("rows", "dim"):
        if getattr(options, flag) < 1:
            log.error("--%s must be >= 1, got %s", flag, getattr(options, flag))
            sys.exit(2)


class ModelUser(FastHttpUser):
    """One client of the API; `host` comes from --host (or the web UI)."""

    think_time: float = 0.1
    traffic: Traffic = Traffic()

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
        labels = self.traffic.labels or []
        self._post(
            "/predict",
            random.choice(self.traffic.single),
            "/predict [1 row]",
            lambda body: check_probabilities(body, 1, len(labels)),
        )

    @task(20)
    def predict_label(self) -> None:
        labels = self.traffic.labels or []
        self._post(
            "/predict/label",
            random.choice(self.traffic.single),
            "/predict/label [1 row]",
            lambda body: check_labels(body, 1, labels),
        )

    @task(15)
    def predict_batch(self) -> None:
        labels = self.traffic.labels or []
        payload = random.choice(self.traffic.batch)
        self._post(
            "/predict",
            payload,
            "/predict [2-32 rows]",
            lambda body: check_probabilities(body, payload.rows, len(labels)),
        )

    @task(10)
    def v2_infer(self) -> None:
        traffic = self.traffic
        payload = random.choice(traffic.v2)
        signature = traffic.signature
        assert signature is not None  # the task runs only with a signature

        def check(body: Any) -> None:
            check_v2_outputs(body, signature.outputs, payload.rows)
            if traffic.single and traffic.labels:  # classifier-shaped: probabilities, labels
                check_v2_infer(body, payload.rows, len(traffic.labels), traffic.labels)

        rows = "1 row" if payload.rows == 1 else f"{payload.rows} rows"
        self._post(traffic.v2_path, payload, f"/v2/models/{{model}}/infer [{rows}]", check)

    @task(3)
    def health(self) -> None:
        self._get("/health", check_health)

    @task(2)
    def metadata(self) -> None:
        self._get("/metadata", lambda body: check_metadata(body, self.traffic.labels))


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


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON body of GET url when it answers 200, else None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response) if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def discover(host: str, model: str) -> tuple[str, Any, Any]:
    """The served model's name, its V2 metadata and its /metadata (None: no 200 answer)."""
    base = host.rstrip("/")
    metadata = fetch_json(f"{base}/metadata")
    if not model:
        for body in (fetch_json(f"{base}/ready"), metadata):
            if isinstance(body, dict) and isinstance(body.get("model_name"), str):
                model = body["model_name"]
                break
        else:
            model = DEFAULT_MODEL
    return model, fetch_json(f"{base}/v2/models/{quote(model, safe='')}"), metadata


_ALL_TASKS = list(ModelUser.tasks)
_SEED_TASKS = {ModelUser.predict_one, ModelUser.predict_label, ModelUser.predict_batch}


@events.test_start.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    ModelUser.think_time = options.think_time if options else 0.1
    host = str(environment.host or "")
    model, v2_metadata, metadata = (
        discover(host, options.model if options else "") if host else (DEFAULT_MODEL, None, None)
    )
    traffic, summary = plan_traffic(
        model,
        v2_metadata,
        metadata,
        rows=options.rows if options else 1,
        dim=options.dim if options else 8,
    )
    ModelUser.traffic = traffic
    ModelUser.tasks = [
        t
        for t in _ALL_TASKS
        if (traffic.single or t not in _SEED_TASKS)
        and (traffic.v2 or t is not ModelUser.v2_infer)
        and (traffic.metadata or t is not ModelUser.metadata)
    ]
    log.info("%s", summary)


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
