"""The guard's fast path (model_api.guard.FastRoutes): which requests it serves itself
and which it leaves to uvicorn, and that its answers keep HTTP/1.1's order, keep-alive,
half-close and shutdown as uvicorn's do. In process: the real guard and uvicorn
protocol on a recording transport; every API test over a socket runs through it too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn

from model_api.guard import FAST_STATE, FastRoutes, Guard, Respond
from model_api.server import GUARD
from tests.integration.test_api_guard import (
    RecordingTransport,
    answer_as_the_middleware,
    settle,
)

HOT = b"POST /hot HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\nhi"
CHUNKED = (
    b"POST /hot HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
)


class App:
    """An ASGI app answering like the API's middleware (answering / answered): what
    uvicorn's request cycle serves."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = (await receive())["body"]
        self.calls.append(f"uvicorn {scope['method']} {scope['path']} {body.decode()}")
        await answer_as_the_middleware(send, f"uvicorn:{body.decode()}".encode())


class Whole:
    """The guard's side of the API's middleware (serve_whole): answers at once, or, while
    `held`, keeps its answers back until `release()`."""

    def __init__(self, calls: list[str], held: bool = False) -> None:
        self.calls = calls
        self.held = held
        self.waiting: list[Any] = []

    def serve_whole(self, scope: dict[str, Any], body: bytes, respond: Respond) -> None:
        self.calls.append(f"fast {scope['method']} {scope['path']} {body.decode()}")
        answer = f"fast:{body.decode()}".encode()
        self.waiting.append(
            lambda: respond(200, [(b"content-length", b"%d" % len(answer))], answer)
        )
        if not self.held:
            self.release()

    def release(self) -> None:
        self.held = False
        waiting, self.waiting = self.waiting, []
        for answer in waiting:
            answer()


def connection(
    held: bool = False, app: Any = None
) -> tuple[Guard, RecordingTransport, list[str], uvicorn.server.ServerState, Whole]:
    """A guard on a recording transport; its fast path's app is `app`, else a `Whole`."""
    calls: list[str] = []
    config = uvicorn.Config(
        App(calls), http=GUARD, log_config=None, lifespan="off", timeout_keep_alive=5
    )
    config.load()
    state = uvicorn.server.ServerState()
    whole = Whole(calls, held)
    fast = FastRoutes({("POST", "/hot"): None}, app or whole)
    guard = Guard(config=config, server_state=state, app_state={FAST_STATE: fast})
    transport = RecordingTransport()
    guard.connection_made(transport)
    return guard, transport, calls, state, whole


def bodies(transport: RecordingTransport) -> list[bytes]:
    """The body of each answer written, in order."""
    return [w.rsplit(b"\r\n\r\n", 1)[1] for w in transport.writes]


def test_a_whole_hot_request_in_one_read_is_served_by_the_guard_in_one_write() -> None:
    async def scenario() -> None:
        guard, transport, calls, _, _ = connection()
        for i in (1, 2):  # kept alive: the next one alike
            guard.data_received(HOT)
            await settle(guard, i)
        assert calls == ["fast POST /hot hi", "fast POST /hot hi"]
        assert len(transport.writes) == 2 and not transport.closed
        for write in transport.writes:
            assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nfast:hi")
            assert b"\r\ndate: " in write and b"content-length: 7\r\n" in write
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_the_app_gets_a_turns_requests_after_its_reads() -> None:
    """The reads of one turn of the loop come first, then the app's work on them: the
    requests that arrive together reach the app (and its batcher) together."""

    async def scenario() -> None:
        (one, _, calls, _, _), (two, _, other, _, _) = connection(), connection()
        one.data_received(HOT)
        two.data_received(HOT.replace(b"hi", b"ho"))
        assert calls == other == []
        await asyncio.sleep(0)
        assert calls == ["fast POST /hot hi"] and other == ["fast POST /hot ho"]
        one.connection_lost(None)
        two.connection_lost(None)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "data",
    [
        HOT.replace(b"/hot", b"/cold"),
        HOT.replace(b"POST", b"PUT"),
        HOT.replace(b"/hot", b"/hot?x=1"),
        HOT.replace(b"/hot", b"/h%6Ft"),
        HOT.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HOT.replace(b"Host: api\r\n", b"Host: api\r\nExpect: 100-continue\r\n"),
        HOT.replace(b"Host: api\r\n", b"Host: api\r\nConnection: close\r\n"),
        HOT.replace(b"Host: api\r\n", b"Host: api\r\nX-Forwarded-For: 10.0.0.1\r\n"),
        CHUNKED,
    ],
    ids=[
        "other path",
        "other method",
        "query",
        "escaped",
        "HTTP/1.0",
        "expect",
        "close",
        "forwarded",
        "chunked",
    ],
)
def test_anything_unusual_goes_to_uvicorn(data: bytes) -> None:
    async def scenario() -> None:
        guard, transport, calls, _, _ = connection()
        guard.data_received(data)
        await settle(guard, 1)
        assert len(calls) == 1 and calls[0].startswith("uvicorn "), calls
        assert transport.writes[-1].startswith(b"HTTP/1.1 200 OK\r\n")  # after a 100
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_a_request_split_across_reads_and_pipelined_ones_go_to_uvicorn_in_order() -> None:
    async def scenario() -> None:
        guard, transport, calls, _, _ = connection()
        guard.data_received(HOT[:10])
        guard.data_received(HOT[10:])
        await settle(guard, 1)
        guard.data_received(HOT + HOT.replace(b"hi", b"ho"))
        await settle(guard, 3)
        guard.data_received(HOT)  # and the fast path again once nothing is owed
        await settle(guard, 4)
        assert calls == [
            "uvicorn POST /hot hi", "uvicorn POST /hot hi", "uvicorn POST /hot ho",
            "fast POST /hot hi",
        ]  # fmt: skip
        assert bodies(transport) == [
            b"uvicorn:hi", b"uvicorn:hi", b"uvicorn:ho", b"fast:hi",
        ]  # fmt: skip
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_what_comes_while_the_guard_answers_waits_for_the_answer() -> None:
    async def scenario() -> None:
        guard, transport, calls, _, whole = connection(held=True)
        guard.data_received(HOT)
        guard.data_received(HOT.replace(b"hi", b"ho"))  # pipelined behind a held answer
        await asyncio.sleep(0.01)
        assert calls == ["fast POST /hot hi"] and transport.writes == []
        whole.release()
        # Written at once; the request behind it comes in a later callback, and what
        # arrives before that callback still queues behind it (both then go to uvicorn,
        # as pipelined requests do).
        assert bodies(transport) == [b"fast:hi"]
        guard.data_received(HOT.replace(b"hi", b"hu"))
        await settle(guard, 3)
        assert bodies(transport) == [
            b"fast:hi", b"uvicorn:ho", b"uvicorn:hu",
        ]  # fmt: skip
        guard.connection_lost(None)

    asyncio.run(scenario())


def test_a_shutdown_during_the_answer_closes_after_it() -> None:
    """uvicorn's graceful shutdown closes each idle connection: one we answer on is
    closed once the answer is out, marked `connection: close`."""

    async def scenario() -> None:
        guard, transport, _, state, whole = connection(held=True)
        guard.data_received(HOT)
        await asyncio.sleep(0)  # the app gets it right after the read
        for protocol in list(state.connections):
            protocol.shutdown()  # what uvicorn.Server.shutdown does
        assert not transport.closed
        whole.release()
        assert transport.closed and len(transport.writes) == 1
        assert b"connection: close\r\n" in transport.writes[0]
        assert transport.writes[0].endswith(b"fast:hi")

    asyncio.run(scenario())


def test_a_half_closed_client_gets_its_answer_then_the_close() -> None:
    async def scenario() -> None:
        guard, transport, _, _, whole = connection(held=True)
        guard.data_received(HOT)
        assert guard.eof_received() is True  # kept open: an answer is owed
        await asyncio.sleep(0)
        whole.release()
        assert transport.closed and transport.writes[0].endswith(b"fast:hi")
        assert b"connection: close" in transport.writes[0]

    asyncio.run(scenario())


def test_a_client_gone_before_the_answer_gets_no_write() -> None:
    async def scenario() -> None:
        guard, transport, _, _, whole = connection(held=True)
        guard.data_received(HOT)
        await asyncio.sleep(0)
        transport.close()
        guard.connection_lost(ConnectionResetError())
        whole.release()
        assert transport.writes == []  # RecordingTransport fails a write after close
        assert guard.answers == 1 and not guard.serving

    asyncio.run(scenario())


def test_an_idle_connection_closes_after_the_keep_alive() -> None:
    async def scenario() -> None:
        guard, transport, _, _, _ = connection()
        guard.data_received(HOT)
        await settle(guard, 1)
        now = guard.loop.time()
        guard.check_timeouts(now + 4)  # within uvicorn's timeout_keep_alive (5 s)
        assert not transport.closed
        guard.check_timeouts(now + 6)
        assert transport.closed
        assert len(transport.writes) == 1  # closed quietly, as uvicorn does

    asyncio.run(scenario())


class Broken:
    def __init__(self, answer_first: bool) -> None:
        self.answer_first = answer_first
        self.calls = 0

    def serve_whole(self, scope: dict[str, Any], body: bytes, respond: Respond) -> None:
        self.calls += 1
        if self.answer_first:
            respond(200, [(b"content-length", b"2")], b"ok")
        raise RuntimeError("boom")


@pytest.mark.parametrize("answer_first", [False, True], ids=["unanswered", "answered"])
def test_an_app_that_fails_closes_the_connection_unless_it_answered(answer_first: bool) -> None:
    async def scenario() -> None:
        broken = Broken(answer_first)
        guard, transport, _, _, _ = connection(app=broken)
        guard.data_received(HOT)
        await asyncio.sleep(0)
        assert broken.calls == 1 and not guard.serving
        if answer_first:  # kept alive: the next request alike
            guard.data_received(HOT)
            await asyncio.sleep(0)
            assert broken.calls == 2 and not transport.closed
            assert bodies(transport) == [b"ok", b"ok"]
        else:
            assert transport.closed and transport.writes == []

    asyncio.run(scenario())


def test_an_answer_is_given_once() -> None:
    async def scenario() -> None:
        given: list[Respond] = []

        class Keeping:
            def serve_whole(self, scope: dict[str, Any], body: bytes, respond: Respond) -> None:
                given.append(respond)
                respond(200, [(b"content-length", b"2")], b"ok")

        guard, transport, _, _, _ = connection(app=Keeping())
        guard.data_received(HOT)
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="answered already"):
            given[0](200, [(b"content-length", b"2")], b"ok")
        assert bodies(transport) == [b"ok"] and guard.answers == 1

    asyncio.run(scenario())
