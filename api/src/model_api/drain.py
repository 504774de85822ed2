"""Graceful drain on SIGTERM: not ready first, closed later.

uvicorn stops listening the moment SIGTERM arrives. Clients that have not yet learnt the
pod is going (a Service endpoint is removed asynchronously; a compose client has no such
signal at all) then connect to a closed port, or sit in the listen backlog and get reset.
With API_DRAIN_SECONDS > 0 the first SIGTERM (or SIGINT) instead:

1. turns /ready and /v2/health/ready to 503, so probes and balancers stop sending;
2. keeps serving everything that still arrives for API_DRAIN_SECONDS;
3. then hands the signal to uvicorn, which closes the listener and lets in-flight
   requests finish (timeout_graceful_shutdown). A second signal skips the wait.

uvicorn installs its own handler (signal.signal) before the application's lifespan
starts, in each worker process; `chain_sigterm` wraps that handler, so the same code
works with one worker and with several. Signals are per process, and so is this state.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self._forwarded = False
        self._previous: dict[int, Any] = {}

    def chain_sigterm(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Wrap the process's SIGTERM/SIGINT handlers; returns the undo. A no-op off the
        main thread (an in-process test client) or with API_DRAIN_SECONDS=0."""
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(sig: int, frame: FrameType | None) -> None:
            previous = self._previous[sig]
            if self.draining or not callable(previous):
                self._forward(previous, sig)  # a second signal: stop now
                return
            self.draining = True
            # Only thread-safe calls from a signal handler: the loop runs this one later,
            # in an empty context: the signal interrupts whichever request was running,
            # and the drain's lines must not carry that request's id.
            loop.call_soon_threadsafe(
                self._start, previous, sig, loop, context=contextvars.Context()
            )

        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, handler)

        def undo() -> None:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)

        return undo

    def _start(self, previous: Any, sig: int, loop: asyncio.AbstractEventLoop) -> None:
        log.info(
            "%s: draining; /ready answers 503, still serving for API_DRAIN_SECONDS=%g",
            signal.Signals(sig).name,
            self.seconds,
        )
        loop.call_later(self.seconds, self._forward, previous, sig)

    def _forward(self, previous: Any, sig: int) -> None:
        if not self._forwarded and callable(previous):
            self._forwarded = True
            previous(sig, None)
