"""model_api.batching: requests are stacked where the model allows, and only there."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from model_api.batching import Batcher
from model_api.datatypes import DATATYPES
from model_api.errors import ApiError
from model_api.signature import Signature, TensorSpec

FP32 = DATATYPES["FP32"]


class FakeModel:
    """`run` doubles `x` into `y` (and sums it into `total`), recording the rows of every
    call and its thread; rows holding a negative value make it fail, as a model may on
    input it cannot take. `first` fixes the first dimension (None: open)."""

    def __init__(self, first: int | None = None, width: int = -1, delay: float = 0.0) -> None:
        dim = -1 if first is None else first
        self.signature = Signature(
            inputs=(TensorSpec("x", FP32, (dim, width)),),
            outputs=(TensorSpec("y", FP32, (dim, width)), TensorSpec("total", FP32, (dim,))),
        )
        self.batches = self.signature.batchable
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.delay = delay
        self.wrong_rows = False

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        self.threads.add(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        if (x < 0).any():
            raise ValueError("negative input")
        answers = {"y": x * 2, "total": x.sum(axis=1)}
        if self.wrong_rows:
            answers = {"y": x[:1] * 2, "total": x.sum(axis=1)[:1]}
        return [answers[name] for name in outputs]


class Recorded:
    """The metrics the batcher reports: per call, its time and its rows."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def record_call(self, seconds: float, rows: int) -> None:
        assert seconds >= 0
        self.calls.append(rows)


def rows(*values: float, width: int = 1) -> np.ndarray:
    return np.array([[v] * width for v in values], dtype=np.float32)


def request(
    batcher: Batcher, x: np.ndarray, outputs: tuple[str, ...] = ("y",)
) -> asyncio.Future[list[np.ndarray]]:
    return batcher.infer({"x": x}, outputs, len(x))


def run_all(batcher: Batcher, *xs: np.ndarray) -> list[Any]:
    async def main() -> list[Any]:
        return await asyncio.gather(*(request(batcher, x) for x in xs), return_exceptions=True)

    return asyncio.run(main())


async def running(model: FakeModel, calls: int = 1) -> None:
    """Until the model has started `calls` calls (in its thread): however slow the
    machine, what is asked next arrives while that call runs."""
    deadline = time.monotonic() + 30
    while len(model.calls) < calls and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert len(model.calls) >= calls, "the call never started"


def ys(results: list[Any]) -> list[list[float]]:
    return [r[0].ravel().tolist() for r in results]


def test_requests_of_one_turn_share_one_call_and_get_their_own_rows() -> None:
    model, metrics = FakeModel(), Recorded()
    results = run_all(Batcher(model, 100, metrics=metrics), rows(1), rows(2, 3), rows(4))  # type: ignore[arg-type]
    assert model.calls == [4] and metrics.calls == [4]
    assert ys(results) == [[2], [4, 6], [8]]


def test_a_request_alone_runs_alone_without_waiting_for_company() -> None:
    model, metrics = FakeModel(), Recorded()
    (result,) = run_all(Batcher(model, 100, metrics=metrics), rows(5))  # type: ignore[arg-type]
    assert model.calls == [1] and metrics.calls == [1]
    assert result[0].tolist() == [[10]]


def test_a_call_holds_at_most_max_rows_and_a_request_is_never_split() -> None:
    model = FakeModel()
    results = run_all(Batcher(model, 4), rows(1, 1), rows(2, 2), rows(3, 3), rows(4))  # type: ignore[arg-type]
    assert model.calls == [4, 3]
    assert ys(results) == [[2, 2], [4, 4], [6, 6], [8]]
    big = FakeModel()
    assert ys(run_all(Batcher(big, 2), rows(1, 2, 3))) == [[2, 4, 6]]  # type: ignore[arg-type]
    assert big.calls == [3]


def test_a_model_with_a_fixed_first_dimension_serves_requests_one_by_one() -> None:
    model = FakeModel(first=1)
    batcher = Batcher(model, 100)  # type: ignore[arg-type]
    assert not batcher.stacking
    results = run_all(batcher, rows(1), rows(2), rows(3))
    assert model.calls == [1, 1, 1]
    assert ys(results) == [[2], [4], [6]]


def test_max_rows_of_zero_or_one_turns_stacking_off() -> None:
    for max_rows in (0, 1):
        model = FakeModel()
        run_all(Batcher(model, max_rows), rows(1), rows(2))  # type: ignore[arg-type]
        assert model.calls == [1, 1]


def test_requests_of_other_non_batch_dimensions_are_not_stacked() -> None:
    model = FakeModel()
    results = run_all(
        Batcher(model, 100),  # type: ignore[arg-type]
        rows(1, width=2),
        rows(2, width=3),
        rows(3, width=2),
    )
    assert sorted(model.calls) == [1, 2]  # the two of width 2 together, the other alone
    assert ys(results) == [[2, 2], [4, 4, 4], [6, 6]]


def test_requests_for_other_outputs_are_not_stacked() -> None:
    model = FakeModel()
    batcher = Batcher(model, 100)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        return await asyncio.gather(
            request(batcher, rows(1), ("y",)),
            request(batcher, rows(2), ("total",)),
            request(batcher, rows(3), ("y",)),
        )

    results = asyncio.run(main())
    assert sorted(model.calls) == [1, 2]
    assert [r[0].ravel().tolist() for r in results] == [[2], [2], [6]]


def test_a_failing_shared_call_fails_only_the_request_at_fault() -> None:
    model = FakeModel()
    results = run_all(Batcher(model, 100), rows(1), rows(-1), rows(3))  # type: ignore[arg-type]
    assert model.calls == [3, 1, 1, 1]  # the shared call, then each alone
    assert ys([results[0], results[2]]) == [[2], [6]]
    assert isinstance(results[1], ApiError) and "negative input" in results[1].message


def test_a_model_answering_other_rows_than_asked_is_no_longer_stacked() -> None:
    model = FakeModel()
    model.wrong_rows = True
    batcher = Batcher(model, 100)  # type: ignore[arg-type]
    run_all(batcher, rows(1), rows(2))
    assert not batcher.stacking
    assert model.calls == [2, 1, 1]


def test_a_request_waits_for_company_at_most_max_delay() -> None:
    model = FakeModel()
    batcher = Batcher(model, 100, max_delay=0.5)  # type: ignore[arg-type]

    async def main() -> float:
        started = time.perf_counter()
        first = request(batcher, rows(1))
        await asyncio.sleep(0)  # a later turn of the loop, within the delay: joins the first
        second = request(batcher, rows(2))
        await asyncio.gather(first, second)
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    assert model.calls == [2]
    assert 0.5 <= elapsed < 10  # waited the delay, and not forever


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    model = FakeModel()
    batcher = Batcher(model, 2, max_delay=60)  # type: ignore[arg-type]

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(request(batcher, rows(1)), request(batcher, rows(2)))
        return time.perf_counter() - started

    assert asyncio.run(main()) < 30
    assert model.calls == [2]


def test_in_a_thread_requests_arriving_during_a_call_form_the_next_one() -> None:
    model = FakeModel(delay=0.3)
    batcher = Batcher(model, 100, threads=1)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        first = request(batcher, rows(1))
        await running(model)  # the first call is running (0.3 s) in the thread
        later = [request(batcher, rows(v)) for v in (2, 3, 4)]
        return await asyncio.gather(first, *later)

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    assert model.calls == [1, 3]
    assert ys(results) == [[2], [4], [6], [8]]
    assert threading.get_ident() not in model.threads


@pytest.mark.parametrize("threads", [0, 1])
def test_a_cancelled_request_is_dropped_and_the_others_answered(threads: int) -> None:
    model = FakeModel(delay=0.2 if threads else 0.0)
    batcher = Batcher(model, 100, threads=threads)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        busy = request(batcher, rows(1)) if threads else None  # keeps the thread busy
        if busy:
            await running(model)
        gone = request(batcher, rows(2))
        kept = request(batcher, rows(3))
        gone.cancel()
        return await asyncio.gather(kept, *([busy] if busy else []))

    try:
        assert ys(asyncio.run(main()))[0] == [6]
    finally:
        batcher.close()
    assert model.calls == ([1, 1] if threads else [1])


def test_in_a_thread_the_next_call_does_not_wait_for_the_event_loop() -> None:
    """While the loop is busy (here: blocked), the thread goes on from one call to the
    next with the requests that arrived during the last one."""
    model = FakeModel(delay=0.2)
    batcher = Batcher(model, 100, threads=1)  # type: ignore[arg-type]

    async def main() -> list[int]:
        first = request(batcher, rows(1))
        await running(model)  # the first call is running in the thread
        later = [request(batcher, rows(v)) for v in (2, 3)]
        await asyncio.sleep(0)  # the end of their turn: handed to the thread
        deadline = time.monotonic() + 30
        while len(model.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the loop: no callback of the loop runs meanwhile
        seen = list(model.calls)
        assert ys(await asyncio.gather(first, *later)) == [[2], [4], [6]]
        return seen

    try:
        assert asyncio.run(main()) == [1, 2]
    finally:
        batcher.close()


def test_in_a_thread_the_requests_of_one_turn_reach_an_idle_thread_together() -> None:
    """The loop may let the GIL go between two requests of one turn (it does between two
    reads): the idle thread still gets the turn's requests in one call, not the first
    alone."""
    model = FakeModel()
    batcher = Batcher(model, 100, threads=1)  # type: ignore[arg-type]

    async def main() -> list[Any]:
        futures = []
        for v in (1, 2, 3):
            futures.append(request(batcher, rows(v)))
            time.sleep(0.05)  # lets the GIL go, within the turn
        return await asyncio.gather(*futures)

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    assert model.calls == [3]
    assert ys(results) == [[2], [4], [6]]


@pytest.mark.parametrize("threads", [0, 1])
def test_a_call_failing_outside_the_model_fails_its_requests_and_not_the_next(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = FakeModel(delay=0.2 if threads else 0.0)
    batcher = Batcher(model, 100, threads=threads)  # type: ignore[arg-type]

    def no_memory(*args: Any, **kwargs: Any) -> np.ndarray:
        raise MemoryError("cannot stack")

    async def main() -> tuple[list[Any], list[Any]]:
        with monkeypatch.context() as patch:
            patch.setattr(np, "concatenate", no_memory)
            if threads:  # the thread is busy while the two arrive: they share its next call
                busy = request(batcher, rows(0))
                await running(model)
            failed = await asyncio.wait_for(
                asyncio.gather(
                    request(batcher, rows(1)), request(batcher, rows(2)), return_exceptions=True
                ),
                30,
            )
            if threads:
                await busy
        answered = await asyncio.wait_for(asyncio.gather(request(batcher, rows(3))), 30)
        return failed, answered

    try:
        failed, answered = asyncio.run(main())
    finally:
        batcher.close()
    assert all(isinstance(f, ApiError) and f.status_code == 500 for f in failed)
    assert "cannot stack" in failed[0].message
    assert ys(answered) == [[6]]
