"""https://host/path/file — one file, or a .tar.gz / .tgz / .zip archive that is unpacked.

Listing is one HEAD request (size, ETag or Last-Modified, range support, the URL after
redirects): the URL is one object named after its last segment, an archive included.
Its bytes are fetched with the same ranged downloader as gs:// when the server accepts
ranges (one stream when it does not). HTTP offers no checksum to verify: pin the bytes
with MODEL_SHA256, or sign the model.

An archive is downloaded by `download()` into a temporary directory in MODEL_DIR (same
filesystem) and unpacked into the staging directory. Unpacking is safe: absolute names,
`..`, links pointing outside, devices are refused (tarfile's "data" filter; the same
rules checked by hand for zip), and the unpacked size is checked against the free space
first. The archive's ETag (or Last-Modified) is its generation: an unchanged archive is
neither downloaded nor published twice.
"""

from __future__ import annotations

import logging
import random
import shutil
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import Future
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
from model_loader.sources.base import RemoteObject, done, lone_file_name
from model_loader.transfer import (
    CONNECT_TIMEOUT_SECONDS,
    MIB,
    Downloader,
    Job,
    Progress,
    transfer_settings,
)

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
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
        self._url = uri  # where the bytes are: the URI after redirects (listing)
        self._downloader: Downloader | None = None

    # --- Source ------------------------------------------------------------------
    def list_objects(self) -> list[RemoteObject]:
        size, generation, ranges = self._head()
        # Without range support, one stream for the whole file.
        self._downloader = Downloader(
            transfer_settings(self._settings, None if ranges else max(size, 1))
        )
        return [
            RemoteObject(
                name=lone_file_name(self.name),  # an archive's keeps its name
                uri=self.uri,
                size=size,
                generation=generation,
                archive=self.archive,
            )
        ]

    def download(self, obj: RemoteObject, dest: Path, progress: Progress) -> Future[str | None]:
        assert self._downloader is not None, "list_objects() first"
        if not obj.archive:
            job = Job(url=self._url, dest=dest, size=obj.size, label=obj.uri)
            return self._downloader.submit(job, progress)  # type: ignore[return-value]
        model_dir = Path(self._settings.model_dir)
        try:
            temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=model_dir))
        except OSError as exc:
            raise DestinationError(f"MODEL_DIR {model_dir}: {exc.strerror}") from exc
        try:
            archive = temp / self.name
            job = Job(url=self._url, dest=archive, size=obj.size, label=obj.uri)
            sha256 = self._downloader.fetch(job, progress)
            _unpack(self.uri, archive, dest, shutil.disk_usage(model_dir).free)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return done(sha256)

    def close(self) -> None:
        if self._downloader is not None:
            self._downloader.close()
        self._session.close()

    # --- helpers -----------------------------------------------------------------
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
        self._url = response.url  # the ranged GETs skip the redirects
        generation = response.headers.get("ETag") or response.headers.get("Last-Modified")
        ranges = response.headers.get("Accept-Ranges", "").lower() == "bytes"
        return int(length), generation, ranges


def _unpack(uri: str, archive: Path, into: Path, free: int) -> None:
    try:
        if archive.name.lower().endswith(".zip"):
            _unzip(uri, archive, into, free)
        else:
            _untar(uri, archive, into, free)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DestinationError(f"unpacking {uri}: {exc.strerror}") from exc
        raise IntegrityError(f"{uri}: not a valid archive ({exc})") from exc
    if not any(p.is_file() for p in into.rglob("*")):
        raise ObjectNotFoundError(f"{uri}: the archive holds no files")


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
