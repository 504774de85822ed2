"""The proxy, the stack's Service: it spreads requests over the ready replicas, follows
`--scale`, answers abuse at the edge, and runs as hardened as the other services."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from model_load_harness.compose import Stack
from tests.conftest import SETOSA
from tests.integration.rawhttp import read_all

pytestmark = pytest.mark.docker


def raw(stack: Stack, data: bytes, then_wait: float = 0) -> tuple[bytes, float]:
    """Send bytes as they are (keep the connection open `then_wait` s at most), return
    what the proxy answers until it closes, and after how many seconds."""
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(data)
        if not then_wait:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock), time.monotonic() - started


def requests_per_replica(stack: Stack) -> dict[str, int]:
    return {r["addr"]: int(r["stot"]) for r in stack.proxy_stats().values() if r["status"] == "UP"}


def test_requests_are_spread_over_the_ready_replicas(stack: Stack) -> None:
    assert stack.routed() == stack.replica_addresses() and len(stack.replica_addresses()) == 2
    before = requests_per_replica(stack)
    with httpx.Client(base_url=stack.api) as client:
        for _ in range(40):
            assert client.post("/predict", json={"data": [SETOSA]}).status_code == 200
    after = requests_per_replica(stack)
    served = {addr: after[addr] - before.get(addr, 0) for addr in after}
    assert sum(served.values()) == 40 and min(served.values()) >= 10, served


def test_scale_up_and_down_with_compose_alone(stack: Stack) -> None:
    """`docker compose up -d --scale api=3`: a third replica, found through DNS, gets
    traffic once ready; scaling back leaves the proxy with two."""
    try:
        stack.compose("up", "-d", "--wait", "--scale", "api=3")
        assert len(stack.replicas()) == 3
        deadline = time.monotonic() + 30
        while stack.routed() != stack.replica_addresses():
            assert time.monotonic() < deadline, (stack.routed(), stack.replica_addresses())
            time.sleep(0.2)
    finally:
        stack.compose("up", "-d", "--wait")
    assert len(stack.replicas()) == 2
    deadline = time.monotonic() + 30
    while stack.routed() != stack.replica_addresses():
        assert time.monotonic() < deadline, (stack.routed(), stack.replica_addresses())
        time.sleep(0.2)


def test_with_no_replica_ready_the_proxy_answers_503_in_the_apis_form(stack: Stack) -> None:
    """{"error": ...} as the API's own errors, which clients such as tritonclient parse
    (HAProxy's own page is HTML); `docker compose start api` serves again."""
    try:
        stack.compose("stop", "api")
        deadline = time.monotonic() + 30
        while stack.routed():
            assert time.monotonic() < deadline, stack.routed()
            time.sleep(0.2)
        answer = httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}, timeout=30)
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"error": "no API replica is ready"}
    finally:
        stack.compose("start", "api")
        stack.compose("up", "-d", "--wait")
    deadline = time.monotonic() + 30
    while stack.routed() != stack.replica_addresses():
        assert time.monotonic() < deadline, (stack.routed(), stack.replica_addresses())
        time.sleep(0.2)
    assert httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).status_code == 200


def test_heads_over_the_limits_get_400_at_the_proxy(stack: Stack) -> None:
    big, _ = raw(stack, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    lines = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    many, _ = raw(stack, b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    fine, _ = raw(stack, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 400 "), big[:100]
    assert many.startswith(b"HTTP/1.1 400 "), many[:100]
    assert fine.startswith(b"HTTP/1.1 200 "), fine[:100]


def test_slow_heads_and_bodies_get_408_at_the_proxy(stack: Stack) -> None:
    """Headers never finished, or a body that stops short of its Content-Length: 408
    after `timeout http-request` (10 s), the proxy's, before any replica is involved."""
    slow_head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Partial: "
    slow_body = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"data": [['
    )
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda data: raw(stack, data, then_wait=30), [slow_head, slow_body])
        )
    for answer, seconds in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert 9 < seconds < 20, seconds


def test_the_proxy_runs_hardened_and_limited(stack: Stack) -> None:
    proxy = stack.inspect("proxy")
    host = proxy["HostConfig"]
    assert proxy["Config"]["User"] == "10001:10001"
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] > 0 and host["PidsLimit"] > 0 and host["NanoCpus"] > 0
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert [p["HostIp"] for p in proxy["NetworkSettings"]["Ports"]["8000/tcp"]] == ["127.0.0.1"]
    assert proxy["State"]["Health"]["Status"] == "healthy"


def test_replicas_publish_nothing_and_run_one_worker_per_cpu(stack: Stack) -> None:
    """Each replica gets API_CPUS (1) of CPU, so API_WORKERS=auto gives it one worker:
    two replicas fill the 2 CPUs without oversubscribing them."""
    replicas = stack.replicas()
    assert len(replicas) == 2
    for replica in replicas:
        host = replica["HostConfig"]
        assert host["PortBindings"] in ({}, None), host["PortBindings"]
        assert host["NanoCpus"] == 1_000_000_000
        top = subprocess.run(
            ["docker", "top", replica["Id"], "-o", "pid,args"], capture_output=True, text=True
        ).stdout
        # docker-init and the server, no worker processes (they would be spawned
        # through multiprocessing).
        assert top.count("python3 -m model_api") == 2 and "multiprocessing" not in top, top
