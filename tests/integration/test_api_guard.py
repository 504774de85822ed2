"""The HTTP/1.1 mechanics of the API's server: uvicorn's httptools protocol behind our
guard (model_api.guard), in real uvicorn processes, over raw sockets.

The guard bounds request heads (431), times out slow heads and bodies (408, in
test_api_abuse.py), and answers clients that half-close; everything else is uvicorn's:
pipelining, flow control, chunked bodies, HTTP/1.0, Connection: close. The last tests
pin, in process, the uvicorn behaviour the guard relies on.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from model_api.guard import Guard, current_guard
from model_api.server import GUARD
from model_load_harness.api import ApiServer, launch_api, stop_api
from model_load_harness.ports import free_port
from tests.conftest import SETOSA, VIRGINICA
from tests.integration.rawhttp import (
    address,
    read_all,
    read_one_response,
    read_responses,
    status_of,
)
from tests.integration.test_api_abuse import rss_kib


@pytest.fixture(scope="module")
def api(loaded_model_dir: Path) -> Iterator[ApiServer]:
    server = launch_api(
        loaded_model_dir, API_ACCESS_LOG="false", LOG_LEVEL="WARNING", MAX_BODY_BYTES="300000"
    )
    yield server
    stop_api(server)


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: api", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rows(*values: list[float]) -> bytes:
    return json.dumps({"data": list(values)}).encode()


JSON = "Content-Type: application/json"


# -- request heads ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b"X-Long: " + b"a" * 100_000 + b"\r\n", b"API_MAX_HEAD_BYTES=16384"),
        (b"".join(b"X-H%d: 1\r\n" % i for i in range(5000)), b"API_MAX_HEADERS=100"),
        (b"X-Fine: " + b"a" * 10_000 + b"\r\n", None),
        (b"".join(b"X-H%d: 1\r\n" % i for i in range(90)), None),
    ],
    ids=["100 KB header line", "5000 header lines", "10 KB line: fine", "90 lines: fine"],
)
@pytest.mark.parametrize("pieces", [1, 7], ids=["at once", "in pieces"])
def test_an_over_long_head_is_431_and_closed(
    api: ApiServer, extra: bytes, message: bytes | None, pieces: int
) -> None:
    body = rows(SETOSA)
    head = b"POST /predict HTTP/1.1\r\nHost: api\r\n" + extra
    data = head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with socket.create_connection(address(api), timeout=10) as sock:
        step = len(data) // pieces + 1
        try:
            for start in range(0, len(data), step):
                sock.sendall(data[start : start + step])
                time.sleep(0.01)
        except OSError:
            pass  # refused and closed before it all went out
        if message is None:
            assert status_of(read_one_response(sock)) == 200
            return
        answer = read_all(sock)  # and then closed
    assert status_of(answer) == 431 and message in answer, answer[:300]
    assert b"connection: close" in answer.lower()


def test_clients_sending_huge_heads_do_not_grow_the_server(api: ApiServer) -> None:
    """Twenty clients each sending an 8 MB header line: each is cut off at the head
    limit (plus what one read brings), not buffered whole."""
    pid = api.process.pid
    before = rss_kib(pid)

    def send_huge() -> bytes:
        with socket.create_connection(address(api), timeout=20) as sock:
            try:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\nX-Huge: ")
                for _ in range(8 * 16):
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass
            return read_all(sock)

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(send_huge())) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    grown = rss_kib(pid) - before
    print(f"\n20 clients x 8 MB header line: RSS grew {grown} KiB")
    assert len(results) == 20
    assert all(not r or status_of(r) == 431 for r in results)
    assert grown < 30 * 1024
    assert httpx.get(f"{api.url}/health").status_code == 200


# -- what uvicorn does, through the guard ---------------------------------------------------
def test_pipelined_requests_are_answered_in_order(api: ApiServer) -> None:
    requests = [
        post("/predict", rows(SETOSA), JSON, "X-Request-ID: first"),
        post("/predict", rows([1.0]), JSON, "X-Request-ID: second"),  # 422
        b"GET /health HTTP/1.1\r\nHost: api\r\nX-Request-ID: third\r\n\r\n",  # not hot
        post("/predict/label", rows(VIRGINICA), JSON, "X-Request-ID: fourth"),
    ]
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(b"".join(requests))  # all at once: pipelined
        answers = read_responses(sock, len(requests))
    statuses = [int(a.split(b" ", 2)[1]) for a in answers]
    ids = [re.search(rb"(?im)^x-request-id: (\S+)", a).group(1) for a in answers]  # type: ignore[union-attr]
    assert statuses == [200, 422, 200, 200]
    assert ids == [b"first", b"second", b"third", b"fourth"]
    assert answers[3].endswith(b'{"prediction":"virginica"}')


def test_a_body_beyond_the_flow_control_window_arrives_whole(api: ApiServer) -> None:
    # ~200 KB: uvicorn pauses reading at 64 KiB until the body is asked for.
    body = rows(*[SETOSA] * 150).replace(b",", b"," + b" " * 250)
    assert 150_000 < len(body) < 300_000
    data = post("/predict", body, JSON)
    with socket.create_connection(address(api), timeout=10) as sock:
        for start in range(0, len(data), 16384):
            sock.sendall(data[start : start + 16384])
            time.sleep(0.001)
        answer = read_one_response(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["prediction"]) == 150


def test_a_streamed_body_over_the_limit_is_413_and_closed(api: ApiServer) -> None:
    chunk = b" " * 65536
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(post("/predict", b"", JSON, "Transfer-Encoding: chunked"))
        try:
            for _ in range(10):  # 640 KiB > MAX_BODY_BYTES=300000
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # refused and closed before it all went out
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"connection: close" in answer.lower()
    assert b"MAX_BODY_BYTES=300000" in answer


def test_a_chunked_body_in_pieces(api: ApiServer) -> None:
    body = rows(SETOSA, VIRGINICA)
    pieces = [body[:5], body[5:20], body[20:]]
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(post("/predict/label", b"", JSON, "Transfer-Encoding: chunked"))
        for piece in pieces:
            time.sleep(0.02)
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        answer = read_one_response(sock)
    assert answer.endswith(b'{"prediction":["setosa","virginica"]}'), answer


@pytest.mark.parametrize(
    "data",
    [
        post("/predict", rows(SETOSA), JSON, version="1.0"),
        post("/predict", rows(SETOSA), JSON, "Connection: close"),
    ],
    ids=["http/1.0", "connection close"],
)
def test_the_connection_closes_after_the_answer_when_asked(api: ApiServer, data: bytes) -> None:
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(data)  # no half-close: the server must close on its own
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert answer.count(b"HTTP/1.1") == 1


def test_a_client_gone_mid_body_is_counted_as_499(api: ApiServer) -> None:
    series = 'http_requests_total{method="POST",route="/predict",status="499"} '

    def gone() -> float:
        text = httpx.get(f"{api.url}/metrics").text
        found = re.search(re.escape(series) + r"(\S+)", text)
        return float(found.group(1)) if found else 0.0

    before = gone()
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(post("/predict", b"", JSON, "Content-Length: 100") + b'{"data": [[')
        time.sleep(0.1)
    deadline = time.monotonic() + 30  # a deadline, not an expectation: it takes ms
    while gone() != before + 1:
        assert time.monotonic() < deadline, f"499 count stayed {gone()} (was {before})"
        time.sleep(0.05)


def test_pipelined_requests_then_a_half_close_are_all_answered_then_closed(
    api: ApiServer,
) -> None:
    requests = [post("/predict", rows(SETOSA), JSON, f"X-Request-ID: r{i}") for i in range(3)]
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        sock.shutdown(socket.SHUT_WR)
        answers = read_all(sock)  # returns once the server closed
    assert answers.count(b"HTTP/1.1 200 ") == 3, answers[:500]
    assert [m.group(1) for m in re.finditer(rb"(?im)^x-request-id: (\S+)", answers)] == [
        b"r0",
        b"r1",
        b"r2",
    ]


# -- the uvicorn behaviour the guard relies on (a contract: fails on an upgrade that
# breaks it) -----------------------------------------------------------------------------
def test_uvicorn_builds_the_guard_and_the_app_sees_its_connections_guard() -> None:
    """uvicorn creates the `http` protocol class named by its import string with the
    keyword arguments the guard passes on; the guard's inner protocol is uvicorn's
    httptools one; the request task uvicorn starts inherits `current_guard`; and the app's
    lifespan state reaches the protocol (the guard's limits travel that way)."""
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    scope["state"]["marker"] = "from the lifespan"
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        guard = current_guard.get()
        seen.append(guard)
        await receive()
        close = guard.answering() if guard is not None else False
        headers = [(b"content-length", b"2")] + ([(b"connection", b"close")] if close else [])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        if guard is not None:
            guard.answered()

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=GUARD, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with httpx.Client() as client:
            assert client.get(f"http://127.0.0.1:{port}/").text == "ok"
            assert client.get(f"http://127.0.0.1:{port}/").text == "ok"  # kept alive
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert len(seen) == 2 and all(isinstance(g, Guard) for g in seen)
    assert seen[0] is seen[1]  # one guard per connection
    guard = seen[0]
    assert type(guard.inner).__module__ == "uvicorn.protocols.http.httptools_impl"
    assert guard.complete == guard.answers == 2 and guard.busy == 0
    assert guard.inner.app_state.get("marker") == "from the lifespan"


# -- one send per answer ---------------------------------------------------------------
class RecordingTransport:
    """The socket's side of asyncio's Transport interface, recording what is written:
    the guard and uvicorn's protocol above it are the real ones."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def answer_as_the_middleware(send: Any, body: bytes) -> None:
    """200 with `body`, reported to the connection's guard as the API's middleware does
    (answering / answered, `Connection: close` when the guard says so)."""
    guard = current_guard.get()
    assert guard is not None
    close = guard.answering()
    headers = [(b"content-length", b"%d" % len(body))]
    headers += [(b"connection", b"close")] if close else []
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    finally:
        guard.answered()


def guarded_connection(body: bytes) -> tuple[Guard, RecordingTransport]:
    """A guard as uvicorn makes one, on a recording transport, serving an app that
    answers `body` the way the API's middleware does (answering / answered)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await answer_as_the_middleware(send, body)

    config = uvicorn.Config(app, http=GUARD, log_config=None, lifespan="off")
    config.load()
    guard = Guard(config=config, server_state=uvicorn.server.ServerState(), app_state={})
    transport = RecordingTransport()
    guard.connection_made(transport)
    return guard, transport


async def settle(guard: Guard, answers: int) -> None:
    for _ in range(500):
        if guard.answers >= answers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{guard.answers} answers of {answers}")


REQUEST = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"


def test_an_answers_head_and_body_leave_in_one_send() -> None:
    async def scenario() -> None:
        guard, transport = guarded_connection(b"ok")
        guard.data_received(REQUEST)
        await settle(guard, 1)
        guard.data_received(REQUEST)  # kept alive: the next answer alike
        await settle(guard, 2)
        assert len(transport.writes) == 2, transport.writes
        for write in transport.writes:
            assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nok")
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_a_large_body_follows_its_head_without_a_copy() -> None:
    async def scenario() -> None:
        body = b"x" * 200_000
        guard, transport = guarded_connection(body)
        guard.data_received(REQUEST)
        await settle(guard, 1)
        assert len(transport.writes) == 2
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.writes[1] == body
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_a_half_closed_clients_last_answer_is_sent_before_the_close() -> None:
    async def scenario() -> None:
        guard, transport = guarded_connection(b"ok")
        guard.data_received(REQUEST)
        guard.eof_received()
        await settle(guard, 1)
        assert transport.closed
        assert len(transport.writes) == 1 and transport.writes[0].endswith(b"ok")
        assert b"connection: close" in transport.writes[0]

    asyncio.run(scenario())


def test_uvicorns_own_answers_are_not_held() -> None:
    """A malformed request: uvicorn answers 400 itself (no app, no answering()), at once."""

    async def scenario() -> None:
        guard, transport = guarded_connection(b"ok")
        guard.data_received(b"NOT HTTP\r\n\r\n")
        await asyncio.sleep(0)
        assert transport.writes and transport.writes[0].startswith(b"HTTP/1.1 400 ")
        assert transport.closed

    asyncio.run(scenario())
