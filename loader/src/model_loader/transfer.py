"""Ranged, concurrent, verified HTTP downloads, written in place.

Every source that speaks HTTP (gs://, https://) hands its objects to one `Downloader`:

    fetch(job) ──► slices [0, S) [S, 2S) ... ──► shared queue ──► N worker threads
       │                                                           │ GET Range: bytes=a-b
       │                                                           ▼ os.pwrite(fd, buf, offset)
       └── hashes the file behind the writers, in order: crc32c (or md5) for the whole
           object, checked against what storage lists, and sha256 for the manifest.

Memory is one buffer per worker plus one hash buffer per object being fetched, whatever
the object's size. A slice that fails is retried from the byte where it stopped, with
exponential backoff and jitter, on connection errors, resets, stalls (no byte for
`stall_seconds`) and 408/429/5xx; 404 and 401/403 fail at once. Several `fetch` calls
may run at the same time (several objects in parallel): they share the workers, so the
number of connections stays bounded.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import queue
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import requests
import urllib3

from model_loader.errors import (
    DESTINATION_ERRNOS,
    DestinationError,
    IntegrityError,
    LoaderError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SourceUnavailableError,
)

log = logging.getLogger(__name__)

MIB = 1 << 20
_READ_BUFFER = MIB
_HASH_BUFFER = 4 * MIB
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TransferSettings:
    workers: int = 8  # concurrent range requests, over all objects
    slice_bytes: int = 32 * MIB  # objects above this are fetched in slices of this size
    attempts: int = 5  # per slice, counted since its last byte received
    connect_timeout: float = 10.0
    stall_seconds: float = 30.0  # no byte for this long: drop the connection, retry
    backoff_initial: float = 0.5
    backoff_max: float = 10.0


@dataclass
class Job:
    """One object to fetch: where from, where to, and what it must hash to."""

    url: str
    dest: Path
    size: int
    label: str  # the object's URI, for messages
    crc32c: str | None = None  # base64 of the big-endian CRC32C, as GCS reports it
    md5: str | None = None  # base64, as GCS reports it
    headers: Mapping[str, str] = field(default_factory=dict)


class _Retryable(Exception):
    pass


class _Fetch:
    """The state of one `Downloader.fetch`: its file, its slices, the first error."""

    def __init__(self, job: Job, fd: int, slice_bytes: int, progress: Progress) -> None:
        self.job = job
        self.fd = fd
        self.progress = progress
        self.slices = [
            (start, min(start + slice_bytes, job.size)) for start in range(0, job.size, slice_bytes)
        ]
        self.done = [False] * len(self.slices)
        # Each slice is written in order from its start: bytes [start, cursors[i]) are in.
        self.cursors = [start for start, _ in self.slices]
        self.first_missing = 0
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def frontier(self) -> int:
        """Every byte below this offset is written (read under `cond`)."""
        while self.first_missing < len(self.done) and self.done[self.first_missing]:
            self.first_missing += 1
        if self.first_missing == len(self.done):
            return self.job.size
        return self.cursors[self.first_missing]

    def finish_slice(self, index: int) -> None:
        with self.cond:
            self.done[index] = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()


class Downloader:
    def __init__(self, session: requests.Session, settings: TransferSettings) -> None:
        self.session = session
        self.settings = settings
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=settings.workers + 2, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._queue: queue.Queue[tuple[_Fetch, int]] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop every fetch: workers drop their slices at the next buffer."""
        self._cancelled.set()

    def fetch(self, job: Job, progress: Progress = lambda n: None) -> str:
        """Download `job` to `job.dest` (created), verify it, return its sha256 (hex)."""
        self._start_workers()
        try:
            fd = os.open(job.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise _destination_error(job.dest, exc) from exc
        try:
            if job.size:
                try:
                    # Reserve the space now: a full volume fails here, not mid-download.
                    os.posix_fallocate(fd, 0, job.size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise _destination_error(job.dest, exc) from exc
            state = _Fetch(job, fd, self.settings.slice_bytes, progress)
            for index in range(len(state.slices)):
                self._queue.put((state, index))
            try:
                return self._hash_behind(state)
            except BaseException as exc:
                state.fail(exc)  # the workers skip this job's remaining slices
                raise
        finally:
            os.close(fd)

    # --- the hashing side: the calling thread ------------------------------------
    def _hash_behind(self, state: _Fetch) -> str:
        job = state.job
        sha256 = hashlib.sha256()
        crc = google_crc32c.Checksum()
        md5 = hashlib.md5(usedforsecurity=False) if job.md5 and not job.crc32c else None
        read_fd = os.open(job.dest, os.O_RDONLY)
        try:
            hashed = 0
            while hashed < job.size:
                with state.cond:
                    # Follow the writers closely: the first unfinished slice's cursor
                    # moves with every write, so poll it rather than wait for the slice.
                    while (limit := state.frontier()) <= hashed and state.error is None:
                        if self._cancelled.is_set():
                            raise LoaderError(f"{job.label}: download cancelled")
                        state.cond.wait(0.02)
                    if state.error is not None:
                        raise state.error
                while hashed < limit:
                    chunk = os.pread(read_fd, min(_HASH_BUFFER, limit - hashed), hashed)
                    if not chunk:
                        raise IntegrityError(f"{job.label}: the file ended at byte {hashed}")
                    sha256.update(chunk)
                    crc.update(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    # Start writing these pages to disk now (the final fsync then has
                    # little left) and let the kernel drop them once written: the page
                    # cache a big model leaves counts against the pod's memory limit.
                    os.posix_fadvise(read_fd, hashed, len(chunk), os.POSIX_FADV_DONTNEED)
                    hashed += len(chunk)
        finally:
            os.close(read_fd)
        if job.crc32c is not None:
            got = base64.b64encode(crc.digest()).decode()
            if got != job.crc32c:
                raise IntegrityError(
                    f"{job.label}: crc32c of the downloaded bytes is {got}, storage lists "
                    f"{job.crc32c}; nothing was published"
                )
        elif md5 is not None:
            got = base64.b64encode(md5.digest()).decode()
            if got != job.md5:
                raise IntegrityError(
                    f"{job.label}: md5 of the downloaded bytes is {got}, storage lists "
                    f"{job.md5}; nothing was published"
                )
        return sha256.hexdigest()

    # --- the network side: worker threads ----------------------------------------
    def _start_workers(self) -> None:
        with self._lock:
            while len(self._workers) < self.settings.workers:
                # Daemons: a worker blocked on a dead connection never holds up the exit.
                worker = threading.Thread(
                    target=self._work, name=f"download-{len(self._workers)}", daemon=True
                )
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while True:
            state, index = self._queue.get()
            if state.error is not None or self._cancelled.is_set():
                continue
            try:
                self._fetch_slice(state, index)
            except BaseException as exc:  # handed to the fetching thread, raised there
                state.fail(exc)
            else:
                state.finish_slice(index)

    def _fetch_slice(self, state: _Fetch, index: int) -> None:
        job = state.job
        start, end = state.slices[index]
        cursor = [start]  # advanced by _get_range as bytes land, kept across retries
        failures = 0
        while cursor[0] < end:
            if state.error is not None or self._cancelled.is_set():
                return
            before = cursor[0]
            try:
                self._get_range(state, index, cursor, end)
            except _Retryable as exc:
                if cursor[0] > before:
                    failures = 0  # it made progress: count from here
                position = cursor[0]
                failures += 1
                if failures >= self.settings.attempts:
                    raise SourceUnavailableError(
                        f"{job.label}: gave up at byte {position} after "
                        f"{self.settings.attempts} attempts ({exc})"
                    ) from exc
                delay = min(
                    self.settings.backoff_max, self.settings.backoff_initial * 2 ** (failures - 1)
                ) * random.uniform(0.5, 1.0)
                log.warning(
                    "%s: %s at byte %d; retry %d/%d in %.1f s",
                    job.label,
                    exc,
                    position,
                    failures,
                    self.settings.attempts - 1,
                    delay,
                )
                self._cancelled.wait(delay)

    def _get_range(self, state: _Fetch, index: int, cursor: list[int], end: int) -> None:
        """GET bytes [cursor[0], end) into the file, advancing cursor[0] as they land."""
        job = state.job
        start = cursor[0]
        try:
            response = self.session.get(
                job.url,
                headers={
                    **job.headers,
                    "Range": f"bytes={start}-{end - 1}",
                    "Accept-Encoding": "identity",
                },
                stream=True,
                timeout=(self.settings.connect_timeout, self.settings.stall_seconds),
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retryable(_brief(exc)) from exc
        with contextlib.closing(response):
            _check_status(response, job)
            if response.status_code == 200:
                # The server ignored Range and sends the whole object: skip to `start`.
                skip = start
                while skip:
                    skip -= len(self._read(response, min(_READ_BUFFER, skip)))
            while cursor[0] < end:
                if state.error is not None or self._cancelled.is_set():
                    return
                data = self._read(response, min(_READ_BUFFER, end - cursor[0]))
                try:
                    written = os.pwrite(state.fd, data, cursor[0])
                except OSError as exc:
                    raise _destination_error(job.dest, exc) from exc
                cursor[0] += written
                state.cursors[index] = cursor[0]
                state.progress(written)

    @staticmethod
    def _read(response: requests.Response, limit: int) -> bytes:
        # read1: whatever has arrived (up to `limit`), so every byte received before a
        # reset or a stall is written and kept; read()/readinto() wait to fill it.
        try:
            data = response.raw.read1(limit)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Retryable(_brief(exc)) from exc
        if not data:
            raise _Retryable("connection closed before the range was complete")
        return data  # type: ignore[no-any-return]


def _check_status(response: requests.Response, job: Job) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    reason = f"HTTP {status} {response.reason or ''}".strip()
    if status in _RETRY_STATUS:
        raise _Retryable(reason)
    if status == 416:
        raise IntegrityError(f"{job.label}: {reason}: the object is shorter than listed")
    if status in (404, 410):
        raise ObjectNotFoundError(f"{job.label}: {reason} (removed after it was listed?)")
    if status in (401, 403):
        raise PermissionDeniedError(f"{job.label}: {reason}")
    raise LoaderError(f"{job.label}: unexpected {reason}")


def _destination_error(path: Path, exc: OSError) -> LoaderError:
    if exc.errno in DESTINATION_ERRNOS:
        return DestinationError(f"writing {path}: {exc.strerror}")
    return LoaderError(f"writing {path}: {exc}")


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
