"""INFERENCE_MODE=batch: the requests waiting in one event-loop turn share one inference.

Under concurrent load a worker's event loop picks up several requests at a time. Each
validates its own body, then hands its rows here and waits; once every request of that
turn has done so (`call_soon` runs after them), their rows run as one `session.run` and
each gets its own slice back. Nothing waits for a batch to fill: a request alone is run
alone, in the next turn. For a small model most of an inference is fixed cost per call
(more so with the CPU caches cold from serving HTTP), so sharing calls is most of the
gain; for larger models a batch also uses the model's own vectorised kernels.

A batch holds at most MAX_BATCH_SIZE rows; requests that do not fit run in the next
call. If a shared call fails, its requests are run one by one, so one bad request cannot
fail the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from model_api.model import OnnxModel


@dataclass(frozen=True, slots=True)
class Inference:
    probabilities: np.ndarray
    seconds: float  # of the call that computed them (shared with the rest of its batch)
    batch_rows: int  # rows in that call


@dataclass(slots=True)
class _Waiting:
    model: OnnxModel
    rows: np.ndarray
    future: asyncio.Future[Inference]


class Batcher:
    def __init__(self, max_rows: int, observe_rows: Callable[[int], None] | None = None) -> None:
        self.max_rows = max_rows
        self.observe_rows = observe_rows  # called with the rows of every call
        self._waiting: list[_Waiting] = []

    def infer(self, model: OnnxModel, rows: np.ndarray) -> asyncio.Future[Inference]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Inference] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._run)
        self._waiting.append(_Waiting(model, rows, future))
        return future

    def _run(self) -> None:
        waiting = [w for w in self._waiting if not w.future.done()]  # done: cancelled
        batch, rows = [], 0
        for w in waiting:
            if batch and (rows + len(w.rows) > self.max_rows or w.model is not batch[0].model):
                break
            batch.append(w)
            rows += len(w.rows)
        self._waiting = waiting[len(batch) :]
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._run)
        if not batch:
            return
        if self.observe_rows is not None:
            self.observe_rows(rows)
        if len(batch) == 1:
            _run_alone(batch[0])
            return
        started = time.perf_counter()
        try:
            probabilities = batch[0].model.predict_proba(np.concatenate([w.rows for w in batch]))
        except Exception:
            for w in batch:
                _run_alone(w)
            return
        seconds = time.perf_counter() - started
        start = 0
        for w in batch:
            end = start + len(w.rows)
            w.future.set_result(Inference(probabilities[start:end], seconds, rows))
            start = end


def _run_alone(w: _Waiting) -> None:
    started = time.perf_counter()
    try:
        probabilities = w.model.predict_proba(w.rows)
    except Exception as exc:
        w.future.set_exception(exc)
        return
    w.future.set_result(Inference(probabilities, time.perf_counter() - started, len(w.rows)))
