"""model_api.batching: requests waiting in one event-loop turn share one inference."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from model_api.batching import Batcher, Inference


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


def rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def run(batcher: Batcher, model: Any, *requests: np.ndarray) -> list[Inference | BaseException]:
    async def main() -> list[Inference | BaseException]:
        return await asyncio.gather(
            *(batcher.infer(model, r) for r in requests), return_exceptions=True
        )

    return asyncio.run(main())


def test_requests_of_one_turn_share_one_call_and_get_their_own_rows() -> None:
    model, seen = FakeModel(), []
    results = run(Batcher(100, seen.append), model, rows(1), rows(2, 3), rows(4))
    assert model.calls == [4] and seen == [4]
    got = [r.probabilities.ravel().tolist() for r in results if isinstance(r, Inference)]
    assert got == [[2], [4, 6], [8]]
    assert all(isinstance(r, Inference) and r.batch_rows == 4 for r in results)


def test_a_request_alone_runs_alone_without_waiting_for_company() -> None:
    model = FakeModel()
    (result,) = run(Batcher(100), model, rows(5))
    assert model.calls == [1]
    assert isinstance(result, Inference) and result.probabilities.tolist() == [[10]]


def test_a_call_holds_at_most_max_rows() -> None:
    model = FakeModel()
    results = run(Batcher(4), model, rows(1, 1), rows(2, 2), rows(3, 3), rows(4))
    assert model.calls == [4, 3]
    assert [r.probabilities.ravel().tolist() for r in results] == [[2, 2], [4, 4], [6, 6], [8]]


def test_a_failing_shared_call_is_retried_request_by_request() -> None:
    model = FakeModel()
    good, bad, other = run(Batcher(100), model, rows(1), rows(-1), rows(2))
    assert model.calls == [3, 1, 1, 1]
    assert isinstance(bad, ValueError)
    assert isinstance(good, Inference) and good.probabilities.tolist() == [[2]]
    assert isinstance(other, Inference) and other.probabilities.tolist() == [[4]]


def test_a_cancelled_request_is_left_out() -> None:
    model = FakeModel()

    async def main() -> list[Any]:
        batcher = Batcher(100)
        first = batcher.infer(model, rows(1))
        second = batcher.infer(model, rows(2))
        first.cancel()
        done = await second
        return [first.cancelled(), done.probabilities.tolist()]

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
        assert isinstance(result, Inference)
        np.testing.assert_allclose(result.probabilities, model.predict_proba(request), rtol=1e-6)
