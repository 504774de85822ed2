"""Prometheus metrics: one set per app, aggregated across workers when
PROMETHEUS_MULTIPROC_DIR is set (the entry point sets it for API_WORKERS > 1).

The per-request series (requests, latency, inference time, rows) are recorded as tuples
and added in bulk within deferred.FLUSH_SECONDS (model_api.deferred); `render()` adds
this process's pending ones first, so a scrape served by a worker is exact for that
worker and at most FLUSH_SECONDS behind for the others.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from model_api.deferred import Deferred

# Sub-millisecond resolution: a warm small-model request takes well under 1 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
INFERENCE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to the last response byte, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "model_inference_seconds",
            "ONNX Runtime time per call (a call may serve several requests stacked into "
            "one batch: model_call_rows).",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.call_rows = Histogram(
            "model_call_rows",
            "Rows per ONNX Runtime call: the rows of all the requests stacked into it "
            "(its _sum: all rows inferred; its _count: the calls).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "The model being served (value 1), labelled with its name, version, sha256 and "
            "signer (empty when the loader verified no signature).",
            ["name", "version", "sha256", "signer"],
            multiprocess_mode="max",
            registry=r,
        )
        self.load_seconds = Gauge(
            "model_load_seconds",
            "Time to load the model and run the warm-up inference.",
            multiprocess_mode="max",
            registry=r,
        )

        # (method, route, status) -> the counter's child; (method, route) -> histogram's.
        self._request_series: dict[tuple[str, str, str], Any] = {}
        self._latency_series: dict[tuple[str, str], Any] = {}
        # (method, route, status code, seconds) per request; (seconds, rows) per ONNX
        # Runtime call.
        self._requests: Deferred[tuple[str, str, int, float]] = Deferred(self._add_requests)
        self._calls: Deferred[tuple[float, int]] = Deferred(self._add_calls)

    def record_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.add((method, route, status, seconds))

    def record_call(self, seconds: float, rows: int) -> None:
        """One ONNX Runtime call: its time and its rows."""
        self._calls.add((seconds, rows))

    def flush(self) -> None:
        """Add what is pending to the metrics now (before a scrape, at shutdown)."""
        for pending in (self._requests, self._calls):
            pending.flush()

    def _add_requests(self, records: list[tuple[str, str, int, float]]) -> None:
        counts = Tally((method, route, str(status)) for method, route, status, _ in records)
        for key, count in counts.items():
            child = self._request_series.get(key)
            if child is None:
                child = self._request_series[key] = self.requests.labels(*key)
            child.inc(count)
        latencies: dict[tuple[str, str], list[float]] = {}
        for method, route, _, seconds in records:
            latencies.setdefault((method, route), []).append(seconds)
        for key, values in latencies.items():
            child = self._latency_series.get(key)
            if child is None:
                child = self._latency_series[key] = self.latency.labels(*key)
            observe_many(child, values)

    def _add_calls(self, records: list[tuple[float, int]]) -> None:
        observe_many(self.inference, [seconds for seconds, _ in records])
        observe_many(self.call_rows, [rows for _, rows in records])

    def render(self) -> bytes:
        """The exposition text: this process's registry, or all workers' files."""
        self.flush()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """`histogram.observe(v)` for each value (prometheus-client's public interface)."""
    observe = histogram.observe
    for value in values:
        observe(value)
