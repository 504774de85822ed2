"""One pure-ASGI middleware for every HTTP request: request id, body limit, metrics and
the access log. Pure ASGI (no BaseHTTPMiddleware) so it costs microseconds per request."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_api.errors import PayloadTooLargeError
from model_api.logging import request_id
from model_api.metrics import Metrics

access_log = logging.getLogger("model_api.access")

# Probes and scrapes come every few seconds; their successful lines would drown the rest.
QUIET_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/metrics"})
# Accepted as given: what tracing systems and proxies send (uuids, hex, base64url-ish).
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
UNMATCHED = "<unmatched>"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

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
            rid = uuid.uuid4().hex.encode()
        token = request_id.set(rid.decode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        try:
            if length is not None and _too_long(length, self.max_body_bytes):
                await self._refuse(send_with_id, f"{length.decode(errors='replace')} bytes")
            else:
                await self.app(scope, self._counting(receive), send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started, rid)
            request_id.reset(token)

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

    def _record(self, scope: Scope, status: int, seconds: float, rid: bytes) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method = scope["method"]
        self.metrics.requests.labels(method, template, str(status)).inc()
        self.metrics.latency.labels(method, template).observe(seconds)
        path = scope["path"]
        if status == 200 and path in QUIET_PATHS:
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


def _too_long(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return False  # h11/httptools reject a malformed Content-Length before we see it
