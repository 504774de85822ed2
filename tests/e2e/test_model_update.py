"""A model update and its rollback on the running compose stack, with traffic flowing:
which version answered each request, before, during and after `up -d --wait`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.conftest import SETOSA
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.docker


@dataclass(frozen=True)
class Answer:
    sent: float
    took: float
    version: str | None  # X-Model-Version of a 200, None for a failure


class Traffic(threading.Thread):
    """One client posting /predict back to back, recording every answer's version."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[Answer] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._halt.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}/predict", json={"data": [SETOSA]})
                    version = (
                        response.headers.get("x-model-version", "missing")
                        if response.status_code == 200
                        else None
                    )
                except httpx.HTTPError:
                    version = None
                self.answers.append(Answer(sent, time.monotonic() - sent, version))
                if version is None:
                    time.sleep(0.02)

    def stop(self) -> list[Answer]:
        self._halt.set()
        self.join()
        return self.answers


def switch(stack: Stack, model_uri: str, old: str, new: str) -> None:
    """`up -d --wait` to model_uri under traffic; every answer once it returned is new."""
    traffic = Traffic(stack.api)
    traffic.start()
    time.sleep(1)
    began = time.monotonic()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "120", MODEL_URI=model_uri)
    returned = time.monotonic()
    time.sleep(2)
    answers = traffic.stop()

    before = [a for a in answers if a.sent < began]
    during = [a for a in answers if began <= a.sent < returned]
    after = [a for a in answers if a.sent >= returned]
    failed = [a for a in answers if a.version is None]
    old_last = max(a.sent + a.took for a in answers if a.version == old)
    new_first = min(a.sent + a.took for a in answers if a.version == new)
    print(
        f"\n{old} -> {new}: `up -d --wait` took {returned - began:.1f} s; answers before "
        f"{dict(Counter(a.version for a in before))}, during "
        f"{dict(Counter(a.version for a in during))}, after "
        f"{dict(Counter(a.version for a in after))}; no answer for "
        f"{new_first - old_last:.2f} s; {len(failed)} requests failed, slowest failure "
        f"{max((a.took for a in failed), default=0):.3f} s"
    )
    assert {a.version for a in before} == {old}
    assert len(after) >= 20 and {a.version for a in after} == {new}, Counter(
        a.version for a in after
    )
    versions = [a.version for a in answers if a.version is not None]
    assert versions == sorted(versions, key=lambda v: v == new), "an old answer after a new one"
    assert max((a.took for a in failed), default=0) < 5, "a request hung during the switch"


def test_update_and_rollback_under_traffic(
    stack: Stack, tmp_path: Path, train_module: ModuleType
) -> None:
    train_module.export(tmp_path / "v2", svc_c=0.3)
    stack.publish(tmp_path / "v2", "gs://ml-models/iris_svc/v2/")

    switch(stack, "gs://ml-models/iris_svc/v2/", "v1", "v2")
    assert httpx.get(f"{stack.api}/ready").json()["model_version"] == "v2"
    switch(stack, "gs://ml-models/iris_svc/v1/", "v2", "v1")
    assert httpx.get(f"{stack.api}/ready").json()["model_version"] == "v1"
