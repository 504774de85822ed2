"""The hot routes' direct path (model_api.protocol.HotCycle) against uvicorn's ASGI path:
two real uvicorn processes, API_DIRECT_HOT_PATH=true and false, sent the same bytes.

The answers must be the same byte for byte (but for the Date and X-Request-ID values),
for good requests and bad ones; and the HTTP/1.1 mechanics the direct path takes over
from uvicorn's cycle (pipelining, bodies beyond the flow-control window, chunked bodies,
HTTP/1.0, Connection: close, a client that leaves mid-body) must behave the same on both.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from model_api.__main__ import uvicorn_options
from model_api.config import ApiSettings
from model_api.main import create_app, served
from model_api.protocol import HotCycle
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA, free_port
from tests.integration.conftest import ApiServer, launch_api, stop_api
from tests.integration.rawhttp import address, read_all, read_one_response

PATHS = {"direct": "true", "asgi": "false"}


@pytest.fixture(scope="module")
def servers(loaded_model_dir: Path) -> Iterator[dict[str, ApiServer]]:
    started = {
        name: launch_api(
            loaded_model_dir,
            API_DIRECT_HOT_PATH=value,
            API_ACCESS_LOG="false",
            LOG_LEVEL="WARNING",
            MAX_BODY_BYTES="300000",
        )
        for name, value in PATHS.items()
    }
    yield started
    for server in started.values():
        stop_api(server)


@pytest.fixture(params=list(PATHS))
def api(request: pytest.FixtureRequest, servers: dict[str, ApiServer]) -> ApiServer:
    return servers[request.param]


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: api", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rows(*values: list[float]) -> bytes:
    return json.dumps({"data": list(values)}).encode()


def v2(*values: list[float]) -> bytes:
    data = [v for row in values for v in row]
    return json.dumps(
        {"inputs": [{"name": "input", "shape": [len(values), 4], "datatype": "FP32", "data": data}]}
    ).encode()


JSON = "Content-Type: application/json"
# Every hot route, good and bad input, and requests the direct path leaves to ASGI.
SAME_ANSWERS = {
    "predict": post("/predict", rows(SETOSA), JSON),
    "predict batch": post("/predict", rows(SETOSA, VIRGINICA, SETOSA), JSON),
    "predict label": post("/predict/label", rows(VIRGINICA), JSON),
    "predict test": b"GET /predict/test HTTP/1.1\r\nHost: api\r\n\r\n",
    "predict test label": b"GET /predict/test/label HTTP/1.1\r\nHost: api\r\n\r\n",
    "v2 infer": post("/v2/models/iris_svc/infer", v2(SETOSA, VIRGINICA), JSON),
    "v2 infer versioned": post("/v2/models/iris_svc/versions/v1/infer", v2(SETOSA), JSON),
    "v2 infer bad shape": post("/v2/models/iris_svc/infer", v2([1.0, 2.0, 3.0]), JSON),
    "v2 other model": post("/v2/models/nope/infer", v2(SETOSA), JSON),
    "short row": post("/predict", rows([1.0, 2.0]), JSON),
    "NaN": post("/predict", b'{"data": [[NaN, 1, 2, 3]]}', JSON),
    "not json": post("/predict", b"{", JSON),
    "wrong content type": post("/predict", rows(SETOSA), "Content-Type: text/plain"),
    "gzip unsupported": post("/predict", rows(SETOSA), JSON, "Content-Encoding: br"),
    "declared too large": post("/predict", b"", JSON, "Content-Length: 999999999"),
    "request id kept": post("/predict", rows(SETOSA), JSON, "X-Request-ID: trace-42"),
    "query string (ASGI)": post("/predict?x=1", rows(SETOSA), JSON),
    "forwarded (ASGI)": post("/predict", rows(SETOSA), JSON, "X-Forwarded-For: 10.0.0.9"),
    "not hot": b"GET /label HTTP/1.1\r\nHost: api\r\n\r\n",
}


def normalized(response: bytes) -> bytes:
    """Without what differs between any two answers: the date and generated request ids
    (V2 echoes the request id as the response's id when the request has none)."""
    response = re.sub(rb"(?im)^date: [^\r]*\r\n", b"", response)
    response = re.sub(rb'"id":"[0-9a-f]{32}"', b'"id":"<generated>"', response)
    return re.sub(rb"(?im)^(x-request-id: )[0-9a-f]{32}\r\n", rb"\1<generated>\r\n", response)


def exchange(server: ApiServer, data: bytes) -> bytes:
    """One request and its answer on a connection of its own, left open meanwhile (a
    half-close would race the answer for a `connection: close`)."""
    with socket.create_connection(address(server), timeout=10) as sock:
        sock.sendall(data)
        return read_one_response(sock)


@pytest.mark.parametrize("name", list(SAME_ANSWERS))
def test_both_paths_answer_byte_for_byte_alike(servers: dict[str, ApiServer], name: str) -> None:
    data = SAME_ANSWERS[name]
    answers = {path: normalized(exchange(server, data)) for path, server in servers.items()}
    assert answers["direct"] == answers["asgi"]
    assert answers["direct"].startswith(b"HTTP/1.1 "), answers["direct"][:100]


def test_pipelined_requests_are_answered_in_order(api: ApiServer) -> None:
    requests = [
        post("/predict", rows(SETOSA), JSON, "X-Request-ID: first"),
        post("/predict", rows([1.0]), JSON, "X-Request-ID: second"),  # 422
        b"GET /health HTTP/1.1\r\nHost: api\r\nX-Request-ID: third\r\n\r\n",  # not hot
        post("/predict/label", rows(VIRGINICA), JSON, "X-Request-ID: fourth"),
    ]
    with socket.create_connection(address(api), timeout=10) as sock:
        sock.sendall(b"".join(requests))  # all at once: pipelined
        answers = [read_one_response(sock) for _ in requests]
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
    deadline = time.monotonic() + 5
    while gone() != before + 1:
        assert time.monotonic() < deadline, f"499 count stayed {gone()} (was {before})"
        time.sleep(0.05)


# -- which path a request takes: in process, to watch the protocol -----------------------
@pytest.mark.parametrize(
    ("direct", "proxies"),
    [(True, "127.0.0.1"), (True, "10.9.9.9"), (False, "127.0.0.1")],
    ids=["direct", "direct, the client no trusted proxy", "API_DIRECT_HOT_PATH=false"],
)
def test_plain_hot_requests_take_the_direct_path_and_others_asgi(
    monkeypatch: pytest.MonkeyPatch, direct: bool, proxies: str
) -> None:
    taken: list[str] = []
    run = HotCycle.run

    async def watched(cycle: HotCycle) -> None:
        taken.append(f"{cycle.method} {cycle.path}")
        await run(cycle)

    monkeypatch.setattr(HotCycle, "run", watched)
    settings = ApiSettings(  # type: ignore[call-arg]
        MODEL_DIR=str(MODEL_V1),
        API_HOST="127.0.0.1",
        API_PORT=str(free_port()),
        API_DIRECT_HOT_PATH=str(direct),
        API_ACCESS_LOG="false",
    )
    options = {**uvicorn_options(settings), "forwarded_allow_ips": proxies}
    config = uvicorn.Config(served(create_app(settings)), **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run)  # not the main thread: no signal handlers
    thread.start()
    try:
        url = f"http://{settings.host}:{settings.port}"
        deadline = time.monotonic() + 20
        while not server.started or httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() < deadline and thread.is_alive(), "not ready in time"
            time.sleep(0.05)
        one = {"data": [SETOSA]}
        expected = {
            "POST /predict": httpx.post(f"{url}/predict", json=one),
            "POST /predict/label": httpx.post(f"{url}/predict/label", json=one),
            "GET /predict/test": httpx.get(f"{url}/predict/test"),
            "POST /v2/models/iris_svc/infer": httpx.post(
                f"{url}/v2/models/iris_svc/infer", content=v2(SETOSA)
            ),
        }
        asgi = [
            httpx.post(f"{url}/predict", params={"x": "1"}, json=one),
            httpx.post(f"{url}/predict", json=one, headers={"Expect": "100-continue"}),
            httpx.get(f"{url}/health"),
        ]
        # uvicorn rewrites the client from X-Forwarded-For only if it trusts the peer.
        forwarded = httpx.post(f"{url}/predict", json=one, headers={"X-Forwarded-For": "10.0.0.9"})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert all(r.status_code == 200 for r in [*expected.values(), *asgi, forwarded])
    trusted = proxies == "127.0.0.1"
    assert taken == ([*expected, *([] if trusted else ["POST /predict"])] if direct else [])
