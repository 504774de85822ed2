"""model_api.logging.AccessLog: the access lines' shapes, and how they reach stdout."""

from __future__ import annotations

import asyncio
import json
import os
from select import PIPE_BUF

import pytest

from model_api.logging import AccessLog

RID = "c4558330bb10f6540000000000000001"


def write_lines(log: AccessLog, count: int) -> None:
    async def main() -> None:
        for i in range(count):
            path = f"/predict/{i}"
            log.write(RID, ("127.0.0.1", 5000), "POST", path, "1.1", "/predict", 200, 5e-4)
        log.flush()

    asyncio.run(main())


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_text_lines_look_like_every_other_log_line() -> None:
    r, w = os.pipe()
    write_lines(AccessLog("text", fd=w), 1)
    os.close(w)
    line = read_all(r).decode()
    # "2026-11-28 04:11:19,123 INFO model_api.access [id]: ..." as logging.Formatter writes
    day, clock, level, name, rest = line.split(" ", 4)
    assert len(day) == 10 and len(clock) == 12 and clock[8] == ","
    assert level == "INFO" and name == "model_api.access"
    assert rest == f'[{RID}]: 127.0.0.1:5000 - "POST /predict/0 HTTP/1.1" 200 0.50ms\n'


def test_json_lines_carry_the_fields() -> None:
    r, w = os.pipe()
    write_lines(AccessLog("json", fd=w), 1)
    os.close(w)
    record = json.loads(read_all(r))
    assert record["name"] == "model_api.access" and record["severity"] == "INFO"
    assert record["request_id"] == RID and record["status"] == 200
    assert record["route"] == "/predict" and record["duration_ms"] == 0.5
    assert set(record) >= {"time", "message", "client", "method", "path"}


def test_writes_are_whole_lines_of_at_most_pipe_buf() -> None:
    """Several worker processes share one stdout pipe: a write of at most PIPE_BUF bytes
    is atomic there, so lines from different workers never interleave."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    log = AccessLog("text", fd=w)
    writes: list[bytes] = []
    log._write = writes.append  # type: ignore[method-assign]
    write_lines(log, 500)
    os.close(w)
    os.close(r)
    assert len(writes) > 1
    assert all(len(chunk) <= PIPE_BUF and chunk.endswith(b"\n") for chunk in writes)
    lines = b"".join(writes).splitlines()
    assert [line.split(b'"')[1] for line in lines] == [
        f"POST /predict/{i} HTTP/1.1".encode() for i in range(500)
    ]


def test_lines_are_written_soon_without_a_flush() -> None:
    r, w = os.pipe()
    log = AccessLog("text", fd=w)

    async def main() -> None:
        log.write(RID, None, "GET", "/label", "1.1", "/label", 200, 1e-4)
        await asyncio.sleep(AccessLog.FLUSH_SECONDS * 4)

    asyncio.run(main())
    os.close(w)
    assert b"GET /label" in read_all(r)


def test_a_stdout_without_a_file_descriptor_still_gets_the_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = AccessLog("text")  # capsys: sys.stdout has no fileno()
    write_lines(log, 2)
    assert capsys.readouterr().out.count("model_api.access") == 2
