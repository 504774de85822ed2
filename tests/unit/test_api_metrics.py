"""model_api.metrics and model_api.deferred: the per-request series recorded as tuples
and added in bulk give exactly what one observe() per request gives."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from model_api import deferred
from model_api.deferred import Deferred
from model_api.metrics import LATENCY_BUCKETS, Metrics, observe_many


def exposition(histogram_values: list[float], bulk: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)
    if bulk:
        observe_many(histogram, histogram_values)
    else:
        for value in histogram_values:
            histogram.observe(value)
    return b"\n".join(
        line for line in generate_latest(registry).splitlines() if b"_created" not in line
    )


def test_observe_many_equals_observe_one_by_one() -> None:
    rng = random.Random(7)
    # Bucket bounds themselves (a value equal to a bound belongs to it), between, beyond.
    values = [*LATENCY_BUCKETS, 0.0, 1e-9, 99.0, *(rng.uniform(0, 12) for _ in range(500))]
    assert exposition(values, bulk=True) == exposition(values, bulk=False)
    assert f'h_bucket{{le="+Inf"}} {len(values)}.0'.encode() in exposition(values, bulk=True)


def test_observe_many_refuses_a_labelled_parent() -> None:
    histogram = Histogram("l", "l", ["route"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        observe_many(histogram, [0.1])


def samples(metrics: Metrics) -> dict[str, float]:
    out = {}
    for line in metrics.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_render_includes_what_was_recorded_just_before() -> None:
    metrics = Metrics()

    async def traffic() -> dict[str, float]:
        for status in (200, 200, 422):
            metrics.record_request("POST", "/predict", status, 0.0007)
        metrics.record_call(0.00004, 9)  # one call, say serving requests of 3 and 6 rows
        return samples(metrics)  # within the same loop turn: nothing flushed by a timer

    seen = asyncio.run(traffic())
    assert seen['http_requests_total{method="POST",route="/predict",status="200"}'] == 2
    assert seen['http_requests_total{method="POST",route="/predict",status="422"}'] == 1
    latency = 'http_request_duration_seconds_bucket{le="0.001",method="POST",route="/predict"}'
    assert seen[latency] == 3
    assert seen['model_call_rows_bucket{le="8.0"}'] == 0
    assert seen['model_call_rows_bucket{le="16.0"}'] == 1
    assert seen["model_inference_seconds_count"] == 1


def test_records_are_applied_within_flush_seconds_without_a_render() -> None:
    applied: list[list[tuple[int]]] = []
    pending: Deferred[tuple[int]] = Deferred(applied.append)

    async def main() -> None:
        pending.add((1,))
        pending.add((2,))
        assert applied == []  # not at once: in bulk, later
        await asyncio.sleep(deferred.FLUSH_SECONDS * 3)

    asyncio.run(main())
    assert applied == [[(1,), (2,)]]


def test_without_an_event_loop_records_are_applied_at_once() -> None:
    applied: list[list[tuple[int]]] = []
    Deferred(applied.append).add((1,))
    assert applied == [[(1,)]]


def test_many_records_are_applied_before_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deferred, "MAX_PENDING", 10)
    applied: list[list[tuple[int]]] = []
    pending: Deferred[tuple[int]] = Deferred(applied.append)

    async def main() -> None:
        for i in range(25):
            pending.add((i,))
        assert [len(batch) for batch in applied] == [10, 10]
        pending.flush()

    asyncio.run(main())
    assert [record for batch in applied for (record,) in batch] == list(range(25))
