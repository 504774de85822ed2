"""The loader against the real fake-gcs-server through a fault-injecting proxy.

    loader ──► FaultProxy (503s, resets, stalls, flipped bytes, 403/404) ──► fake-gcs-server

The objects are a few MiB and LOADER_SLICE_MIB=1, so every download is several
concurrent ranges and a fault lands in the middle of one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import google_crc32c
import pytest

from model_load_harness.fakegcs import FakeGcs
from model_load_harness.ports import free_port
from model_loader.transfer import Downloader, Job, TransferSettings
from tests.conftest import MODEL_V1
from tests.integration.conftest import BUCKET, run_loader
from tests.integration.faultproxy import Fault, FaultProxy

BIG = 5 * (1 << 20) + 12345  # not a multiple of the slice size
V1 = f"gs://{BUCKET}/big/v1/"
V2 = f"gs://{BUCKET}/big/v2/"


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fault-gcs-data")
    for version in ("v1", "v2"):
        folder = data / BUCKET / "big" / version
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(os.urandom(BIG))
        (folder / "label.json").write_bytes((MODEL_V1 / "label.json").read_bytes())
    return data


@pytest.fixture(scope="module")
def emulator(fault_data: Path) -> Iterator[FakeGcs]:
    # The loader builds download URLs from STORAGE_EMULATOR_HOST (the proxy), not from
    # the listing's mediaLink, so the emulator's -external-url can stay its own.
    server = FakeGcs(url=f"http://127.0.0.1:{free_port()}", data=fault_data)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def proxy(emulator: FakeGcs) -> Iterator[FaultProxy]:
    p = FaultProxy(upstream=emulator.url).start()
    yield p
    p.stop()


def env(proxy: FaultProxy, model_dir: Path, uri: str = V1, **extra: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": proxy.url,
        "MODEL_URI": uri,
        "MODEL_DIR": str(model_dir),
        "LOADER_WAIT_SECONDS": "10",
        "LOADER_SLICE_MIB": "1",
        "LOADER_CONCURRENCY": "4",
        "LOADER_REQUEST_TIMEOUT_SECONDS": "2",
        "LOADER_PROGRESS_SECONDS": "0.5",
        "LOADER_TERMINATION_LOG": str(model_dir.parent / f"{model_dir.name}.termination-log"),
        **extra,
    }


def source_bytes(data: Path, version: str = "v1") -> bytes:
    return (data / BUCKET / "big" / version / "model.onnx").read_bytes()


def published_model(model_dir: Path) -> bytes:
    return (model_dir / "current" / "model.onnx").read_bytes()


def litter(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name not in ("current", "versions"))


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def assert_published(result: subprocess.CompletedProcess[str], model_dir: Path, data: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert published_model(model_dir) == source_bytes(data)
    assert litter(model_dir) == []
    assert len(list((model_dir / "versions").iterdir())) == 1


def test_clean_run_downloads_in_ranges_and_reports_progress(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    result = run_loader(env(proxy, tmp_path / "m"))
    assert_published(result, tmp_path / "m", fault_data)
    ranges = [s.range for s in proxy.media_requests()]
    assert len(ranges) == 6 + 1  # 6 slices of model.onnx, 1 of label.json
    assert "bytes=5242880-5255224" in ranges
    assert "downloaded 5.0/5.0 MiB (100%)" in result.stderr
    assert "\x1b" not in result.stderr and "\r" not in result.stderr


def test_unchanged_rerun_downloads_nothing(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    assert run_loader(env(proxy, tmp_path)).returncode == 0
    before = len(proxy.media_requests())
    assert before > 0
    again = run_loader(env(proxy, tmp_path))
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stderr
    assert len(proxy.media_requests()) == before


def test_emulator_up_5_s_late(fault_data: Path, tmp_path: Path) -> None:
    late = FakeGcs(url=f"http://127.0.0.1:{free_port()}", data=fault_data)
    proxy = FaultProxy(upstream=late.url).start()

    def start_5_s_after_the_first_request() -> None:
        while not proxy.seen:
            time.sleep(0.05)
        time.sleep(5.0)
        late.start()

    starter = threading.Thread(target=start_5_s_after_the_first_request, daemon=True)
    starter.start()
    try:
        result = run_loader(env(proxy, tmp_path, LOADER_WAIT_SECONDS="30"))
    finally:
        starter.join(timeout=30)
        late.stop()
        proxy.stop()
    assert_published(result, tmp_path, fault_data)
    assert "not answering yet" in result.stderr
    assert sum(s.status == 502 for s in proxy.seen) >= 2


def test_503_bursts_on_listing_and_downloads(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    proxy.faults = [Fault(match="/o?", status=503, times=3), Fault(status=503, times=4)]
    result = run_loader(env(proxy, tmp_path))
    assert_published(result, tmp_path, fault_data)
    assert sum(s.status == 503 for s in proxy.seen) == 7
    assert "HTTP 503" in result.stderr


def test_connection_reset_mid_object_resumes_with_identical_bytes(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    # 4 MiB slices of 1 MiB blocks: the reset cuts the first slice in its third block.
    proxy.faults = [Fault(match="model.onnx", reset_after=2_500_000, times=2)]
    result = run_loader(env(proxy, tmp_path, LOADER_SLICE_MIB="4"))
    assert_published(result, tmp_path, fault_data)
    assert "retry 1/" in result.stderr
    # Resumed from the last whole block written: a range that starts inside a slice.
    starts = [int(s.range.split("=")[1].split("-")[0]) for s in proxy.media_requests() if s.range]
    assert 2 << 20 in starts, starts


def test_stall_is_detected_and_retried(proxy: FaultProxy, fault_data: Path, tmp_path: Path) -> None:
    # A stall far longer than the loader's whole run, start-up included, on a busy machine.
    proxy.faults = [Fault(match="model.onnx", stall_after=100_000, stall_seconds=30)]
    started = time.monotonic()
    result = run_loader(env(proxy, tmp_path, LOADER_REQUEST_TIMEOUT_SECONDS="1"))
    assert_published(result, tmp_path, fault_data)
    assert "stalled" in result.stderr and "retry 1/" in result.stderr
    assert time.monotonic() - started < 30  # did not wait for the stalled connection


def test_corrupted_bytes_exit_6_and_keep_the_previous_version(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    assert run_loader(env(proxy, tmp_path)).returncode == 0
    current = os.readlink(tmp_path / "current")
    proxy.faults = [Fault(match="model.onnx", corrupt=True)]
    result = run_loader(env(proxy, tmp_path, V2))
    assert result.returncode == 6, result.stderr
    assert "crc32c of the downloaded bytes" in error_line(result.stderr)
    assert os.readlink(tmp_path / "current") == current
    assert published_model(tmp_path) == source_bytes(fault_data, "v1")
    assert litter(tmp_path) == []
    termination = Path(env(proxy, tmp_path)["LOADER_TERMINATION_LOG"]).read_text()
    assert termination.startswith("exit 6: integrity failure:")


def test_object_gone_after_listing_is_not_found_fast(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    proxy.faults = [Fault(match="model.onnx", status=404, times=100)]
    started = time.monotonic()
    result = run_loader(env(proxy, tmp_path))
    assert result.returncode == 4, result.stderr
    assert time.monotonic() - started < 10
    assert "HTTP 404" in error_line(result.stderr)
    assert "retry" not in result.stderr
    assert not (tmp_path / "current").exists() and litter(tmp_path) == []


def test_403_is_permission_denied(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.faults = [Fault(match="/o?", status=403, times=100)]
    result = run_loader(env(proxy, tmp_path))
    assert result.returncode == 5, result.stderr
    assert "permission denied" in error_line(result.stderr)
    assert sum("/o?" in s.path for s in proxy.seen) == 1  # not retried


def test_deadline_exits_7_and_publishes_nothing(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.faults = [Fault(match="model.onnx", stall_after=100_000, stall_seconds=40, times=100)]
    started = time.monotonic()
    result = run_loader(
        env(proxy, tmp_path, LOADER_TIMEOUT_SECONDS="3", LOADER_REQUEST_TIMEOUT_SECONDS="30")
    )
    assert result.returncode == 7, result.stderr
    # Ended by the deadline, not by the request timeout (30 s): however slow the start-up.
    assert time.monotonic() - started < 30
    assert "LOADER_TIMEOUT_SECONDS=3" in error_line(result.stderr)
    assert not (tmp_path / "current").exists() and litter(tmp_path) == []


def test_file_size_limit_exits_8_and_publishes_nothing(proxy: FaultProxy, tmp_path: Path) -> None:
    # A destination that takes 1 MiB per file: RLIMIT_FSIZE makes writes past it fail
    # with EFBIG, as a full or quota-limited volume fails with ENOSPC/EDQUOT.
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = subprocess.run(
        [sys.executable, "-m", "model_loader"],
        env={**os.environ, **env(proxy, tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert result.returncode == 8, result.stderr
    assert "File too large" in error_line(result.stderr)
    assert not (tmp_path / "current").exists() and litter(tmp_path) == []


def test_kill_9_mid_download_then_rerun_succeeds_without_litter(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path
) -> None:
    proxy.faults = [Fault(match="model.onnx", stall_after=100_000, stall_seconds=30, times=100)]
    process = subprocess.Popen(
        [sys.executable, "-m", "model_loader"],
        env={**os.environ, **env(proxy, tmp_path, LOADER_REQUEST_TIMEOUT_SECONDS="60")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Mid-download: model.onnx asked for (then stalled) and the staging directory made.
    deadline = time.monotonic() + 30
    while not (
        any("model.onnx" in s.path for s in proxy.media_requests())
        and [p for p in litter(tmp_path) if p.startswith(".staging-")]
    ):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    proxy.faults = []
    result = run_loader(env(proxy, tmp_path))
    assert_published(result, tmp_path, fault_data)
    assert "left by an interrupted run" in result.stderr


@pytest.mark.parametrize("direct_io", [True, False], ids=["o_direct", "page_cache"])
def test_downloader_with_a_small_pool_writes_and_hashes_every_byte(
    proxy: FaultProxy, fault_data: Path, tmp_path: Path, direct_io: bool
) -> None:
    # Four workers, 1 MiB slices and a pool of four 1 MiB buffers: workers wait for the
    # hashing, the slice being hashed borrows beyond the pool, a reset drops a block.
    proxy.faults = [Fault(match="model.onnx", reset_after=600_000, times=1)]
    data = source_bytes(fault_data)
    name = quote("big/v1/model.onnx", safe="")
    job = Job(
        url=f"{proxy.url}/download/storage/v1/b/{BUCKET}/o/{name}?alt=media",
        dest=tmp_path / "model.onnx",
        size=len(data),
        label="model.onnx",
        crc32c=base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
    )
    settings = TransferSettings(
        workers=4,
        slice_bytes=1 << 20,
        buffer_bytes=4 << 20,
        backoff_initial=0.05,
        direct_io=direct_io,
    )
    downloader = Downloader(settings)
    try:
        sha256 = downloader.submit(job).result(timeout=60)
    finally:
        downloader.close()
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert job.dest.read_bytes() == data  # the padded last block was cut back to size
    assert len(proxy.media_requests()) == 6 + 1  # six slices, one of them retried
