"""Ranged, concurrent, verified HTTP downloads, written in place.

Every source that speaks HTTP (gs://, https://) hands its objects to one `Downloader`:

    fetch(job) ──► slices [0, S) [S, 2S) ... ──► shared queue ──► N worker threads
       │                                          │ GET Range: bytes=a-b, 1 MiB blocks:
       │                                          │ socket ─readinto─► pool buffer
       │                                          │ pool buffer ─pwrite (O_DIRECT)─► file
       │                                          ▼ the buffer, in its slice's list
       └── hashes the buffers in file order as they arrive: crc32c (or md5) for the
           whole object, checked against what storage lists, and sha256 for the
           manifest; then gives them back to the pool.

Each block is received straight into a buffer of a fixed pool (`buffer_bytes`, shared
by all objects) and written from there with O_DIRECT where the filesystem supports it:
no copy into the page cache, which on a small machine costs more CPU than the hashing
does (and counts against the pod's memory limit). Elsewhere, or if the volume refuses
an aligned write, blocks go through the page cache.

The bytes are hashed from those buffers, never read back from the file: the hashing
thread is the one part that cannot run in parallel (sha256 is sequential), so it does
nothing else. A worker finding the pool empty waits for the hashing to catch up, unless
its block belongs to the slice being hashed: that one always gets a buffer, so the
hashing never waits on a worker that waits on it. Memory is the pool (plus a buffer or
two lent to the slice being hashed), whatever the object's size; buffers are reused,
never reallocated.

A slice that fails is retried from its last block written (at most one block back), with
exponential backoff and jitter, on connection errors, resets, stalls (no byte for
`stall_seconds`) and 408/429/5xx; 404 and 401/403 fail at once. Several `fetch` calls
may run at the same time (several objects in parallel): they share the workers, so the
number of connections stays bounded."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.client
import logging
import mmap
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
_BLOCK = MIB  # unit of receiving, writing, hashing and retrying; a multiple of _ALIGN
_RESERVED = 2  # pool buffers only the slices being hashed may take
_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffer addresses are multiples of this
_ADVISE_BYTES = 8 * MIB
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TransferSettings:
    workers: int = 8  # concurrent range requests, over all objects
    slice_bytes: int = 32 * MIB  # objects above this are fetched in slices of this size
    attempts: int = 5  # per slice, counted since its last block written
    connect_timeout: float = 10.0
    stall_seconds: float = 30.0  # no byte for this long: drop the connection, retry
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    buffer_bytes: int = 32 * MIB  # the pool of received blocks not yet hashed, all objects
    direct_io: bool = True  # O_DIRECT writes where the filesystem allows them


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

    def __init__(
        self, job: Job, fd: int, direct_fd: int | None, slice_bytes: int, progress: Progress
    ) -> None:
        self.job = job
        self.fd = fd
        self.direct_fd = direct_fd  # the same file opened with O_DIRECT, while it works
        self.progress = progress
        self.slices = [
            (start, min(start + slice_bytes, job.size)) for start in range(0, job.size, slice_bytes)
        ]
        # Per slice, the blocks written and not yet hashed, in order. Under `cond`.
        self.pending: list[list[tuple[mmap.mmap, int]]] = [[] for _ in self.slices]
        self.done = [False] * len(self.slices)
        self.hashing = 0  # the slice being hashed: its blocks never wait for a buffer
        self.error: BaseException | None = None
        self.cond = threading.Condition()

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
        # The buffer pool, under _lock: free buffers, and how many exist.
        self._free: list[mmap.mmap] = []
        self._buffers = 0
        self._pool_size = max(_RESERVED + 1, settings.buffer_bytes // _BLOCK)
        self._room = threading.Condition(self._lock)  # notified as buffers come back

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
            direct_fd = _open_direct(job.dest) if self.settings.direct_io and job.size else None
            state = _Fetch(job, fd, direct_fd, self.settings.slice_bytes, progress)
            for index in range(len(state.slices)):
                self._queue.put((state, index))
            try:
                sha256 = self._hash_in_order(state)
                if direct_fd is not None:
                    os.ftruncate(fd, job.size)  # the last block was padded to _ALIGN
                return sha256
            except BaseException as exc:
                state.fail(exc)  # the workers skip this job's remaining slices
                self._release(state)
                raise
            finally:
                if direct_fd is not None:
                    os.close(direct_fd)
        finally:
            os.close(fd)

    # --- the hashing side: the calling thread ------------------------------------
    def _hash_in_order(self, state: _Fetch) -> str:
        job = state.job
        sha256 = hashlib.sha256()
        crc = google_crc32c.Checksum()
        md5 = hashlib.md5(usedforsecurity=False) if job.md5 and not job.crc32c else None
        hashed = advised = 0
        for index, (start, end) in enumerate(state.slices):
            with state.cond:
                state.hashing = index
            with self._room:
                self._room.notify_all()  # a worker waiting to read this slice may go
            finished = False
            while not finished:
                with state.cond:
                    while not state.pending[index] and not state.done[index]:
                        if state.error is not None:
                            raise state.error
                        if self._cancelled.is_set():
                            raise LoaderError(f"{job.label}: download cancelled")
                        state.cond.wait(0.05)
                    if state.error is not None:
                        raise state.error
                    blocks, state.pending[index] = state.pending[index], []
                    finished = state.done[index]
                for buffer, length in blocks:
                    with memoryview(buffer) as view:
                        sha256.update(view[:length])
                        if md5 is not None:
                            md5.update(view[:length])
                    crc.update(buffer[:length])  # google-crc32c takes bytes only: a copy
                    hashed += length
                    self._give_back(buffer)
            if hashed != end:
                raise IntegrityError(f"{job.label}: slice {start}-{end} ended at byte {hashed}")
            if hashed - advised >= _ADVISE_BYTES or hashed == job.size:
                # Bytes written through the page cache (no O_DIRECT here): start writing
                # them to disk now (the final fsync then has little left) and let the
                # kernel drop them once written, as they count against the pod's memory.
                os.posix_fadvise(state.fd, advised, hashed - advised, os.POSIX_FADV_DONTNEED)
                advised = hashed
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

    def _release(self, state: _Fetch) -> None:
        """Give a failed fetch's unhashed buffers back to the pool."""
        with state.cond:
            blocks = [block for blocks in state.pending for block in blocks]
            state.pending = [[] for _ in state.slices]
        for buffer, _ in blocks:
            self._give_back(buffer)

    def _take(self, state: _Fetch, index: int) -> mmap.mmap | None:
        """A buffer from the pool, once one is free; at once for the slice being hashed.
        None if the fetch has failed or been cancelled meanwhile."""
        with self._room:
            while True:
                if state.error is not None or self._cancelled.is_set():
                    return None
                hashing = index == state.hashing
                # The last few free buffers are kept for the slices being hashed.
                if len(self._free) > (0 if hashing else _RESERVED):
                    return self._free.pop()
                if self._buffers < self._pool_size - _RESERVED or hashing:
                    self._buffers += 1
                    break
                self._room.wait(0.05)
        # Anonymous memory, page-aligned as O_DIRECT needs; faulted in once, then reused.
        return mmap.mmap(-1, _BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def _give_back(self, buffer: mmap.mmap) -> None:
        with self._room:
            if self._buffers > self._pool_size:
                self._buffers -= 1  # lent to the slice being hashed beyond the pool
                # A failed read's traceback may still hold a view of it: then it is
                # freed with the traceback instead.
                with contextlib.suppress(BufferError):
                    buffer.close()
            else:
                self._free.append(buffer)
            self._room.notify()  # only workers outside the slice being hashed wait

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
                with state.cond:
                    state.done[index] = True
                    state.cond.notify_all()

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
        """GET bytes [cursor[0], end) into the file, advancing cursor[0] block by block."""
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
                length = min(_BLOCK, end - cursor[0])
                buffer = self._take(state, index)
                if buffer is None:
                    return
                queued = False
                try:
                    _read_into(response, buffer, length)
                    self._write_block(state, buffer, length, cursor[0])
                    queued = self._hand_over(state, index, buffer, length)
                finally:
                    if not queued:
                        self._give_back(buffer)
                if not queued:
                    return
                cursor[0] += length
                state.progress(length)

    def _write_block(self, state: _Fetch, buffer: mmap.mmap, length: int, offset: int) -> None:
        """Write one block at `offset` of the file: O_DIRECT if the file allows it, else
        through the page cache."""
        written = 0
        direct_fd = state.direct_fd
        with memoryview(buffer) as view:
            try:
                if direct_fd is not None:
                    # The object's last block is padded to _ALIGN; fetch() truncates the file.
                    aligned = -(-length // _ALIGN) * _ALIGN
                    try:
                        written = min(os.pwrite(direct_fd, view[:aligned], offset), length)
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        log.debug(
                            "%s: O_DIRECT write refused; using the page cache", state.job.dest
                        )
                        state.direct_fd = None
                while written < length:
                    written += os.pwrite(state.fd, view[written:length], offset + written)
            except OSError as exc:
                raise _destination_error(state.job.dest, exc) from exc

    def _hand_over(self, state: _Fetch, index: int, buffer: mmap.mmap, length: int) -> bool:
        """Queue a written block for hashing; False if the fetch has failed meanwhile."""
        with state.cond:
            if state.error is not None or self._cancelled.is_set():
                return False  # nobody hashes this any more
            state.pending[index].append((buffer, length))
            state.cond.notify_all()
        return True

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


def _read_into(response: requests.Response, buffer: mmap.mmap, length: int) -> None:
    """Receive the next `length` bytes of the body straight into `buffer`.

    Through the http.client response under urllib3's (`raw._fp`): its readinto() fills
    our buffer from the socket with no intermediate copy, where urllib3's own read()
    allocates a new object per call (faults and fragmentation at 1 GB/s) and its
    readinto() copies. A block is the unit of writing and of retrying: one cut short by
    a reset or a stall is dropped and fetched again.
    """
    with memoryview(buffer) as view:
        try:
            received = response.raw._fp.readinto(view[:length])
        except TimeoutError as exc:  # the read timeout: no byte for stall_seconds
            raise _Retryable("stalled: no byte within the read timeout") from exc
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise _Retryable(_brief(exc)) from exc
    if received < length:
        raise _Retryable("connection closed before the range was complete")


def _open_direct(path: Path) -> int | None:
    """The file opened for O_DIRECT writes, or None where the filesystem has no O_DIRECT."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise _destination_error(path, exc) from exc


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
