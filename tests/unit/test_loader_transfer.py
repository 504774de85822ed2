"""model_loader.transfer: the ranged downloader against an in-process HTTP origin.

The origin is `FaultProxy` serving objects from memory on a loopback port of this
process (no emulator, no subprocess): it answers Range requests, and misbehaves on
demand — resets, stalls, bodies cut short, flipped bytes, status codes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import pytest

from model_loader.errors import (
    IntegrityError,
    LoaderError,
    ObjectNotFoundError,
    SourceUnavailableError,
)
from model_loader.transfer import BLOCK, Downloader, Job, TransferSettings
from tests.integration.faultproxy import Fault, FaultProxy

MIB = 1 << 20
DATA = os.urandom(5 * MIB + 12345)  # not a multiple of a block or a slice
PATH = "/bucket/model.onnx"


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


@pytest.fixture
def origin() -> Iterator[FaultProxy]:
    server = FaultProxy(objects={PATH: DATA}).start()
    yield server
    server.stop()


@pytest.fixture
def downloaders() -> Iterator[list[Downloader]]:
    made: list[Downloader] = []
    yield made
    for downloader in made:
        downloader.close()


def fetch(
    made: list[Downloader], origin: FaultProxy, dest: Path, path: str = PATH, **settings: object
) -> tuple[Downloader, str]:
    """Download `path` with a downloader of small slices and quick retries."""
    defaults: dict[str, object] = {
        "workers": 4,
        "slice_bytes": MIB,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "stall_seconds": 5.0,
    }
    downloader = Downloader(TransferSettings(**{**defaults, **settings}))  # type: ignore[arg-type]
    made.append(downloader)
    data = origin.objects[path]
    job = Job(url=f"{origin.url}{path}", dest=dest, size=len(data), label=path, crc32c=crc32c(data))
    return downloader, downloader.submit(job).result(timeout=120)


def starts(origin: FaultProxy) -> list[int]:
    return sorted(int(s.range.split("=")[1].split("-")[0]) for s in origin.seen if s.range)


@pytest.mark.parametrize("direct_io", [True, False], ids=["o_direct", "page_cache"])
def test_an_object_is_fetched_as_ranges_of_its_slices(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path, direct_io: bool
) -> None:
    _, sha256 = fetch(downloaders, origin, tmp_path / "m", direct_io=direct_io)
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "m").read_bytes() == DATA  # the padded last block cut back to size
    ranges = sorted(s.range for s in origin.seen if s.range)
    assert ranges == sorted(
        f"bytes={i * MIB}-{min((i + 1) * MIB, len(DATA)) - 1}" for i in range(6)
    )
    assert all(s.status == 206 for s in origin.seen)


def test_a_reset_mid_range_resumes_from_the_last_whole_block(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    # 4 MiB slices of 1 MiB blocks: the reset cuts the first slice in its third block.
    origin.faults = [Fault(match=f"{PATH} bytes=0-", reset_after=2 * BLOCK + 500_000)]
    _, sha256 = fetch(downloaders, origin, tmp_path / "m", slice_bytes=4 * MIB)
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "m").read_bytes() == DATA
    resumed = [s.range for s in origin.seen if s.range and s.range.startswith(f"bytes={2 * MIB}-")]
    assert resumed == [f"bytes={2 * MIB}-{4 * MIB - 1}"], [s.range for s in origin.seen]


def test_a_stall_is_dropped_and_the_range_retried(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.faults = [Fault(match=PATH, stall_after=100_000, stall_seconds=60)]
    started = time.monotonic()
    _, sha256 = fetch(downloaders, origin, tmp_path / "m", stall_seconds=0.5)
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert time.monotonic() - started < 60  # did not wait for the stalled connection
    assert len([s for s in origin.seen if s.range]) == 6 + 1


def test_a_body_cut_short_is_retried(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    # The server closes cleanly after 300 kB of a 1 MiB range it announced in full.
    origin.faults = [Fault(match=PATH, close_after=300_000, times=2)]
    _, sha256 = fetch(downloaders, origin, tmp_path / "m")
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert len([s for s in origin.seen if s.range]) == 6 + 2


def test_a_flipped_byte_is_caught_by_the_checksum(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.faults = [Fault(match=PATH, corrupt=True)]
    with pytest.raises(IntegrityError, match=r"crc32c of the downloaded bytes is \S+, storage"):
        fetch(downloaders, origin, tmp_path / "m")


def test_md5_is_checked_where_storage_lists_no_crc32c(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.faults = [Fault(match=PATH, corrupt=True)]
    downloader = Downloader(TransferSettings(workers=2, slice_bytes=MIB))
    downloaders.append(downloader)
    md5 = base64.b64encode(hashlib.md5(DATA).digest()).decode()
    job = Job(url=f"{origin.url}{PATH}", dest=tmp_path / "m", size=len(DATA), label="m", md5=md5)
    with pytest.raises(IntegrityError, match="md5 of the downloaded bytes"):
        downloader.submit(job).result(timeout=120)


def test_a_server_ignoring_range_is_read_from_the_right_offset(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.ranges = False
    _, sha256 = fetch(downloaders, origin, tmp_path / "m")
    assert sha256 == hashlib.sha256(DATA).hexdigest()
    assert all(s.status == 200 for s in origin.seen)


def test_503_is_retried_and_404_is_not(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.faults = [Fault(match=PATH, status=503, times=3)]
    fetch(downloaders, origin, tmp_path / "m")
    assert sum(s.status == 503 for s in origin.seen) == 3
    origin.seen.clear()
    origin.faults = [Fault(match=PATH, status=404, times=100)]
    with pytest.raises(ObjectNotFoundError, match="HTTP 404"):
        fetch(downloaders, origin, tmp_path / "m2")
    assert sum(s.status == 404 for s in origin.seen) <= 4  # one per worker at most


def test_retries_are_bounded(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.faults = [Fault(match=PATH, status=503, times=1000)]
    with pytest.raises(SourceUnavailableError, match="after 3 attempts"):
        fetch(downloaders, origin, tmp_path / "m", attempts=3)


def test_the_buffer_pool_never_exceeds_its_bound(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    # A pool of 5 one-MiB buffers for 4 workers, three objects at once, and the first
    # range of each held back: the later slices fill the pool and must wait for the
    # hashing, which waits for those first ranges.
    for name in ("a", "b", "c"):
        origin.objects[f"/bucket/{name}"] = os.urandom(6 * MIB + 1)
    origin.faults = [Fault(match=f"/bucket/{n} bytes=0-", delay_seconds=1) for n in "abc"]
    settings = TransferSettings(workers=4, slice_bytes=MIB, buffer_bytes=4 * MIB)
    assert settings.pool_size == 5
    downloader = Downloader(settings)
    downloaders.append(downloader)
    jobs = [
        Job(
            url=f"{origin.url}/bucket/{n}",
            dest=tmp_path / n,
            size=len(origin.objects[f"/bucket/{n}"]),
            label=n,
            crc32c=crc32c(origin.objects[f"/bucket/{n}"]),
        )
        for n in "abc"
    ]
    futures = [downloader.submit(job) for job in jobs]
    for job, future in zip(jobs, futures, strict=True):
        data = origin.objects[f"/bucket/{job.label}"]
        assert future.result(timeout=120) == hashlib.sha256(data).hexdigest()
        assert job.dest.read_bytes() == data
    assert 0 < downloader.peak_buffers <= settings.pool_size


def test_one_pool_of_workers_serves_every_object(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    for i in range(12):
        origin.objects[f"/bucket/f{i}"] = os.urandom(300_000 + i)
    downloader = Downloader(TransferSettings(workers=3, slice_bytes=100_000))
    downloaders.append(downloader)
    futures = {
        i: downloader.submit(
            Job(
                url=f"{origin.url}/bucket/f{i}",
                dest=tmp_path / f"f{i}",
                size=len(origin.objects[f"/bucket/f{i}"]),
                label=f"f{i}",
            )
        )
        for i in range(12)
    }
    for i, future in futures.items():
        assert (
            future.result(timeout=120)
            == hashlib.sha256(origin.objects[f"/bucket/f{i}"]).hexdigest()
        )
    assert origin.most_in_flight <= 3
    assert len([t for t in threading.enumerate() if t.name.startswith("download-")]) >= 3


def test_an_empty_object_is_created(
    origin: FaultProxy, downloaders: list[Downloader], tmp_path: Path
) -> None:
    origin.objects["/bucket/empty"] = b""
    _, sha256 = fetch(downloaders, origin, tmp_path / "e", path="/bucket/empty")
    assert sha256 == hashlib.sha256(b"").hexdigest()
    assert (tmp_path / "e").read_bytes() == b""
    assert origin.seen == []


def test_close_fails_what_is_still_running(origin: FaultProxy, tmp_path: Path) -> None:
    origin.faults = [Fault(match=PATH, stall_after=0, stall_seconds=30, times=100)]
    downloader = Downloader(TransferSettings(workers=2, slice_bytes=MIB, stall_seconds=60))
    future = downloader.submit(
        Job(url=f"{origin.url}{PATH}", dest=tmp_path / "m", size=len(DATA), label="m")
    )
    deadline = time.monotonic() + 30
    while not origin.seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    downloader.close()
    with pytest.raises(LoaderError, match="download cancelled"):
        future.result(timeout=10)
    downloader.close()  # idempotent
    with pytest.raises(LoaderError, match="download cancelled"):
        downloader.submit(Job(url=origin.url, dest=tmp_path / "n", size=1, label="n"))
