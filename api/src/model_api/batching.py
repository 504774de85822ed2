"""INFERENCE_MODE=batch: the requests waiting in one event-loop turn share one inference.

Under concurrent load a worker's event loop picks up several requests at a time. Each
validates its own body, then hands its rows here and waits; once every request of that
turn has done so (`call_soon` runs after them), their rows run as one `session.run` and
each gets its own slice back. Nothing waits for a batch to fill: a request alone is run
alone, in the next turn. For a small model most of an inference is fixed cost per call
(more so with the CPU caches cold from serving HTTP), so sharing calls is most of the
gain; for larger models a batch also uses the model's own vectorised kernels.

The batcher records the inference metrics: the rows of every call, and per request its
rows and the time of the call that served it. A request awaits the future `infer`
returns, which resolves to its probabilities.

A batch holds at most MAX_BATCH_SIZE rows; requests that do not fit run in the next
call. If a shared call fails, its requests are run one by one, so one bad request cannot
fail the others.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model_api.model import OnnxModel


class Recorder(Protocol):
    """What the batcher reports to (model_api.metrics.Metrics)."""

    def record_call(self, rows: int) -> None: ...

    def record_inference(self, seconds: float, rows: int) -> None: ...


@dataclass(slots=True)
class _Waiting:
    model: OnnxModel
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]


class Batcher:
    def __init__(self, max_rows: int, metrics: Recorder | None = None) -> None:
        self.max_rows = max_rows
        self.metrics = metrics
        self._waiting: list[_Waiting] = []
        # The loop of the waiting requests: looked up once per batch, not per request
        # (get_running_loop() makes a getpid() system call).
        self._loop: asyncio.AbstractEventLoop | None = None

    def infer(self, model: OnnxModel, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        if not self._waiting or self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._run)
        future: asyncio.Future[np.ndarray] = self._loop.create_future()
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
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        started = time.perf_counter()
        try:
            probabilities = batch[0].model.predict_proba(np.concatenate([w.rows for w in batch]))
        except Exception:
            for w in batch:
                self._run_alone(w)
            return
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.record_call(rows)
        start = 0
        for w in batch:
            end = start + len(w.rows)
            w.future.set_result(probabilities[start:end])
            if self.metrics is not None:
                self.metrics.record_inference(seconds, end - start)
            start = end

    def _run_alone(self, w: _Waiting) -> None:
        started = time.perf_counter()
        try:
            probabilities = w.model.predict_proba(w.rows)
        except Exception as exc:
            w.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        w.future.set_result(probabilities)
        if self.metrics is not None:
            self.metrics.record_call(len(w.rows))
            self.metrics.record_inference(seconds, len(w.rows))
