"""Runs a model's inference calls, stacking concurrent requests where the model allows.

Requests are stacked along the first dimension only when the model leaves that dimension
open on every input and output (`Signature.batchable`) and its warm-up showed that
stacked requests get the answers they get alone (`OnnxModel.batches`), only with
requests whose other
dimensions, datatypes and requested outputs are the same, and only up to
`max_rows` rows per call. A model with a fixed first dimension (e.g. [1, 4]) gets one
call per request, in arrival order. A request is never split, and never waits for a
batch to fill beyond `max_delay` (0: it waits for nothing; Triton's dynamic batcher's
max_queue_delay).

Where the calls run:
- on the event loop (`threads=0`, small models): the requests that arrive in one
  turn of the loop share a call, run right after that turn. A thread hand-off would cost
  more than such a model's inference.
- in threads of their own (`threads` >= 1, models whose inference takes milliseconds):
  the loop keeps reading requests while calls run, up to `threads` calls at once on the
  one session (Triton's model instances, without a copy of the model each). The loop
  hands the threads the requests of each turn together, at the turn's end. A thread
  takes its next call itself as soon as its last one is done, with the requests handed
  over meanwhile, and hands the answers back to the loop in one step per call: the
  model never waits for a turn of the loop, which may be busy reading and answering
  requests. ONNX Runtime releases the GIL while it runs.

If a stacked call fails, or answers with a first dimension that is not the sum of the
requests' rows, its requests are run one by one (so one bad request fails alone), and
in the second case the model is not stacked again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from model_api.errors import translate_inference_error
from model_api.model import OnnxModel

log = logging.getLogger(__name__)

Arrays = list[np.ndarray]


class Recorder(Protocol):
    """What the batcher reports to (model_api.metrics.Metrics)."""

    def record_call(self, seconds: float, rows: int) -> None: ...


@dataclass(slots=True)
class _Waiting:
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    key: Any  # requests with equal keys may share a call; a unique one: it runs alone
    since: float
    future: asyncio.Future[Arrays]


@dataclass(slots=True)
class _Call:
    batch: list[_Waiting]
    rows: int
    results: list[Arrays | BaseException] = field(default_factory=list)
    seconds: float = 0.0


class Batcher:
    def __init__(
        self,
        model: OnnxModel,
        max_rows: int,
        max_delay: float = 0.0,
        threads: int = 0,
        metrics: Recorder | None = None,
    ) -> None:
        self.model = model
        self.stacking = model.batches and max_rows > 1
        self.max_rows = max(1, max_rows)
        self.max_delay = max_delay
        self.metrics = metrics
        self.threads = threads
        self._waiting: list[_Waiting] = []
        self._arriving: list[_Waiting] = []  # this turn of the loop's, for the threads
        self._ready = threading.Condition(threading.Lock())  # guards _waiting; wakes threads
        self._idle = 0  # threads waiting for requests
        self._started = False
        self._closed = False
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon = False  # the timer is a call_soon, not a wait
        self._loop: asyncio.AbstractEventLoop | None = None

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...], rows: int | None
    ) -> asyncio.Future[Arrays]:
        """The outputs, in order, for one request: a future of the loop it runs on."""
        loop = self._loop
        if loop is None or not self._waiting:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Arrays] = loop.create_future()
        if self.stacking and rows is not None:
            key: Any = (outputs, *((n, a.shape[1:], a.dtype) for n, a in inputs.items()))
        else:
            key = future
        waiting = _Waiting(inputs, outputs, rows or 1, key, time.monotonic(), future)
        if not self.threads:
            self._waiting.append(waiting)
            self._schedule(loop)
            return future
        self._arriving.append(waiting)
        if len(self._arriving) == 1:
            loop.call_soon(self._hand_over)
        if not self._started:
            self._started = True
            for i in range(self.threads):
                threading.Thread(target=self._serve, name=f"inference-{i}", daemon=True).start()
        return future

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    # -- in threads of their own ---------------------------------------------------------
    def _hand_over(self) -> None:
        """The requests that arrived in one turn of the loop go to the threads together.
        One by one, an idle thread would take the first alone whenever the loop lets the
        GIL go between two of them (it does between two reads), and the others would wait
        for the next call: on a machine of few cores, calls of a few rows each instead of
        one of all (measured on mlp_bench, 16 clients: 5-12 rows a call instead of 15)."""
        arrived, self._arriving = self._arriving, []
        with self._ready:
            self._waiting.extend(arrived)
            if self._idle:
                self._ready.notify()

    def _serve(self) -> None:
        """Take the next call as soon as the last one is done: no turn of the loop between."""
        while True:
            with self._ready:
                call = self._due()
                while call is None:
                    if self._closed:
                        return
                    self._idle += 1
                    self._ready.wait(self._wait(time.monotonic()) if self._waiting else None)
                    self._idle -= 1
                    call = self._due()
            self._run(call)
            try:
                call.batch[0].future.get_loop().call_soon_threadsafe(self._finish, call)
            except RuntimeError:  # the loop is closed: nobody waits for these answers
                return

    def _due(self) -> _Call | None:
        self._waiting = [w for w in self._waiting if not w.future.done()]  # done: cancelled
        if not self._waiting or self._wait(time.monotonic()) > 0:
            return None
        return self._take()

    # -- scheduling --------------------------------------------------------------------
    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the next call soon, or when its oldest request has waited max_delay."""
        if not self._waiting:
            return
        wait = self._wait(time.monotonic())
        if self._timer is not None:
            if wait > 0 or self._soon:
                return
            self._timer.cancel()  # the batch filled before the delay ran out
        self._soon = wait <= 0
        if self._soon:
            self._timer = loop.call_soon(self._next)
        else:
            self._timer = loop.call_later(wait, self._next)

    def _wait(self, now: float) -> float:
        """How long the oldest request may still wait for others to fill its batch."""
        if self.max_delay <= 0 or not self.stacking:
            return 0.0
        first = self._waiting[0]
        rows = sum(w.rows for w in self._waiting if w.key == first.key)
        if rows >= self.max_rows:
            return 0.0
        return first.since + self.max_delay - now

    def _next(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        self._waiting = [w for w in self._waiting if not w.future.done()]  # done: cancelled
        if not self._waiting:
            return
        call = self._take()
        self._run(call)
        self._finish(call)
        self._schedule(loop)

    def _take(self) -> _Call:
        """The first waiting request and those that may share its call, in order."""
        first = self._waiting[0]
        batch, rows, rest = [first], first.rows, []
        for w in self._waiting[1:]:
            if w.key == first.key and rows + w.rows <= self.max_rows:
                batch.append(w)
                rows += w.rows
            else:
                rest.append(w)
        self._waiting = rest
        return _Call(batch, rows)

    # -- the call (on the loop, or in the thread) ---------------------------------------
    def _run(self, call: _Call) -> None:
        started = time.perf_counter()
        batch = call.batch
        try:
            stacked = self._stacked(call) if len(batch) > 1 else None
            call.results = stacked or [self._alone(w) for w in batch]
        except Exception as exc:  # not the model's (e.g. out of memory stacking): all fail
            log.error("inference failed", exc_info=exc)
            call.results = [translate_inference_error(exc) for _ in batch]
        call.seconds = time.perf_counter() - started

    def _stacked(self, call: _Call) -> list[Arrays | BaseException] | None:
        first = call.batch[0]
        inputs = {n: np.concatenate([w.inputs[n] for w in call.batch]) for n in first.inputs}
        try:
            outputs = self.model.run(inputs, first.outputs)
        except Exception:
            return None  # one of them may be at fault: each alone
        if any(o.ndim == 0 or o.shape[0] != call.rows for o in outputs):
            log.warning(
                "the model answered %s rows for a batch of %d: requests are no longer stacked",
                [o.shape[:1] for o in outputs],
                call.rows,
            )
            self.stacking = False
            return None
        results: list[Arrays | BaseException] = []
        start = 0
        for w in call.batch:
            end = start + w.rows
            results.append([o[start:end] for o in outputs])
            start = end
        return results

    def _alone(self, w: _Waiting) -> Arrays | BaseException:
        try:
            return self.model.run(w.inputs, w.outputs)
        except Exception as exc:  # onnxruntime's errors: the request's answer
            error = translate_inference_error(exc)
            if error.status_code >= 500:
                log.error("inference failed", exc_info=exc)
            return error

    def _finish(self, call: _Call) -> None:
        """Hand each request its result (on the loop)."""
        if self.metrics is not None:
            self.metrics.record_call(call.seconds, call.rows)
        for w, result in zip(call.batch, call.results, strict=True):
            if w.future.done():
                continue
            if isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)
