"""Steady traffic through the stack's front door, every answer recorded.

CLIENTS threads, each with its own keep-alive connection (an httpx.Client), POST /predict
at RATE requests per second each (a steady, moderate rate: on a busy 2-core machine the
test measures the stack's behaviour, not its capacity). An answer is a success only as a
200 with exactly one X-Model-Version; anything else (another status, a reset, a timeout)
is a failure, kept with what it was.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from tests.conftest import SETOSA


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic()
    took: float
    version: str | None  # X-Model-Version of a 200; None: a failure
    failure: str | None = None


class Traffic:
    def __init__(self, url: str, clients: int = 4, rate: float = 25, timeout: float = 10) -> None:
        self.url, self.rate, self.timeout = url, rate, timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._halt.set()
        for thread in self._threads:
            thread.join()
        return self.answers

    def wait_for(self, count: int, timeout: float = 60, sent_since: float | None = None) -> None:
        """Until `count` more answers came (the traffic is flowing); with `sent_since`,
        until `count` answers to requests sent at or after that time.monotonic() (those
        in flight at that moment, sent before, do not count)."""
        deadline = time.monotonic() + timeout
        already = len(self.answers) if sent_since is None else 0
        while self._answered(sent_since) - already < count:
            assert time.monotonic() < deadline, f"fewer than {count} answers in {timeout} s"
            time.sleep(0.05)

    def _answered(self, sent_since: float | None) -> int:
        if sent_since is None:
            return len(self.answers)
        return sum(a.sent >= sent_since for a in self.answers)

    def _client(self) -> None:
        interval = 1 / self.rate
        with httpx.Client(timeout=self.timeout) as client:
            next_at = time.monotonic()
            while not self._halt.is_set():
                sent = time.monotonic()
                version = failure = None
                try:
                    response = client.post(f"{self.url}/predict", json={"data": [SETOSA]})
                    versions = response.headers.get_list("x-model-version")
                    if response.status_code != 200:
                        failure = f"{response.status_code} {response.text[:200]}"
                    elif len(versions) != 1:
                        failure = f"X-Model-Version: {versions}"
                    else:
                        version = versions[0]
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.answers.append(Answer(sent, time.monotonic() - sent, version, failure))
                next_at = max(next_at + interval, time.monotonic() - interval)
                self._halt.wait(max(0.0, next_at - time.monotonic()))


def summary(answers: list[Answer]) -> str:
    failures = Counter(a.failure for a in answers if a.failure)
    versions = Counter(a.version for a in answers if a.version)
    slowest = max((a.took for a in answers), default=0)
    return (
        f"{len(answers)} requests, versions {dict(versions)}, {sum(failures.values())} failed "
        f"{dict(failures) if failures else ''}, slowest {slowest:.3f} s"
    )
