"""model_api.batching: requests waiting in one event-loop turn share one inference."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from model_api.batching import Batcher


class FakeModel:
    """predict_proba doubles its rows and records the rows of every call; rows holding
    a negative value make it fail, as a model may on input it cannot take."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        if (rows < 0).any():
            raise ValueError("negative input")
        return rows * 2


class Recorded:
    """The metrics the batcher reports: rows per call; (seconds, rows) per request."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.inferences: list[tuple[float, int]] = []

    def record_call(self, rows: int) -> None:
        self.calls.append(rows)

    def record_inference(self, seconds: float, rows: int) -> None:
        self.inferences.append((seconds, rows))


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def run(batcher: Batcher, model: Any, *requests: np.ndarray) -> list[np.ndarray | BaseException]:
    async def main() -> list[np.ndarray | BaseException]:
        return await asyncio.gather(
            *(batcher.infer(model, r) for r in requests), return_exceptions=True
        )

    return asyncio.run(main())


def test_requests_of_one_turn_share_one_call_and_get_their_own_rows() -> None:
    model, metrics = FakeModel(), Recorded()
    results = run(Batcher(100, metrics), model, rows(1), rows(2, 3), rows(4))
    assert model.calls == [4] and metrics.calls == [4]
    got = [r.ravel().tolist() for r in results if isinstance(r, np.ndarray)]
    assert got == [[2], [4, 6], [8]]
    # Each request: its own rows, the time of the call they shared.
    assert [rows for _, rows in metrics.inferences] == [1, 2, 1]
    assert len({seconds for seconds, _ in metrics.inferences}) == 1


def test_a_request_alone_runs_alone_without_waiting_for_company() -> None:
    model, metrics = FakeModel(), Recorded()
    (result,) = run(Batcher(100, metrics), model, rows(5))
    assert model.calls == [1] and metrics.calls == [1]
    assert isinstance(result, np.ndarray) and result.tolist() == [[10]]
    assert [rows for _, rows in metrics.inferences] == [1]


def test_a_call_holds_at_most_max_rows() -> None:
    model = FakeModel()
    results = run(Batcher(4), model, rows(1, 1), rows(2, 2), rows(3, 3), rows(4))
    assert model.calls == [4, 3]
    assert [r.ravel().tolist() for r in results] == [[2, 2], [4, 4], [6, 6], [8]]


def test_a_failing_shared_call_is_retried_request_by_request() -> None:
    model, metrics = FakeModel(), Recorded()
    good, bad, other = run(Batcher(100, metrics), model, rows(1), rows(-1), rows(2))
    assert model.calls == [3, 1, 1, 1]
    assert isinstance(bad, ValueError)
    assert isinstance(good, np.ndarray) and good.tolist() == [[2]]
    assert isinstance(other, np.ndarray) and other.tolist() == [[4]]
    assert metrics.calls == [1, 1]  # the calls that succeeded


def test_a_cancelled_request_is_left_out() -> None:
    model = FakeModel()

    async def main() -> list[Any]:
        batcher = Batcher(100)
        first = batcher.infer(model, rows(1))
        second = batcher.infer(model, rows(2))
        first.cancel()
        done = await second
        return [first.cancelled(), done.tolist()]

    assert asyncio.run(main()) == [True, [[4]]]
    assert model.calls == [1]


@pytest.mark.parametrize("count", [2, 7])
def test_with_the_real_model_each_request_gets_what_it_would_alone(count: int) -> None:
    from model_api.model import OnnxModel
    from tests.conftest import MODEL_V1

    model = OnnxModel.load(MODEL_V1)
    rng = np.random.default_rng(count)
    requests = [rng.uniform(0, 8, size=(1 + i % 3, 4)).astype(np.float32) for i in range(count)]
    results = run(Batcher(1024), model, *requests)
    for request, result in zip(requests, results, strict=True):
        assert isinstance(result, np.ndarray)
        np.testing.assert_allclose(result, model.predict_proba(request), rtol=1e-6)
