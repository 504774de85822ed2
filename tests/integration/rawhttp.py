"""HTTP over raw sockets, for requests an HTTP library would refuse to send (or to send
the way a careless client does): pipelined, split, half-closed, malformed."""

from __future__ import annotations

import socket

from model_load_harness.api import ApiServer


def address(server: ApiServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_request(server: ApiServer, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are; return everything the server answers until it closes."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before it all went out (413): read the answer
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_one_response(sock: socket.socket) -> bytes:
    """One whole response (headers, then Content-Length bytes of body) off a kept-alive
    connection, however TCP happens to split it; the server must have sent no more."""
    (response,) = read_responses(sock, 1, exact=True)
    return response


def read_responses(sock: socket.socket, count: int, exact: bool = False) -> list[bytes]:
    """`count` whole responses off a connection, in order, however TCP splits or joins
    them (pipelined answers often arrive in one read)."""
    data = b""
    responses = []
    while len(responses) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed mid-response: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed mid-body: {data!r}"
            rest += chunk
        responses.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    assert not (exact and data), "the server sent more than asked for"
    return responses


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])
