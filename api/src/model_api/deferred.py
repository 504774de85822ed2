"""Per-request bookkeeping done in bulk: a request appends a tuple, and the metrics and
access lines are brought up to date a little later, many requests at a time.

Done one request at a time, the metrics (a counter and three histograms, each with its
lock) and the access line cost a small model's request as much as its inference; in a
loop over a few hundred tuples they cost a fraction of that, with the CPU caches warm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Record = TypeVar("Record", bound=tuple[Any, ...])

# How late the bookkeeping may run: well within a scrape interval or a log reader's wait.
FLUSH_SECONDS = 0.05
# Applied at once past this many records, to bound the memory between two flushes.
MAX_PENDING = 4096


class Deferred(Generic[Record]):
    """Records kept in arrival order and handed to `apply` in bulk, at most FLUSH_SECONDS
    after the first one (on the event loop's thread), or at `flush()`."""

    def __init__(self, apply: Callable[[list[Record]], None]) -> None:
        self._apply = apply
        self._pending: list[Record] = []
        self._scheduled = False

    def add(self, record: Record) -> None:
        self._pending.append(record)
        if len(self._pending) >= MAX_PENDING:
            self.flush()
        elif not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): no later, only now
            self.flush()
            return
        self._scheduled = True
        loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if pending:
            self._apply(pending)
