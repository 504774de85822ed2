"""Hostile and careless clients against a real uvicorn process (`python -m model_api`),
over raw sockets where an HTTP library would refuse to misbehave: oversized and nested
bodies, huge batches, invalid UTF-8, wrong methods and paths, slow clients (slowloris),
more connections than API_LIMIT_CONCURRENCY, and the SIGTERM drain."""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_load_harness.api import ApiServer, launch_api, stop_api
from tests.conftest import SETOSA
from tests.integration.conftest import StartApi
from tests.integration.rawhttp import address, raw_request, read_all, read_one_response, status_of


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture(scope="module")
def api(loaded_model_dir: Path) -> Iterator[ApiServer]:
    server = launch_api(loaded_model_dir, LOG_LEVEL="WARNING", API_ACCESS_LOG="false")
    yield server
    stop_api(server)


# -- bodies ------------------------------------------------------------------------------
def test_a_declared_100_mb_body_gets_413_after_1_mb_without_the_rest(api: ApiServer) -> None:
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        sent = 0
        try:
            while sent < 1 << 20:
                sent += sock.send(b"[" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already answered and closed: as intended
        # The other 99 MB never come: only an early answer ends this read (a server
        # waiting for the rest would leave it to the socket's timeout: TimeoutError).
        answer = read_all(sock)
    assert status_of(answer) == 413, answer[:300]
    assert b"100000000 bytes exceeds MAX_BODY_BYTES=1048576" in answer
    assert b"connection: close" in answer.lower()


def test_a_chunked_body_is_cut_off_at_the_limit(api: ApiServer) -> None:
    """No Content-Length to judge by: the body is counted as it streams."""
    chunk = b"[" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))  # 1.25 MiB
    answer = raw_request(
        api,
        b"POST /predict HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n" + body,
    )
    assert status_of(answer) == 413 and b"exceeds MAX_BODY_BYTES=1048576" in answer


HOSTILE_BODIES = {
    "100k nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "100k nested arrays in data": b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "100k nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "invalid UTF-8": b'{"data": [[5.1, 3.5, 1.4, "\xff\xfe"]]}',
    "invalid UTF-8 key": b'{"d\xc3\x28ta": [[5.1, 3.5, 1.4, 0.2]]}',
    "lone surrogate": b'{"data": [[5.1, 3.5, 1.4, "\\ud800"]]}',
    "NaN": b'{"data": [[NaN, 3.5, 1.4, 0.2]]}',
    "1e999": b'{"data": [[1e999, 3.5, 1.4, 0.2]]}',
    "huge integer": b'{"data": [[' + b"9" * 5000 + b", 3.5, 1.4, 0.2]]}",
    "empty": b"",
    "null": b"null",
    "truncated": b'{"data": [[5.1, 3.5',
    "NUL bytes": b'{"data": [[5.1,\x00 3.5, 1.4, 0.2]]}',
    "10k columns": b'{"data": [[' + b"1.0, " * 9999 + b"1.0]]}",
}
POST_PATHS = ["/predict", "/predict/label", "/v2/models/iris_svc/infer"]


@pytest.mark.parametrize("path", POST_PATHS)
@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_4xx_with_a_message(api: ApiServer, path: str, name: str) -> None:
    body = HOSTILE_BODIES[name]
    answer = raw_request(
        api,
        b"POST %s HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(body), body),
    )
    status = status_of(answer)
    assert 400 <= status < 500, answer[:500]
    payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert payload.get("error") or payload.get("detail"), payload
    assert httpx.get(f"{api.url}/ready").status_code == 200  # and the process is fine


def test_a_10k_row_batch_is_422_at_the_default_limit(api: ApiServer) -> None:
    response = httpx.post(f"{api.url}/predict", json={"data": [SETOSA] * 10_000}, timeout=30)
    assert response.status_code == 422
    assert "MAX_BATCH_SIZE=1024" in response.json()["error"]


def test_a_10k_row_batch_is_served_when_max_batch_size_allows(
    loaded_model_dir: Path, start_api: StartApi
) -> None:
    big = start_api(loaded_model_dir, MAX_BATCH_SIZE="10000", LOG_LEVEL="WARNING")
    response = httpx.post(f"{big.url}/predict", json={"data": [SETOSA] * 10_000}, timeout=30)
    assert response.status_code == 200
    predictions = response.json()["prediction"]
    assert len(predictions) == 10_000 and predictions[0] == predictions[-1]


# -- request lines, headers, methods, paths -----------------------------------------------
BAD_REQUESTS = {
    "invalid UTF-8 in a header": b"GET /health HTTP/1.1\r\nHost: api\r\n"
    b"X-Request-Id: \xff\xfe\r\n\r\n",
    "invalid UTF-8 in the path": b"GET /pre\xffdict HTTP/1.1\r\nHost: api\r\n\r\n",
    "percent-encoded invalid UTF-8": b"GET /predict/%ff%fe HTTP/1.1\r\nHost: api\r\n\r\n",
    "invalid UTF-8 in the query": b"GET /health?x=%ff HTTP/1.1\r\nHost: api\r\n\r\n",
    "invalid UTF-8 content-type": b"POST /predict HTTP/1.1\r\nHost: api\r\n"
    b"Content-Type: application/j\xffson\r\nContent-Length: 2\r\n\r\n{}",
    "NUL in the path": b"GET /pred%00ict HTTP/1.1\r\nHost: api\r\n\r\n",
    "dot segments": b"GET /../../etc/passwd HTTP/1.1\r\nHost: api\r\n\r\n",
    "8 KiB path": b"GET /" + b"a" * 8192 + b" HTTP/1.1\r\nHost: api\r\n\r\n",
    "absolute URI": b"GET http://evil.example/predict/test HTTP/1.1\r\nHost: api\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "no HTTP version": b"GET /health\r\n\r\n",
    "unknown method": b"BREW /predict HTTP/1.1\r\nHost: api\r\n\r\n",
    "bad content-length": b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Length: -1\r\n\r\n",
    "two content-lengths": b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "chunked and length": b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "100 KiB header": b"GET /health HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 102400 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_malformed_requests_never_get_a_5xx(api: ApiServer, name: str) -> None:
    answer = raw_request(api, BAD_REQUESTS[name])
    # Refused by the HTTP parser (400, or a close without an answer), answered 4xx by the
    # app, or (a request id that is not one) served with a fresh id. Never a 5xx, and the
    # server stays up.
    if answer:
        assert status_of(answer) < 500, answer[:300]
        assert b"\xff" not in answer.split(b"\r\n\r\n", 1)[0]
    assert httpx.get(f"{api.url}/ready").status_code == 200


WRONG_METHODS = [
    ("GET", "/predict"),
    ("PUT", "/predict"),
    ("DELETE", "/predict/label"),
    ("POST", "/health"),
    ("PATCH", "/ready"),
    ("DELETE", "/metrics"),
    ("GET", "/v2/models/iris_svc/infer"),
    ("PUT", "/v2/models/iris_svc/versions/v1/infer"),
    ("POST", "/v2/health/ready"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_methods_are_405(api: ApiServer, method: str, path: str) -> None:
    response = httpx.request(method, f"{api.url}{path}", json={"data": [SETOSA]})
    assert response.status_code == 405, response.text
    assert method not in response.headers["allow"]


@pytest.mark.parametrize(
    "path",
    ["/nope", "/predict/x", "/v2/models/", "/v2/models/iris_svc/versions/v9/infer", "/%2e%2e/"],
)
def test_unknown_paths_are_404(api: ApiServer, path: str) -> None:
    assert httpx.post(f"{api.url}{path}", json={"data": [SETOSA]}).status_code in (404, 405)


def test_a_client_that_half_closes_after_its_request_gets_the_answer(api: ApiServer) -> None:
    """shutdown(SHUT_WR) after the request (`nc -N`): the batched inference completes after
    uvicorn saw the EOF; the answer still goes out, then the server closes."""
    body = json.dumps({"data": [SETOSA]}).encode()
    request = (
        b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    answers = [raw_request(api, request, timeout=5) for _ in range(20)]
    assert all(a.startswith(b"HTTP/1.1 200") and b'"prediction"' in a for a in answers)
    # Half of a request, then EOF: nothing can complete it; closed without an answer.
    assert raw_request(api, request[: len(request) - 5], timeout=5) == b""


# -- slow clients ------------------------------------------------------------------------
RESET = b"(reset)"
SLOW_HEADERS = b"POST /predict HTTP/1.1\r\nHost: api\r\nX-Slow: " + b"a" * 1000


def slowloris(server: ApiServer, count: int, seconds: float, body: bool = False) -> list[bytes]:
    """`count` connections that send a request one byte a second (the headers, or
    complete headers and then the body) until the server gives up on each, for `seconds`
    at most; what each got back (b"" if the server still held it at the end, RESET if
    it was reset before its answer could be read)."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    sockets = [socket.create_connection(address(server), timeout=5) for _ in range(count)]
    closed: dict[int, bytes] = {}
    try:
        if body:
            for sock in sockets:
                sock.sendall(head)
        deadline = time.monotonic() + seconds
        position = 0
        while len(closed) < count and time.monotonic() < deadline:
            for i, sock in enumerate(sockets):
                if i in closed:
                    continue
                try:
                    sock.sendall(SLOW_HEADERS[position : position + 1] if not body else b"[")
                except OSError:
                    closed[i] = read_all(sock) or RESET
            position += 1
            # A second until the next byte; an answer is read as soon as it comes (not
            # at the next send, which the closed connection would answer with a reset).
            waiting = [sock for i, sock in enumerate(sockets) if i not in closed]
            readable, _, _ = select.select(waiting, [], [], 1) if waiting else ([], [], [])
            for sock in readable:
                closed[sockets.index(sock)] = read_all(sock) or RESET
        return [closed.get(i, b"") for i in range(count)]
    finally:
        for sock in sockets:
            sock.close()


def test_slowloris_headers_get_408_and_are_closed(
    loaded_model_dir: Path, start_api: StartApi
) -> None:
    server = start_api(loaded_model_dir, API_HEADER_TIMEOUT_SECONDS="2", LOG_LEVEL="WARNING")
    # Each keeps sending a byte a second: without the timeout, all 50 would be held for
    # as long as they keep sending (the 60 s this allows, and more).
    answers = slowloris(server, count=50, seconds=60)
    held = sum(1 for a in answers if not a)
    print(f"\nslowloris, headers: {held} of 50 connections still held after 60 s")
    assert held == 0
    # 408 then closed; a client whose next byte raced the close may see only the reset.
    assert all(a == RESET or status_of(a) == 408 for a in answers), {a[:40] for a in answers}
    assert answers.count(RESET) < len(answers)
    # Meanwhile and afterwards, ordinary clients are served.
    assert httpx.post(f"{server.url}/predict", json={"data": [SETOSA]}).status_code == 200


def test_slowloris_bodies_get_408_and_are_closed(
    loaded_model_dir: Path, start_api: StartApi
) -> None:
    server = start_api(loaded_model_dir, API_BODY_TIMEOUT_SECONDS="2", LOG_LEVEL="WARNING")
    answers = slowloris(server, count=20, seconds=60, body=True)
    assert all(a == RESET or status_of(a) == 408 for a in answers), {a[:40] for a in answers}
    assert all(b"API_BODY_TIMEOUT_SECONDS=2" in a for a in answers if a != RESET)
    assert answers.count(RESET) < len(answers)
    assert httpx.post(f"{server.url}/predict", json={"data": [SETOSA]}).status_code == 200


def test_a_keep_alive_connection_times_out_its_next_request_too(
    loaded_model_dir: Path, start_api: StartApi
) -> None:
    server = start_api(loaded_model_dir, API_HEADER_TIMEOUT_SECONDS="1", LOG_LEVEL="WARNING")
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")
        assert read_one_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # then nothing more
        answer = read_all(sock)
    # The head's own timeout answered (uvicorn's keep-alive timeout would close without
    # a word, and only on an idle connection).
    assert status_of(answer) == 408 and b"API_HEADER_TIMEOUT_SECONDS=1" in answer


# -- more connections than configured ---------------------------------------------------
def test_connections_beyond_the_limit_get_503_fast_and_memory_stays_bounded(
    loaded_model_dir: Path, start_api: StartApi
) -> None:
    # The header timeout outlasts the test: the idle connections stay held throughout.
    server = start_api(
        loaded_model_dir,
        API_LIMIT_CONCURRENCY="20",
        API_HEADER_TIMEOUT_SECONDS="600",
        API_ACCESS_LOG="false",
        LOG_LEVEL="ERROR",
    )
    pid = server.process.pid
    request = b"POST /predict HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
    body = json.dumps({"data": [SETOSA]}).encode()
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    assert raw_request(server, request).startswith(b"HTTP/1.1 200")
    rss_before = rss_kib(pid)
    # 20 connections that say nothing fill the limit...
    idle = [socket.create_connection(address(server)) for _ in range(20)]
    try:
        # ...once the server has accepted them all (the first 503 says so)...
        deadline = time.monotonic() + 30
        while status_of(raw_request(server, request, timeout=30)) != 503:
            assert time.monotonic() < deadline, "20 idle connections never filled the limit"
        # ...every further request is refused at once, however many come (none waits
        # for a place: uvicorn answers 503 instead of queueing).
        statuses: dict[int, int] = {}
        slowest = 0.0
        for _ in range(2000):
            started = time.monotonic()
            status = status_of(raw_request(server, request, timeout=30))
            slowest = max(slowest, time.monotonic() - started)
            statuses[status] = statuses.get(status, 0) + 1
        rss_during = rss_kib(pid)
    finally:
        for sock in idle:
            sock.close()
    # Served again once the server has seen the idle connections go.
    deadline = time.monotonic() + 30
    while not (after := raw_request(server, request, timeout=30)).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, after[:100]
        time.sleep(0.05)
    rss_after = rss_kib(pid)
    print(
        f"\nAPI_LIMIT_CONCURRENCY=20, 20 idle connections held, 2000 more requests: {statuses}, "
        f"slowest answer {slowest * 1000:.1f} ms; RSS {rss_before} KiB before, "
        f"{rss_during} KiB under it, {rss_after} KiB after"
    )
    assert statuses == {503: 2000}
    assert rss_during - rss_before < 10 * 1024


# -- SIGTERM: drain, then close ----------------------------------------------------------
def test_sigterm_turns_ready_503_keeps_serving_then_stops(loaded_model_dir: Path) -> None:
    server = launch_api(loaded_model_dir, API_DRAIN_SECONDS="2")
    try:
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Not ready as soon as the process has handled the signal (however late that is
        # on a busy machine)...
        while (ready := httpx.get(f"{server.url}/ready")).status_code != 503:
            assert time.monotonic() - signalled < 30, "/ready did not turn 503"
            time.sleep(0.05)
        draining = time.monotonic()  # the drain began before this
        # ...yet still serving.
        v2_ready = httpx.get(f"{server.url}/v2/health/ready")
        predict = httpx.post(f"{server.url}/predict", json={"data": [SETOSA]})
        assert (v2_ready.status_code, predict.status_code) == (503, 200)
        assert ready.json()["ready"] is False
        while server.process.poll() is None and time.monotonic() - draining < 30:
            try:
                httpx.get(f"{server.url}/health", timeout=10)
            except httpx.TransportError:
                break
            time.sleep(0.05)
        stopped = time.monotonic()
        # Served the whole drain (it began after the signal), then stopped listening
        # promptly (the drain began before the first 503).
        assert stopped - signalled >= 2, stopped - signalled
        assert stopped - draining < 4, stopped - draining
    finally:
        out = stop_api(server)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: "killed by SIGTERM"
    # after a clean shutdown (exit 143 in a container) is its normal end.
    assert server.process.returncode in (0, -signal.SIGTERM), out
    assert "Finished server process" in out and "Traceback" not in out
    assert "draining; /ready answers 503, still serving for API_DRAIN_SECONDS=2" in out
