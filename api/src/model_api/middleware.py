"""The app's front door: request id, body limit, metrics and the access log for every
HTTP request, in front of FastAPI's whole stack (see main.ModelApp).

It also serves the hot operations (POST /predict, V2 infer, ...) itself, by exact method
and path, as a lean ASGI router: their endpoints take a `Call` (the body and the few
headers they read) and return a `Reply` (the body and its type), with no Starlette
request or response object, no router, no dependency solving. For a small model those
cost several times the inference. Everything else, including the 404/405 answers, goes
through FastAPI, where the same endpoints are also declared (routes.seed, routes.v2), so
OpenAPI describes them and a V2 path naming another model gets the protocol's 404 there.

A hot request the guard collected whole (its fast path) comes to `serve_whole`, with no
task or coroutine: the answer goes to the guard from the inference's done callback.
Through uvicorn, each answer is reported to the connection's guard: while we make it,
the connection waits for us, not for the client; and a client that half-closed gets
`Connection: close` on its last answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_api.errors import ApiError, PayloadTooLargeError
from model_api.guard import Respond, current_guard
from model_api.logging import AccessLog, request_id
from model_api.metrics import Metrics

log = logging.getLogger(__name__)

# Probes and scrapes come every few seconds; their successful lines would drown the rest.
QUIET_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Accepted as given: what tracing systems and proxies send (uuids, hex, base64url-ish).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
UNMATCHED = "<unmatched>"
JSON = b"application/json"
CLOSE = (b"connection", b"close")


@dataclass(slots=True)
class Call:
    """A request to a hot endpoint: what the endpoints read of it, nothing more."""

    state: Any  # main.AppState: settings, dataplane, metrics...
    body: bytes
    request_id: str
    path_params: dict[str, str]
    content_type: str = ""
    content_encoding: str = "identity"
    inference_header_length: str | None = None  # the V2 binary extension's header

    @classmethod
    async def from_request(cls, request: Request) -> Call:
        """The same, for an endpoint reached through FastAPI's router."""
        headers = request.headers
        return cls(
            state=request.app.state,
            body=await request.body(),
            request_id=request_id.get(),
            path_params=dict(request.path_params),
            content_type=headers.get("content-type", ""),
            content_encoding=headers.get("content-encoding", "identity"),
            inference_header_length=headers.get("inference-header-content-length"),
        )


@dataclass(slots=True)
class Reply:
    """A hot endpoint's answer: 200 with this body, labelled with the model's version."""

    body: bytes
    model_version: str
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def response(self) -> Response:
        """As a Starlette response, for the FastAPI route of the same endpoint."""
        headers = {k.decode(): v.decode() for k, v in self.headers}
        headers["x-model-version"] = self.model_version
        return Response(self.body, media_type=self.content_type.decode(), headers=headers)


@dataclass(slots=True)
class Pending:
    """A hot endpoint's work under way. The endpoint checks the request and hands it to
    the data plane at once (raising an ApiError for a bad one); its answer is `reply`
    applied to what `result` (the batcher's future) gives. Two phases instead of one
    coroutine: a request the guard serves itself needs no task at all (its answer goes
    out from the future's done callback), and one in uvicorn's cycle waits on the future
    itself, not through a chain of coroutines."""

    result: asyncio.Future[Any]
    reply: Callable[[Any], Reply]


HotEndpoint = Callable[[Call], Pending]


@dataclass(frozen=True)
class HotRoute:
    endpoint: HotEndpoint
    template: str  # the route's path template, as the metrics label it
    path_params: dict[str, str] = field(default_factory=dict)


# (method, exact path) -> HotRoute; filled by the app (V2 paths once the model is known).
HotRoutes = dict[tuple[str, str], HotRoute]


async def via_router(request: Request, endpoint: HotEndpoint) -> Response:
    """Serve a hot endpoint from its FastAPI route (ApiErrors go to FastAPI's handler)."""
    pending = endpoint(await Call.from_request(request))
    return pending.reply(await pending.result).response()


class ClientDisconnected(Exception):
    """The client went away before its body arrived."""


class RequestHeaders:
    """What the front door reads of a request's headers, in one pass over them."""

    __slots__ = ("content_type", "encoding", "header_length", "length", "request_id")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.length: bytes | None = None
        self.content_type = b""
        self.encoding = b"identity"
        self.request_id = b""  # a valid X-Request-ID, else b""
        self.header_length: bytes | None = None
        for name, value in headers:
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.length = value
            elif name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                self.request_id = value
            elif name == b"content-encoding":
                self.encoding = value
            elif name == b"inference-header-content-length":
                self.header_length = value


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        state: Any,
        metrics: Metrics,
        hot_routes: HotRoutes,
        access_log: AccessLog | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.access_log = access_log
        # Request ids: a random prefix per process and a counter - unique across workers
        # and pods without a random syscall per request.
        self._id_prefix = secrets.token_hex(8).encode()
        self._ids = itertools.count(1)
        self.metrics = metrics
        self.hot_routes = hot_routes

    @property
    def max_body_bytes(self) -> int:
        """MAX_BODY_BYTES as the app holds it (auto: set once the model is known)."""
        return self.state.max_body_bytes  # type: ignore[no-any-return]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = RequestHeaders(scope["headers"])
        rid = self._request_id(headers)
        hot = self.hot_routes.get((scope["method"], scope["path"]))
        if hot is None:
            rid_text = rid.decode()
            token = request_id.set(rid_text)
            status = 500
            try:
                status = await self._other(scope, receive, send, headers, rid)
            except ClientDisconnected:
                status = 499  # nginx's "client closed request": nobody to answer
            finally:
                self._record(scope, _template(scope), status, started, rid_text)
                request_id.reset(token)
            return

        # A hot route, through uvicorn's request cycle: served here, in this coroutine.
        exchange = _Exchange(self, hot, scope, rid, started)
        status = 500
        try:
            if headers.length is not None and _too_long(headers.length, self.max_body_bytes):
                raise self._refusal(headers.length)  # not read at all
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body: bytes = message.get("body", b"")  # the usual case: all of it at once
            else:
                body = await self._body(message, receive)
            guard = current_guard.get()
            close = guard.answering() if guard is not None else False
            try:
                answer = exchange.begin(headers, body)
                if isinstance(answer, asyncio.Future):
                    with contextlib.suppress(Exception):  # the exchange words it
                        await answer
                    answer = exchange.answer(answer)
                status, response_headers, response_body = answer
                if close:
                    response_headers.append(CLOSE)
                await send(
                    {"type": "http.response.start", "status": status, "headers": response_headers}
                )
                await send({"type": "http.response.body", "body": response_body})
            finally:
                if guard is not None:
                    guard.answered()
        except ApiError as exc:  # refused before the body was read whole
            status = await send_error(send, rid, exc)
        except ClientDisconnected:
            status = 499
        finally:
            exchange.record(status)

    def serve_whole(self, scope: Scope, body: bytes, respond: Respond) -> None:
        """A hot request that came whole (the guard's fast path, model_api.guard): served
        without a task or a coroutine. Its answer goes to `respond` now if the endpoint
        refuses it, else from the done callback of its inference's future."""
        started = time.perf_counter()
        headers = RequestHeaders(scope["headers"])
        hot = self.hot_routes[scope["method"], scope["path"]]
        exchange = _Exchange(self, hot, scope, self._request_id(headers), started)
        answer = exchange.begin(headers, body)
        if isinstance(answer, asyncio.Future):
            answer.add_done_callback(functools.partial(exchange.finish, respond))
        else:
            exchange.send(answer, respond)

    def _request_id(self, headers: RequestHeaders) -> bytes:
        """The client's X-Request-ID if valid, else ours."""
        return headers.request_id or b"%s%016x" % (self._id_prefix, next(self._ids))

    def _record(self, scope: Scope, template: str, status: int, started: float, rid: str) -> None:
        seconds = time.perf_counter() - started
        self.metrics.record_request(scope["method"], template, status, seconds)
        if self.access_log is not None and not (status == 200 and scope["path"] in QUIET_PATHS):
            self.access_log.write(
                rid,
                scope.get("client"),
                scope["method"],
                scope["path"],
                scope.get("http_version", "1.1"),
                template,
                status,
                seconds,
            )

    async def _other(
        self, scope: Scope, receive: Receive, send: Send, headers: RequestHeaders, rid: bytes
    ) -> int:
        """Any other request: through FastAPI, with the request id and the body limit."""
        if headers.length is not None and _too_long(headers.length, self.max_body_bytes):
            return await send_error(send, rid, self._refusal(headers.length))
        guard = current_guard.get()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", rid)]
                if guard is not None and guard.answering():
                    extra.append(CLOSE)
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)
            if (
                guard is not None
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                guard.answered()

        await self.app(scope, self._counting(receive), send_with_id)
        return status

    async def _body(self, message: Message, receive: Receive) -> bytes:
        """The whole body from its first message on, at most MAX_BODY_BYTES of it (the
        guard bounds the wait for the rest)."""
        parts = []
        size = 0
        while True:
            if message["type"] != "http.request":
                raise ClientDisconnected
            part = message.get("body", b"")
            size += len(part)
            if size > self.max_body_bytes:
                raise PayloadTooLargeError(self._too_large())
            parts.append(part)
            if not message.get("more_body", False):
                return b"".join(parts)
            message = await receive()

    def _too_large(self) -> str:
        return f"request body exceeds MAX_BODY_BYTES={self.max_body_bytes}"

    def _counting(self, receive: Receive) -> Receive:
        """A receive that refuses to pass on more than MAX_BODY_BYTES of a streamed body."""
        limit = self.max_body_bytes
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(self._too_large())
            return message

        return counting_receive

    def _refusal(self, length: bytes) -> PayloadTooLargeError:
        size = length.decode(errors="replace")
        return PayloadTooLargeError(
            f"request body of {size} bytes exceeds MAX_BODY_BYTES={self.max_body_bytes}"
        )


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class _Exchange:
    """One hot request, from its whole body to its answer: what both ways in share. The
    ASGI call awaits the inference in its task; the guard's fast path has no task, and
    answers from the done callback of the inference's future."""

    __slots__ = ("front", "hot", "reply", "rid", "rid_text", "scope", "started")

    def __init__(
        self, front: RequestMiddleware, hot: HotRoute, scope: Scope, rid: bytes, started: float
    ) -> None:
        self.front = front
        self.hot = hot
        self.scope = scope
        self.rid = rid
        self.rid_text = rid.decode()
        self.started = started
        self.reply: Callable[[Any], Reply] | None = None

    def begin(self, headers: RequestHeaders, body: bytes) -> asyncio.Future[Any] | Answer:
        """The body checked and handed to the endpoint: its inference under way, or the
        answer at once if it is refused."""
        front = self.front
        try:
            if len(body) > front.max_body_bytes:
                raise front._refusal(b"%d" % len(body))
            call = Call(
                front.state,
                body,
                self.rid_text,
                self.hot.path_params,
                headers.content_type.decode("latin-1"),
                headers.encoding.decode("latin-1"),
                None if headers.header_length is None else headers.header_length.decode("latin-1"),
            )
            pending = self.hot.endpoint(call)
        except Exception as exc:
            return self._error(exc)
        self.reply = pending.reply
        return pending.result

    def answer(self, result: asyncio.Future[Any]) -> Answer:
        """The answer, once the inference is done."""
        assert self.reply is not None
        try:
            reply = self.reply(result.result())
        except (Exception, asyncio.CancelledError) as exc:
            return self._error(exc)
        headers = [
            (b"content-type", reply.content_type),
            (b"content-length", b"%d" % len(reply.body)),
            (b"x-model-version", reply.model_version.encode()),
            (b"x-request-id", self.rid),
            *reply.headers,
        ]
        return 200, headers, reply.body

    def finish(self, respond: Respond, result: asyncio.Future[Any]) -> None:
        """The fast path's done callback: the answer, to the guard."""
        self.send(self.answer(result), respond)

    def send(self, answer: Answer, respond: Respond) -> None:
        status, headers, body = answer
        try:
            respond(status, headers, body)
        finally:
            self.record(status)

    def record(self, status: int) -> None:
        self.front._record(self.scope, self.hot.template, status, self.started, self.rid_text)

    def _error(self, exc: BaseException) -> Answer:
        if not isinstance(exc, ApiError):
            log.error(
                "unexpected error serving %s",
                self.hot.template,
                exc_info=exc,
                extra={"request_id": self.rid_text},
            )
            exc = ApiError("internal server error")
        return error_answer(self.rid, exc)


def error_answer(rid: bytes, exc: ApiError) -> Answer:
    """{"error": message} with the error's status; closes the connection if it must."""
    body = orjson.dumps({"error": exc.message})
    headers = [
        (b"content-type", JSON),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", rid),
    ]
    if exc.close_connection:
        headers.append(CLOSE)
    return exc.status_code, headers, body


async def send_error(send: Send, rid: bytes, exc: ApiError) -> int:
    status, headers, body = error_answer(rid, exc)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


def _template(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


def _too_long(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return False  # httptools rejects a malformed Content-Length before we see it
