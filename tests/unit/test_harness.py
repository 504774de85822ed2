"""model_load_harness's waits: they return what the condition gave, fail at the deadline
with what was awaited, and stop at once when the process that should answer died."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_load_harness.api import launch_api
from model_load_harness.machine import describe_machine
from model_load_harness.ports import free_port
from model_load_harness.waiting import (
    ProcessExited,
    WaitTimeout,
    http_status,
    wait_http,
    wait_until,
)


def test_wait_until_returns_the_first_truthy_result() -> None:
    calls = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(calls), "the fourth call", timeout=10, interval=0) == "ready"


def test_wait_until_fails_at_the_deadline_naming_what_it_awaited() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=re.escape("the moon: not within 0.2 s")):
        wait_until(lambda: None, "the moon", timeout=0.2, interval=0.01)
    assert time.monotonic() - started >= 0.2


def test_wait_until_stops_as_soon_as_the_process_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(ProcessExited, match="exited with 3 before the server"):
        wait_until(lambda: None, "the server", timeout=600, process=process)


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    """A loopback server answering each GET with the next status of a list (the last
    one from then on)."""
    statuses: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.pop(0) if len(statuses) > 1 else statuses[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/ready", statuses
    httpd.shutdown()
    httpd.server_close()


def test_wait_http_waits_through_503s_for_the_200(server: tuple[str, list[int]]) -> None:
    url, statuses = server
    statuses += [503, 503, 200]
    assert wait_http(url, timeout=30, interval=0) == 200
    assert statuses == [200]


def test_wait_http_takes_any_status_its_check_accepts(server: tuple[str, list[int]]) -> None:
    url, statuses = server
    statuses += [502, 404]
    assert wait_http(url, timeout=30, interval=0, ok=lambda status: status < 500) == 404


def test_wait_http_times_out_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}/ready"
    assert http_status(url) is None
    with pytest.raises(WaitTimeout, match=re.escape(f"{url} answering")):
        wait_http(url, timeout=0.3)


def test_the_machine_line_names_cores_python_extras_and_load() -> None:
    line = describe_machine("wrk 4.2.0", "")
    assert " CPUs, " in line and "; Python 3." in line and "; wrk 4.2.0; " in line
    assert line.split("; ")[-1].startswith("load average ")
    assert "load average" not in describe_machine(load=False)


def test_an_api_that_cannot_start_fails_with_its_own_words(tmp_path: Path) -> None:
    """launch_api on a broken model: the error carries the API's last lines (the reason),
    not only its exit code."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ProcessExited, match=r"exited with 3 .*it said: .*model\.onnx"):
        launch_api(tmp_path / "m" / "1", MODEL_WAIT_SECONDS="0")
