"""One pure-ASGI middleware for every HTTP request: request id, body limit, metrics and
the access log. Pure ASGI (no BaseHTTPMiddleware) so it costs microseconds per request.

It also dispatches the few hot operations (POST /predict, V2 infer, ...) by exact
method and path straight to their endpoints: FastAPI's router and per-route machinery
cost several times a small model's inference. Everything else, including the 404/405
answers, goes through FastAPI, and OpenAPI describes the same endpoints.
"""

from __future__ import annotations

import asyncio
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

from model_api.errors import ApiError, PayloadTooLargeError, RequestTimeoutError, error_response
from model_api.logging import request_id
from model_api.metrics import Metrics

access_log = logging.getLogger("model_api.access")

# Probes and scrapes come every few seconds; their successful lines would drown the rest.
QUIET_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Accepted as given: what tracing systems and proxies send (uuids, hex, base64url-ish).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
UNMATCHED = "<unmatched>"

Endpoint = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    endpoint: Endpoint
    template: str  # the route's path template, as the metrics label it
    path_params: dict[str, str] = field(default_factory=dict)


# (method, exact path) -> FastRoute; filled by the app (V2 paths once the model is known).
FastRoutes = dict[tuple[str, str], FastRoute]


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        fast_routes: FastRoutes,
        access_log: bool = True,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.access_log = access_log
        # Request ids: a random prefix per process and a counter - unique across workers
        # and pods without a random syscall per request.
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        # (method, route, status) -> (counter child, histogram child): labels() once each.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.fast_routes = fast_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = b""
        length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
                rid = value
            elif name == b"content-length":
                length = value
        if not rid:
            rid = f"{self._id_prefix}{next(self._ids):016x}".encode()
        token = request_id.set(rid.decode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        fast = self.fast_routes.get((scope["method"], scope["path"]))
        try:
            if length is not None and _too_long(length, self.max_body_bytes):
                await self._refuse(send_with_id, f"{length.decode(errors='replace')} bytes")
            elif fast is not None:
                scope["path_params"] = fast.path_params
                request = Request(scope, self._counting(receive))
                try:
                    response = await fast.endpoint(request, **fast.path_params)
                except ApiError as exc:
                    response = error_response(exc)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, self._counting(receive), send_with_id)
        finally:
            template = fast.template if fast is not None else _template(scope)
            self._record(scope, template, status, time.perf_counter() - started)
            request_id.reset(token)

    def _counting(self, receive: Receive) -> Receive:
        """A receive that refuses to pass on more than MAX_BODY_BYTES of a streamed body,
        or to wait for it longer than API_BODY_TIMEOUT_SECONDS after the headers."""
        limit = self.max_body_bytes
        seen = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def counting_receive() -> Message:
            nonlocal seen
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                seconds = f"API_BODY_TIMEOUT_SECONDS={self.body_timeout:g}"
                raise RequestTimeoutError(f"request body not received within {seconds}") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"request body exceeds MAX_BODY_BYTES={limit}")
            return message

        return counting_receive

    async def _refuse(self, send: Send, size: str) -> None:
        body = orjson.dumps(
            {"error": f"request body of {size} exceeds MAX_BODY_BYTES={self.max_body_bytes}"}
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, template: str, status: int, seconds: float) -> None:
        method = scope["method"]
        series = self._series.get((method, template, status))
        if series is None:
            series = (
                self.metrics.requests.labels(method, template, str(status)),
                self.metrics.latency.labels(method, template),
            )
            self._series[(method, template, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        path = scope["path"]
        if not self.access_log or (status == 200 and path in QUIET_PATHS):
            return
        client = scope.get("client")
        host = f"{client[0]}:{client[1]}" if client else "-"
        access_log.info(
            '%s - "%s %s HTTP/%s" %d %.2fms',
            host,
            method,
            path,
            scope.get("http_version", "1.1"),
            status,
            seconds * 1000,
            extra={
                "client": host,
                "method": method,
                "path": path,
                "route": template,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            },
        )


def _template(scope: Scope) -> str:
    route: Any = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED


def _too_long(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return False  # h11/httptools reject a malformed Content-Length before we see it
