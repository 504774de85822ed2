"""Ranged, concurrent, verified HTTP downloads, written in place.

Every source that speaks HTTP (gs://, https://) hands its objects to one `Downloader`,
which owns the loader's one pool of workers (LOADER_CONCURRENCY), for every object and
every slice of it:

    submit(job) ──► slices [0, S) [S, 2S) ... ──► shared queue ──► N worker threads
       │                                          │ GET Range: bytes=a-b, 1 MiB blocks:
       │                                          │ socket ─readinto─► pool buffer
       │                                          │ pool buffer ─pwrite (O_DIRECT)─► file
       │                                          ▼ the buffer, in its slice's list
       └── a Future: the sha256      whichever worker finds the next blocks in file order
           of every byte             hashes them: crc32c (or md5) for the whole object,
                                     checked against what storage lists, and sha256 for
                                     the manifest; then gives the buffers back to the pool.

Each block is received straight into a buffer of a fixed pool (`buffer_bytes`, shared
by all objects) through the standard library's `http.client.HTTPResponse.readinto`,
which fills the buffer from the socket with no intermediate object (urllib3's
`readinto` reads into a new bytes object and copies it). It is written from there with
O_DIRECT where the filesystem supports it: no copy into the page cache, which on a small
machine costs more CPU than the hashing does (and counts against the pod's memory
limit). Elsewhere, or if the volume refuses an aligned write, blocks go through the page
cache.

The bytes are hashed from those buffers, never read back from the file, in file order:
a block is hashed once every block before it has been. The pool is bounded: at most
`pool_size` buffers ever exist. A slice that is not the next to be hashed takes a buffer
only while more than `workers` remain, so the slices being hashed (at most one per
object, each owned by one worker) always find one, and hashing never waits on a worker
that waits on it. Memory is the pool, whatever the objects' sizes; buffers are reused,
never reallocated.

A slice that fails is retried from its last block written (at most one block back), with
exponential backoff and jitter, on connection errors, resets, stalls (no byte for
`stall_seconds`), short bodies and 408/429/5xx; 404 and 401/403 fail at once.
Connections are kept alive per worker and reused across slices and objects.
Proxies and CA bundles come from the environment as requests reads them
(HTTPS_PROXY/NO_PROXY, REQUESTS_CA_BUNDLE), so listing and downloading agree.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import logging
import mmap
import os
import queue
import random
import ssl
import threading
from collections.abc import Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urlsplit

import google_crc32c
import requests

from model_loader.errors import (
    DESTINATION_ERRNOS,
    DestinationError,
    IntegrityError,
    LoaderError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SourceUnavailableError,
)

if TYPE_CHECKING:
    from model_loader.config import LoaderSettings

log = logging.getLogger(__name__)

# Listing and metadata requests (requests' connect timeout); downloads use stall_seconds.
CONNECT_TIMEOUT_SECONDS = 10.0
MIB = 1 << 20
BLOCK = MIB  # unit of receiving, writing, hashing and retrying; a multiple of _ALIGN
_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffer addresses are multiples of this
_ADVISE_BYTES = 8 * MIB
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
Progress = Callable[[int], None]
# Adds the request's credentials (an Authorization header) for a URL, refreshing them
# when they expire; called before every request.
Authorize = Callable[[str, MutableMapping[str, str]], None]


@dataclass(frozen=True)
class TransferSettings:
    workers: int = 8  # concurrent range requests, over all objects: the one pool
    slice_bytes: int = 32 * MIB  # objects above this are fetched in slices of this size
    attempts: int = 5  # per slice, counted since its last block written
    # The sockets' timeout, for connecting and for each read: no byte for this long
    # is a stall; the connection is dropped and the range retried.
    stall_seconds: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    buffer_bytes: int = 32 * MIB  # the pool of received blocks not yet hashed, all objects
    direct_io: bool = True  # O_DIRECT writes where the filesystem allows them

    @property
    def pool_size(self) -> int:
        """How many BLOCK buffers may exist at once: the pool's bound."""
        return max(self.buffer_bytes // BLOCK, self.workers + 1)


def transfer_settings(settings: LoaderSettings, slice_bytes: int | None = None) -> TransferSettings:
    """The downloader's settings from the loader's (LOADER_CONCURRENCY, LOADER_SLICE_MIB...)."""
    return TransferSettings(
        workers=settings.concurrency,
        slice_bytes=slice_bytes or settings.slice_mib * MIB,
        attempts=settings.retries,
        stall_seconds=settings.request_timeout_seconds,
    )


@dataclass
class Job:
    """One object to fetch: where from, where to, and what it must hash to."""

    url: str
    dest: Path
    size: int
    label: str  # the object's URI, for messages
    crc32c: str | None = None  # base64 of the big-endian CRC32C, as GCS reports it
    md5: str | None = None  # base64, as GCS reports it
    headers: dict[str, str] = field(default_factory=dict)


class _Retryable(Exception):
    pass


class _Fetch:
    """The state of one submitted job: its file, its slices, its hashes, the first error.

    Everything below `cond` is guarded by it; the hashes by `hash_lock`.
    """

    def __init__(self, job: Job, slice_bytes: int, progress: Progress) -> None:
        self.job = job
        self.progress = progress
        self.future: Future[str] = Future()
        self.slices = [
            (start, min(start + slice_bytes, job.size)) for start in range(0, job.size, slice_bytes)
        ]
        self.cond = threading.Condition()
        self.fd: int | None = None  # opened by the first worker that needs it
        self.direct_fd: int | None = None  # the same file with O_DIRECT, while it works
        self.users = 0  # workers inside one of its slices
        self.pending: list[list[tuple[mmap.mmap, int]]] = [[] for _ in self.slices]
        self.done = [False] * len(self.slices)
        self.hashing = 0  # the next slice to hash: its blocks always find a buffer
        self.error: BaseException | None = None
        self.settled = False  # the future is complete
        self.hash_lock = threading.Lock()
        self.hashed = 0
        self.advised = 0
        self.sha256 = hashlib.sha256()
        self.crc = google_crc32c.Checksum()
        self.md5 = hashlib.md5(usedforsecurity=False) if job.md5 and not job.crc32c else None

    def hashable(self) -> bool:
        """Blocks wait at the position being hashed, or its slice is complete. Under cond."""
        index = self.hashing
        return index < len(self.slices) and bool(self.pending[index] or self.done[index])


class Downloader:
    def __init__(self, settings: TransferSettings, authorize: Authorize | None = None) -> None:
        self.settings = settings
        self.authorize = authorize
        self._queue: queue.SimpleQueue[tuple[_Fetch, int] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._fetches: set[_Fetch] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        # The buffer pool, under _lock: free buffers, how many exist, the most that did.
        self._free: list[mmap.mmap] = []
        self._buffers = 0
        self.peak_buffers = 0
        self._room = threading.Condition(self._lock)  # notified as buffers come back
        self._tls: ssl.SSLContext | None = None

    # --- the callers' side ---------------------------------------------------------
    def submit(self, job: Job, progress: Progress = lambda n: None) -> Future[str]:
        """Start downloading `job` to `job.dest` (created). The future gives its sha256
        (hex) once every byte is written and verified, or raises a LoaderError."""
        state = _Fetch(job, self.settings.slice_bytes, progress)
        with self._lock:
            if self._cancelled.is_set():
                raise LoaderError(f"{job.label}: download cancelled")
            self._start_workers()
            self._fetches.add(state)
        if not state.slices:  # empty object: nothing to receive
            try:
                self._open(state)
                self._finish(state)
            except BaseException as exc:
                self._fail(state, exc)
        for index in range(len(state.slices)):
            self._queue.put((state, index))
        return state.future

    def fetch(self, job: Job, progress: Progress = lambda n: None) -> str:
        """`submit(job)` and wait for it."""
        return self.submit(job, progress).result()

    def close(self) -> None:
        """Stop every download: pending futures fail, workers leave at their next block
        and close their connections. Idempotent."""
        with self._lock:
            if self._cancelled.is_set():
                return
            self._cancelled.set()
            fetches = list(self._fetches)
            self._room.notify_all()
            for _ in self._workers:
                self._queue.put(None)
        for state in fetches:
            self._fail(state, LoaderError(f"{state.job.label}: download cancelled"))

    # --- files ---------------------------------------------------------------------
    def _open(self, state: _Fetch) -> None:
        """Create the file and reserve its space. Under state.cond, or before any worker."""
        job = state.job
        try:
            state.fd = os.open(job.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise _destination_error(job.dest, exc) from exc
        if job.size:
            try:
                # Reserve the space now: a full volume fails here, not mid-download.
                os.posix_fallocate(state.fd, 0, job.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise _destination_error(job.dest, exc) from exc
            if self.settings.direct_io:
                state.direct_fd = _open_direct(job.dest)

    @staticmethod
    def _close_files(state: _Fetch) -> None:
        for fd in (state.direct_fd, state.fd):
            if fd is not None:
                os.close(fd)
        state.fd = state.direct_fd = None

    def _begin(self, state: _Fetch) -> bool:
        """A worker enters one of the job's slices; False if the job is over."""
        with state.cond:
            if state.error is not None or self._cancelled.is_set():
                return False
            try:
                if state.fd is None:
                    self._open(state)
            except BaseException as exc:
                self._close_files(state)
                failed = exc
            else:
                state.users += 1
                return True
        self._fail(state, failed)
        return False

    def _end(self, state: _Fetch) -> None:
        with state.cond:
            state.users -= 1
            # A failed job's files close once no worker writes to them any more.
            if state.users == 0 and state.error is not None:
                self._close_files(state)

    def _fail(self, state: _Fetch, exc: BaseException) -> None:
        with state.cond:
            if state.error is not None or state.settled:
                return
            state.error = exc
            blocks = [block for blocks in state.pending for block in blocks]
            state.pending = [[] for _ in state.slices]
            if state.users == 0:
                self._close_files(state)
        for buffer, _ in blocks:
            self._give_back(buffer)
        self._settle(state, exc)

    def _settle(self, state: _Fetch, exc: BaseException | None) -> None:
        """Complete the job's future, once."""
        with state.cond:
            if state.settled:
                return
            state.settled = True
        with self._lock:
            self._fetches.discard(state)
            self._room.notify_all()  # workers waiting for a buffer for it give up
        if exc is None:
            state.future.set_result(state.sha256.hexdigest())
        else:
            state.future.set_exception(exc)

    def _finish(self, state: _Fetch) -> None:
        """Every byte hashed: cut the O_DIRECT padding, check the checksum, close."""
        job = state.job
        with state.cond:
            try:
                if state.direct_fd is not None and state.fd is not None:
                    os.ftruncate(state.fd, job.size)  # the last block was padded to _ALIGN
                self._close_files(state)
            except OSError as exc:
                raise _destination_error(job.dest, exc) from exc
        if job.crc32c is not None:
            got = base64.b64encode(state.crc.digest()).decode()
            if got != job.crc32c:
                raise IntegrityError(
                    f"{job.label}: crc32c of the downloaded bytes is {got}, storage lists "
                    f"{job.crc32c}; nothing was published"
                )
        elif state.md5 is not None:
            got = base64.b64encode(state.md5.digest()).decode()
            if got != job.md5:
                raise IntegrityError(
                    f"{job.label}: md5 of the downloaded bytes is {got}, storage lists "
                    f"{job.md5}; nothing was published"
                )
        self._settle(state, None)

    # --- hashing: whichever worker finds the next blocks in file order ---------------
    def _drain(self, state: _Fetch) -> None:
        """Hash every block that is next in file order. One worker at a time per job;
        a worker finding another at it leaves, and that one looks again before leaving."""
        while True:
            if not state.hash_lock.acquire(blocking=False):
                return
            try:
                finished = self._hash_available(state)
            except BaseException as exc:
                self._fail(state, exc)
                return
            finally:
                state.hash_lock.release()
            if finished:
                try:
                    self._finish(state)
                except BaseException as exc:
                    self._fail(state, exc)
                return
            with state.cond:
                if state.error is not None or not state.hashable():
                    return

    def _hash_available(self, state: _Fetch) -> bool:
        """Under hash_lock: hash what is ready, slice after slice. True once all is."""
        job = state.job
        while True:
            with state.cond:
                if state.error is not None:
                    return False
                index = state.hashing
                if index == len(state.slices):
                    return False  # finished by another worker
                blocks, state.pending[index] = state.pending[index], []
                complete = state.done[index] and not blocks
            if complete:
                start, end = state.slices[index]
                if state.hashed != end:
                    raise IntegrityError(
                        f"{job.label}: slice {start}-{end} ended at byte {state.hashed}"
                    )
                if state.hashed - state.advised >= _ADVISE_BYTES or state.hashed == job.size:
                    self._advise(state)
                with state.cond:
                    state.hashing += 1
                    if state.hashing == len(state.slices):
                        return True
                with self._room:
                    self._room.notify_all()  # a worker waiting to read that slice may go
                continue
            if not blocks:
                return False
            for buffer, length in blocks:
                with memoryview(buffer) as view:
                    state.sha256.update(view[:length])
                    if state.md5 is not None:
                        state.md5.update(view[:length])
                state.crc.update(buffer[:length])  # google-crc32c takes bytes only: a copy
                state.hashed += length
                self._give_back(buffer)

    @staticmethod
    def _advise(state: _Fetch) -> None:
        # Bytes written through the page cache (no O_DIRECT here): start writing them to
        # disk now (the final fsync then has little left) and let the kernel drop them
        # once written, as they count against the pod's memory.
        with state.cond:
            if state.fd is not None:
                os.posix_fadvise(
                    state.fd, state.advised, state.hashed - state.advised, os.POSIX_FADV_DONTNEED
                )
        state.advised = state.hashed

    # --- the buffer pool ---------------------------------------------------------------
    def _take(self, state: _Fetch, index: int) -> mmap.mmap | None:
        """A buffer from the pool, once one is free; None if the job is over meanwhile.
        The last `workers` buffers are kept for the slices being hashed."""
        settings = self.settings
        with self._room:
            while True:
                if state.error is not None or self._cancelled.is_set():
                    return None
                spare = len(self._free) + settings.pool_size - self._buffers
                if spare > (0 if index == state.hashing else settings.workers):
                    if self._free:
                        return self._free.pop()
                    self._buffers += 1
                    self.peak_buffers = max(self.peak_buffers, self._buffers)
                    break
                self._room.wait(0.05)
        # Anonymous memory, page-aligned as O_DIRECT needs; faulted in once, then reused.
        return mmap.mmap(-1, BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def _give_back(self, buffer: mmap.mmap) -> None:
        with self._room:
            self._free.append(buffer)
            self._room.notify()

    # --- the network side: worker threads ----------------------------------------------
    def _start_workers(self) -> None:
        """Under _lock: the pool, started on first use, sized once."""
        while len(self._workers) < self.settings.workers:
            # Daemons: a worker blocked on a dead connection never holds up the exit.
            worker = threading.Thread(
                target=self._work, name=f"download-{len(self._workers)}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        connections = _Connections(self)
        try:
            while (item := self._queue.get()) is not None:
                state, index = item
                if not self._begin(state):
                    continue
                try:
                    complete = self._fetch_slice(connections, state, index)
                except BaseException as exc:  # handed to the job's future
                    self._fail(state, exc)
                else:
                    if complete:
                        with state.cond:
                            state.done[index] = True
                        self._drain(state)
                finally:
                    self._end(state)
        finally:
            connections.close()

    def _fetch_slice(self, connections: _Connections, state: _Fetch, index: int) -> bool:
        """Receive one slice, retrying; True once all of it is handed over for hashing,
        False if the job ended meanwhile."""
        job = state.job
        start, end = state.slices[index]
        cursor = [start]  # advanced by _get_range as blocks land, kept across retries
        failures = 0
        while cursor[0] < end:
            if state.error is not None or self._cancelled.is_set():
                return False
            before = cursor[0]
            try:
                self._get_range(connections, state, index, cursor, end)
            except _Retryable as exc:
                connections.drop(job.url)
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
        return True

    def _get_range(
        self, connections: _Connections, state: _Fetch, index: int, cursor: list[int], end: int
    ) -> None:
        """GET bytes [cursor[0], end) into the file, advancing cursor[0] block by block."""
        job = state.job
        start = cursor[0]
        headers = {**job.headers, "Range": f"bytes={start}-{end - 1}"}
        response = connections.get(job.url, headers)
        complete = False
        try:
            _check_status(response, job)
            # 200: the server ignored Range and sends the whole object: skip to `start`.
            skip = start if response.status == 200 else 0
            while cursor[0] < end:
                if state.error is not None or self._cancelled.is_set():
                    return
                buffer = self._take(state, index)
                if buffer is None:
                    return
                queued = False
                try:
                    while skip:
                        skip -= _read_into(response, buffer, min(BLOCK, skip))
                    length = min(BLOCK, end - cursor[0])
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
                self._drain(state)
            complete = response.status == 206 and response.isclosed()
        finally:
            if not complete:  # unread bytes left on it: the connection is not reusable
                connections.drop(job.url)

    def _write_block(self, state: _Fetch, buffer: mmap.mmap, length: int, offset: int) -> None:
        """Write one block at `offset` of the file: O_DIRECT if the file allows it, else
        through the page cache."""
        written = 0
        direct_fd = state.direct_fd
        fd = state.fd
        assert fd is not None  # open while this worker is one of its users
        with memoryview(buffer) as view:
            try:
                if direct_fd is not None:
                    # The object's last block is padded to _ALIGN; _finish truncates the file.
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
                    written += os.pwrite(fd, view[written:length], offset + written)
            except OSError as exc:
                raise _destination_error(state.job.dest, exc) from exc

    def _hand_over(self, state: _Fetch, index: int, buffer: mmap.mmap, length: int) -> bool:
        """Queue a written block for hashing; False if the job has failed meanwhile."""
        with state.cond:
            if state.error is not None or self._cancelled.is_set():
                return False  # nobody hashes this any more
            state.pending[index].append((buffer, length))
        return True

    def tls_context(self) -> ssl.SSLContext:
        """One TLS context for every connection, trusting what requests trusts."""
        with self._lock:
            if self._tls is None:
                self._tls = ssl.create_default_context(cafile=requests.certs.where())
            return self._tls


class _Connections:
    """One worker's kept-alive connections, one per origin, and the requests it sends."""

    def __init__(self, downloader: Downloader) -> None:
        self._downloader = downloader
        # origin -> the connection, and whether requests name the whole URL (an HTTP proxy)
        self._open: dict[str, tuple[http.client.HTTPConnection, bool]] = {}

    def get(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {**headers, "Accept-Encoding": "identity"}
        if self._downloader.authorize is not None:
            self._downloader.authorize(url, headers)
        origin = f"{parts.scheme}://{parts.netloc}"
        for attempt in (1, 2):
            reused = origin in self._open
            if not reused:
                self._open[origin] = self._connect(parts)
            conn, absolute = self._open[origin]
            try:
                conn.request("GET", url if absolute else path, None, headers)
                return conn.getresponse()
            except TimeoutError as exc:
                self.drop(url)
                raise _Retryable("stalled: no byte within the read timeout") from exc
            except (http.client.HTTPException, OSError) as exc:
                self.drop(url)
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                if not (reused and attempt == 1):
                    raise _Retryable(_brief(exc)) from exc
        raise AssertionError("unreachable")

    def _connect(self, parts: SplitResult) -> tuple[http.client.HTTPConnection, bool]:
        settings = self._downloader.settings
        # The environment as requests reads it for the listing: proxies, NO_PROXY, CA bundle.
        env = requests.Session().merge_environment_settings(parts.geturl(), {}, None, None, None)
        proxy = env["proxies"].get(parts.scheme) or env["proxies"].get("all")
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else None
        timeout = settings.stall_seconds
        host, port = (via.hostname or "", via.port or 8080) if via else (parts.hostname, parts.port)
        if parts.scheme != "https":
            return http.client.HTTPConnection(host or "", port, timeout=timeout), via is not None
        verify = env["verify"]
        if isinstance(verify, str):
            context = ssl.create_default_context(cafile=verify)
        elif verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = self._downloader.tls_context()
        conn = http.client.HTTPSConnection(host or "", port, timeout=timeout, context=context)
        if via is not None:
            conn.set_tunnel(parts.hostname or "", parts.port, headers=_proxy_auth(via))
        return conn, False

    def drop(self, url: str) -> None:
        parts = urlsplit(url)
        conn, _ = self._open.pop(f"{parts.scheme}://{parts.netloc}", (None, False))
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for conn, _ in self._open.values():
            conn.close()
        self._open.clear()


def _proxy_auth(proxy: SplitResult) -> dict[str, str]:
    if not proxy.username:
        return {}
    credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return {"Proxy-Authorization": f"Basic {base64.b64encode(credentials.encode()).decode()}"}


def _read_into(response: http.client.HTTPResponse, buffer: mmap.mmap, length: int) -> int:
    """Receive the next `length` bytes of the body straight into `buffer`.

    A block is the unit of writing and of retrying: one cut short by a reset, a stall or
    a body that ends early is dropped and fetched again.
    """
    with memoryview(buffer) as view:
        try:
            received = response.readinto(view[:length])
        except TimeoutError as exc:  # the socket's timeout: no byte for stall_seconds
            raise _Retryable("stalled: no byte within the read timeout") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise _Retryable(_brief(exc)) from exc
    if received < length:
        raise _Retryable("connection closed before the range was complete")
    return received


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


def _check_status(response: http.client.HTTPResponse, job: Job) -> None:
    status = response.status
    if status in (200, 206):
        return
    reason = f"HTTP {status} {response.reason or ''}".strip()
    response.close()
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
