"""Download progress as plain log lines: bytes, percent, rate, ETA (no terminal codes).

`kubectl logs` and `docker compose logs` show every line, so the loader prints one at a
steady cadence (LOADER_PROGRESS_SECONDS) instead of redrawing a bar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIB = 1 << 20


class Progress:
    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        done = self.done
        rate = done / elapsed
        percent = 100.0 * done / self.total if self.total else 100.0
        if done >= self.total:
            eta = "0 s"
        elif rate > 0:
            eta = f"{(self.total - done) / rate:.0f} s"
        else:
            eta = "unknown"
        return (
            f"{done / MIB:.1f}/{self.total / MIB:.1f} MiB ({percent:.0f}%), "
            f"{rate / 1e6:.1f} MB/s, ETA {eta}"
        )
