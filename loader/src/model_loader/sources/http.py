"""https://host/path/file — one file, or a .tar.gz / .tgz / .zip archive that is unpacked.

A single file is one object named after the URL's last segment, fetched with the same
ranged downloader as gs:// when the server accepts ranges (one stream when it does
not). HTTP offers no checksum to verify: pin the bytes with MODEL_SHA256.

An archive is downloaded and unpacked into a temporary directory beside the staging
area (same filesystem) to be listed; its files then move into staging. Unpacking is
safe: absolute names, `..`, links pointing outside, devices are refused (tarfile's
"data" filter; the same rules checked by hand for zip), and the unpacked size is
checked against the free space first. The archive's ETag (or Last-Modified) is every
file's generation, so an unchanged archive is not published twice — though it is
fetched again to be listed.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests

from model_loader.config import LoaderSettings
from model_loader.errors import (
    ConfigError,
    DestinationError,
    IntegrityError,
    LoaderError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SourceUnavailableError,
)
from model_loader.sources.base import RemoteObject
from model_loader.transfer import MIB, Downloader, Job, Progress, TransferSettings

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
CONNECT_TIMEOUT_SECONDS = 10.0
# Same prefix as publish.py's staging directories: a killed run's leftovers are removed.
_TEMP_PREFIX = ".staging-archive-"


class HttpSource:
    def __init__(
        self, uri: str, settings: LoaderSettings, session: requests.Session | None = None
    ) -> None:
        parts = urlsplit(uri)
        name = unquote(PurePosixPath(parts.path).name)
        if not parts.netloc or not name:
            raise ConfigError(
                f"MODEL_URI {uri!r}: expected https://host/path/file "
                f"(a file, or an archive: {', '.join(ARCHIVE_SUFFIXES)})"
            )
        self.uri = uri
        self.name = name
        self.archive = name.lower().endswith(ARCHIVE_SUFFIXES)
        self._settings = settings
        self._session = session or requests.Session()
        self._unpacked: Path | None = None
        self._temp: Path | None = None
        self._downloader: Downloader | None = None
        self._generation: str | None = None

    # --- Source ------------------------------------------------------------------
    def list_objects(self) -> list[RemoteObject]:
        size, generation, ranges = self._head()
        self._generation = generation
        self._downloader = self._make_downloader(size if not ranges else None)
        if not self.archive:
            return [RemoteObject(name=self.name, uri=self.uri, size=size, generation=generation)]
        return self._fetch_and_unpack(size)

    def download(self, obj: RemoteObject, dest: Path, progress: Progress) -> str | None:
        if self._unpacked is not None:
            try:
                os.replace(self._unpacked / obj.name, dest)
            except OSError as exc:
                raise DestinationError(f"moving {obj.name} into staging: {exc}") from exc
            progress(obj.size)
            return None  # hashed by the loader after the move
        assert self._downloader is not None, "list_objects() first"
        return self._downloader.fetch(
            Job(url=self.uri, dest=dest, size=obj.size, label=obj.uri), progress
        )

    def close(self) -> None:
        if self._downloader is not None:
            self._downloader.cancel()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    # --- helpers -----------------------------------------------------------------
    def _make_downloader(self, single_slice_size: int | None) -> Downloader:
        settings = self._settings
        slice_bytes = settings.slice_mib * MIB
        if single_slice_size is not None:  # no ranges: one stream for the whole file
            slice_bytes = max(single_slice_size, 1)
        return Downloader(
            self._session,
            TransferSettings(
                workers=settings.concurrency,
                slice_bytes=slice_bytes,
                attempts=settings.retries,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                stall_seconds=settings.request_timeout_seconds,
            ),
        )

    def _head(self) -> tuple[int, str | None, bool]:
        """Size, a generation (ETag or Last-Modified), and whether ranges are accepted."""
        deadline = time.monotonic() + self._settings.wait_seconds
        delay = 0.5
        while True:
            try:
                response = self._session.head(
                    self.uri,
                    allow_redirects=True,
                    headers={"Accept-Encoding": "identity"},
                    timeout=(CONNECT_TIMEOUT_SECONDS, self._settings.request_timeout_seconds),
                )
                status = response.status_code
                if status not in (408, 429, 500, 502, 503, 504):
                    break
                problem = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                problem = f"{type(exc).__name__}"
            if time.monotonic() + delay > deadline:
                raise SourceUnavailableError(
                    f"{self.uri} not reachable within {self._settings.wait_seconds:g} s ({problem})"
                )
            log.warning("%s not answering yet (%s); retrying", self.uri, problem)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 5.0)
        if status in (404, 410):
            raise ObjectNotFoundError(f"{self.uri}: HTTP {status}")
        if status in (401, 403):
            raise PermissionDeniedError(f"{self.uri}: HTTP {status}")
        if status != 200:
            raise LoaderError(f"{self.uri}: unexpected HTTP {status} to HEAD")
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise LoaderError(f"{self.uri}: the server does not report the size (Content-Length)")
        generation = response.headers.get("ETag") or response.headers.get("Last-Modified")
        ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        return int(length), generation, ranges

    def _fetch_and_unpack(self, size: int) -> list[RemoteObject]:
        model_dir = Path(self._settings.model_dir)
        try:
            self._temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=model_dir))
        except OSError as exc:
            raise DestinationError(f"MODEL_DIR {model_dir}: {exc.strerror}") from exc
        archive = self._temp / self.name
        log.info("downloading archive %s (%d bytes) to list it", self.uri, size)
        assert self._downloader is not None
        self._downloader.fetch(Job(url=self.uri, dest=archive, size=size, label=self.uri))
        unpacked = self._temp / "files"
        unpacked.mkdir()
        free = shutil.disk_usage(model_dir).free
        try:
            if self.name.lower().endswith(".zip"):
                _unzip(self.uri, archive, unpacked, free)
            else:
                _untar(self.uri, archive, unpacked, free)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise DestinationError(f"unpacking {self.uri}: {exc.strerror}") from exc
            raise IntegrityError(f"{self.uri}: not a valid archive ({exc})") from exc
        archive.unlink()
        self._unpacked = unpacked
        files = sorted(p for p in unpacked.rglob("*") if p.is_file())
        if not files:
            raise ObjectNotFoundError(f"{self.uri}: the archive holds no files")
        return [
            RemoteObject(
                name=(name := p.relative_to(unpacked).as_posix()),
                uri=f"{self.uri}#{name}",
                size=p.stat().st_size,
                generation=self._generation,
            )
            for p in files
        ]


def _untar(uri: str, archive: Path, into: Path, free: int) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(uri, member.name)
        _check_room(uri, sum(m.size for m in members if m.isfile()), free)
        try:
            # "data": no absolute or `..` names, no links leaving `into`, no devices.
            tar.extractall(into, filter="data")
        except tarfile.FilterError as exc:
            raise IntegrityError(f"{uri}: unsafe archive member refused ({exc})") from exc


def _unzip(uri: str, archive: Path, into: Path, free: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member_name(uri, info.filename)
        _check_room(uri, sum(i.file_size for i in infos), free)
        for info in infos:
            if info.is_dir():
                continue
            target = into / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, MIB)


def _check_member_name(uri: str, name: str) -> None:
    # Refused, not quietly rewritten (tarfile's filter and zipfile strip a leading '/').
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise IntegrityError(f"{uri}: unsafe archive member refused ({name!r} would escape)")


def _check_room(uri: str, unpacked: int, free: int) -> None:
    # Unpacked once here, then moved (not copied) into staging: needs `unpacked` bytes.
    if unpacked > free:
        raise DestinationError(
            f"{uri} unpacks to {unpacked} bytes; MODEL_DIR has {free} free. "
            "Raise the volume's size (emptyDir sizeLimit)."
        )
