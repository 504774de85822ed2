"""A small fault-injecting HTTP proxy to put between the loader and fake-gcs-server.

It forwards every request to the upstream and, for requests whose path and query
contain `Fault.match`, misbehaves the way storage does in production: status bursts,
connection resets mid-body, stalls, bodies cut short, flipped bytes. It records every
request it sees, so tests can count what the loader actually downloaded.

Without an upstream it is the origin itself: it serves `objects` (path -> bytes) from
memory, with Range requests answered 206 (or ignored, `ranges=False`), so the
downloader can be tested in-process with no emulator.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

MEDIA = "alt=media"  # object downloads (listing and metadata requests do not carry it)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
_PIECE = 64 * 1024


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the faults break connections on purpose


@dataclass
class Fault:
    match: str = MEDIA  # in "<path and query> <Range header>", e.g. "model.onnx bytes=0-"
    times: int = 1  # how many matching requests misbehave (then it passes through)
    status: int | None = None  # answer this instead of forwarding
    reset_after: int | None = None  # send this many body bytes, then a TCP reset
    stall_after: int | None = None  # send this many body bytes, then go silent...
    stall_seconds: float = 0.0  # ...for this long, then close
    close_after: int | None = None  # send this many body bytes, then close (FIN): short
    corrupt: bool = False  # flip one byte in the middle of the body
    delay_seconds: float = 0.0  # wait this long before answering


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class FaultProxy:
    upstream: str | None = None  # http://127.0.0.1:PORT; None: serve `objects`
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)  # path (no query) -> body
    ranges: bool = True  # as the origin: honour Range (206), else send it all (200)
    in_flight: int = 0  # requests being answered now, and the most at once
    most_in_flight: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def media_requests(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if MEDIA in s.path]

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.match in path:
                    fault.times -= 1
                    return fault
        return None

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.seen.append(
                Seen(handler.command, handler.path, handler.headers.get("Range"), status)
            )

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._answer(handler)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        fault = self._take_fault(f"{handler.path} {handler.headers.get('Range') or ''}")
        if fault is not None:
            time.sleep(fault.delay_seconds)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if fault is not None and fault.status is not None:
            self._record(handler, fault.status)
            payload = f'{{"error": {{"code": {fault.status}, "message": "injected"}}}}'.encode()
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if self.upstream is None:
            status, headers, data = self._serve(handler)
        else:
            try:
                status, headers, data = self._forward(handler, self.upstream, body)
            except OSError:
                # Upstream down (not started yet): what a load balancer in front would say.
                self._record(handler, 502)
                handler.send_response(502)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        self._record(handler, status)
        handler.send_response(status)
        for key, value in headers:
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if fault is not None and fault.corrupt and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        cut = None
        if fault is not None:
            cuts = (fault.reset_after, fault.stall_after, fault.close_after)
            cut = next((c for c in cuts if c is not None), None)
        sent = 0
        try:
            while sent < len(data):
                if cut is not None and sent >= cut:
                    break
                end = min(len(data), sent + _PIECE, cut if cut is not None else len(data))
                handler.wfile.write(data[sent:end])
                sent = end
            if cut is None or sent >= len(data):
                return
            handler.wfile.flush()
            assert fault is not None
            if fault.reset_after is not None:
                _wait_until_read(handler.connection)  # a reset drops what is still unread
                # SO_LINGER 0: close() sends RST, as a dropped connection does.
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            elif fault.stall_after is not None:
                time.sleep(fault.stall_seconds)
            handler.close_connection = True
            handler.connection.close()
        except OSError:
            handler.close_connection = True

    @staticmethod
    def _forward(
        handler: BaseHTTPRequestHandler, upstream: str, body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        target = urlsplit(upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn.request(handler.command, handler.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, response.getheaders(), data

    def _serve(self, handler: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        data = self.objects.get(urlsplit(handler.path).path)
        if data is None:
            return 404, [], b""
        headers = [("Accept-Ranges", "bytes" if self.ranges else "none"), ("ETag", '"1"')]
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if not self.ranges or wanted is None or handler.command == "HEAD":
            return 200, headers, data
        start = int(wanted[1])
        end = min(int(wanted[2]) + 1 if wanted[2] else len(data), len(data))
        if start >= len(data):
            return 416, headers, b""
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(data)}"))
        return 206, headers, data[start:end]


def _wait_until_read(conn: socket.socket, timeout: float = 30) -> None:
    """Until the client (on this machine) has read everything sent on `conn`, as a
    client far away would have before a reset that comes later; `timeout` at most."""
    ours, theirs = _proc_address(conn.getsockname()), _proc_address(conn.getpeername())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # /proc/net/tcp: "sl local remote st tx_queue:rx_queue ...", one line per end.
        queues = {}
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            queues[fields[1], fields[2]] = tx, rx
        if (ours, theirs) not in queues or (theirs, ours) not in queues:
            return  # a connection gone (or not IPv4 loopback): nothing left to wait for
        if queues[ours, theirs][0] == 0 and queues[theirs, ours][1] == 0:
            return  # nothing left in our send queue, nor unread in theirs
        time.sleep(0.01)


def _proc_address(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the address in host byte order."""
    host, port = address[:2]
    return f"{struct.unpack('=I', socket.inet_aton(host))[0]:08X}:{port:04X}"
