"""Prometheus metrics: one set per app, aggregated across workers when
PROMETHEUS_MULTIPROC_DIR is set (the entry point sets it for API_WORKERS > 1)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

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
            "ONNX Runtime time per request: of the call that served it (with "
            "INFERENCE_MODE=batch a call may serve several requests).",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "model_batch_size", "Rows per inference request.", buckets=BATCH_BUCKETS, registry=r
        )
        self.call_rows = Histogram(
            "model_call_rows",
            "Rows per ONNX Runtime call: with INFERENCE_MODE=batch, the rows of all the "
            "requests that shared it.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "model_info",
            "The model being served (value 1), labelled with its name, version and sha256.",
            ["name", "version", "sha256"],
            multiprocess_mode="max",
            registry=r,
        )
        self.load_seconds = Gauge(
            "model_load_seconds",
            "Time to load the model and run the warm-up inference.",
            multiprocess_mode="max",
            registry=r,
        )

    def render(self) -> bytes:
        """The exposition text: this process's registry, or all workers' files."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)
