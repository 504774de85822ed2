"""The app's front door: request id, body limit, metrics and the access log for every
HTTP request, in front of FastAPI's whole stack (see main.ModelApp).

It also serves the hot operations (POST /predict, V2 infer, ...) itself, by exact method
and path: their endpoints take a `Call` (the body and the few headers they read) and
return a `Reply` (the body and its type), with no Starlette request or response object,
no router, no dependency solving. For a small model those cost several times the
inference. Everything else, including the 404/405 answers, goes through FastAPI, where
the same endpoints are also declared (routes.seed, routes.v2), so OpenAPI describes them
and a V2 path naming another model gets the protocol's 404 there.

`exchange` serves a hot request from its facts (headers, body, method, path, client) to
its answer's bytes: called by `__call__` for a request that came through ASGI, and by the
HTTP protocol itself for one on the direct path (model_api.protocol.HotCycle, no ASGI
cycle at all). Either way the same code decides the answer, the metrics and the log line.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_api.errors import ApiError, PayloadTooLargeError
from model_api.logging import AccessLog, request_id
from model_api.metrics import Metrics

log = logging.getLogger(__name__)

# Probes and scrapes come every few seconds; their successful lines would drown the rest.
QUIET_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Accepted as given: what tracing systems and proxies send (uuids, hex, base64url-ish).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
UNMATCHED = "<unmatched>"
JSON = b"application/json"


@dataclass(slots=True)
class Call:
    """A request to a hot endpoint: what the endpoints read of it, nothing more."""

    state: Any  # main.AppState: settings, model, metrics, batcher...
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


HotEndpoint = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class HotRoute:
    endpoint: HotEndpoint
    template: str  # the route's path template, as the metrics label it
    path_params: dict[str, str] = field(default_factory=dict)


# (method, exact path) -> HotRoute; filled by the app (V2 paths once the model is known).
HotRoutes = dict[tuple[str, str], HotRoute]


async def via_router(request: Request, endpoint: HotEndpoint) -> Response:
    """Serve a hot endpoint from its FastAPI route (ApiErrors go to FastAPI's handler)."""
    return (await endpoint(await Call.from_request(request))).response()


class ClientDisconnected(Exception):
    """The client went away before its body arrived (or the body timeout closed it)."""


# A hot endpoint's answer on the wire: status, headers (without the server's default
# ones), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
BodyReader = Callable[[], Awaitable[bytes]]


class RequestHeaders:
    """What the front door reads of a request's headers, in one pass over them."""

    __slots__ = ("content_type", "encoding", "forwarded", "header_length", "length", "request_id")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.length: bytes | None = None
        self.content_type = b""
        self.encoding = b"identity"
        self.request_id = b""  # a valid X-Request-ID, else b""
        self.header_length: bytes | None = None
        self.forwarded = False  # X-Forwarded-For/-Proto: uvicorn's proxy headers apply
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
            elif name == b"x-forwarded-for" or name == b"x-forwarded-proto":
                self.forwarded = True


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        state: Any,
        metrics: Metrics,
        max_body_bytes: int,
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
        self.max_body_bytes = max_body_bytes
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hot = self.hot_routes.get((scope["method"], scope["path"]))
        if hot is None:
            await self._other(scope, receive, send)
            return

        async def read_body() -> bytes:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                return message.get("body", b"")  # type: ignore[no-any-return]  # the usual case
            return await self._body(message, receive)

        answer = await self.exchange(
            hot,
            RequestHeaders(scope["headers"]),
            read_body,
            scope["method"],
            scope["path"],
            scope.get("client"),
            scope.get("http_version", "1.1"),
        )
        if answer is not None:
            status, headers, body = answer
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def exchange(
        self,
        hot: HotRoute,
        headers: RequestHeaders,
        body: bytes | BodyReader,
        method: str,
        path: str,
        client: tuple[str, int] | None,
        http_version: str,
    ) -> Answer | None:
        """Serve one request to a hot route: its answer, or None if the client left.
        For the ASGI path above and for the protocol's direct path (protocol.HotCycle).
        `body`: the whole body, or how to await it (not awaited if refused at once)."""
        started = time.perf_counter()
        rid = headers.request_id or self._new_request_id()
        rid_text = rid.decode()
        token = request_id.set(rid_text)
        status = 500
        try:
            answer = await self._answer(hot, headers, body, rid, rid_text)
            status = answer[0]
            return answer
        except ClientDisconnected:
            status = 499  # nginx's "client closed request": nobody to answer
            return None
        finally:
            seconds = time.perf_counter() - started
            self._record(
                method, path, hot.template, status, seconds, rid_text, client, http_version
            )
            request_id.reset(token)

    async def _answer(
        self,
        hot: HotRoute,
        headers: RequestHeaders,
        body: bytes | BodyReader,
        rid: bytes,
        rid_text: str,
    ) -> Answer:
        try:
            if headers.length is not None and _too_long(headers.length, self.max_body_bytes):
                raise self._refusal(headers.length)
            if not isinstance(body, bytes):
                body = await body()
            if len(body) > self.max_body_bytes:
                raise PayloadTooLargeError(self._too_large())
            call = Call(
                self.state,
                body,
                rid_text,
                hot.path_params,
                headers.content_type.decode("latin-1"),
                headers.encoding.decode("latin-1"),
                None if headers.header_length is None else headers.header_length.decode("latin-1"),
            )
            reply = await hot.endpoint(call)
        except ApiError as exc:
            return error_answer(rid, exc)
        except ClientDisconnected:
            raise
        except Exception:
            log.exception("unexpected error serving %s", hot.template)
            return error_answer(rid, ApiError("internal server error"))
        return (
            200,
            [
                (b"content-type", reply.content_type),
                (b"content-length", b"%d" % len(reply.body)),
                (b"x-model-version", reply.model_version.encode()),
                (b"x-request-id", rid),
                *reply.headers,
            ],
            reply.body,
        )

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any other request: through FastAPI, with the request id, limit and records."""
        started = time.perf_counter()
        headers = RequestHeaders(scope["headers"])
        rid = headers.request_id or self._new_request_id()
        rid_text = rid.decode()
        token = request_id.set(rid_text)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            if headers.length is not None and _too_long(headers.length, self.max_body_bytes):
                status = await send_error(send, rid, self._refusal(headers.length))
            else:
                await self.app(scope, self._counting(receive), send_with_id)
        except ClientDisconnected:
            status = 499
        finally:
            seconds = time.perf_counter() - started
            self._record(
                scope["method"],
                scope["path"],
                _template(scope),
                status,
                seconds,
                rid_text,
                scope.get("client"),
                scope.get("http_version", "1.1"),
            )
            request_id.reset(token)

    def _new_request_id(self) -> bytes:
        return b"%s%016x" % (self._id_prefix, next(self._ids))

    async def _body(self, message: Message, receive: Receive) -> bytes:
        """The whole body from its first message on, at most MAX_BODY_BYTES of it (the
        protocol bounds the wait for the rest)."""
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

    def _record(
        self,
        method: str,
        path: str,
        template: str,
        status: int,
        seconds: float,
        rid: str,
        client: tuple[str, int] | None,
        http_version: str,
    ) -> None:
        self.metrics.record_request(method, template, status, seconds)
        if self.access_log is None or (status == 200 and path in QUIET_PATHS):
            return
        self.access_log.write(rid, client, method, path, http_version, template, status, seconds)


def error_answer(rid: bytes, exc: ApiError) -> Answer:
    """{"error": message} with the error's status; closes the connection if it must."""
    body = orjson.dumps({"error": exc.message})
    headers = [
        (b"content-type", JSON),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", rid),
    ]
    if exc.close_connection:
        headers.append((b"connection", b"close"))
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
        return False  # h11/httptools reject a malformed Content-Length before we see it
