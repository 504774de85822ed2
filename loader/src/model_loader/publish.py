"""Download a model version into MODEL_DIR and publish it atomically.

Layout of MODEL_DIR (an emptyDir in Kubernetes, a named volume in Compose):

    current -> versions/<id>          the one the API reads; swapped with rename(2)
    versions/<id>/model.onnx ...      a complete, verified copy of the source
    versions/<id>/manifest.json       what was loaded: source, generations, checksums
    .staging-*/                       a download in progress (removed on any failure)

A reader sees the old version or the new one, never a mix: files land in a staging
directory on the same filesystem, are verified and fsynced, the directory is renamed
into versions/ and only then `current` is replaced by a symlink rename.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from model_loader import __version__
from model_loader.config import LoaderSettings
from model_loader.errors import DestinationError, IntegrityError, ObjectNotFoundError
from model_loader.sources.base import RemoteObject, Source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "current"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"
MANIFEST_FORMAT = 1
# Keep this much free beyond the model itself: the manifest, filesystem overhead.
FREE_SPACE_MARGIN_BYTES = 1 << 20
_CHUNK = 1 << 20
# Write failures that are the volume's fault, not the source's.
_DESTINATION_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class LoadResult:
    status: str  # "published" | "up-to-date"
    path: Path
    manifest: dict[str, Any]


def load(settings: LoaderSettings, source: Source) -> LoadResult:
    model_dir = Path(settings.model_dir)
    _prepare(model_dir)
    started = time.monotonic()

    log.info("listing %s", source.uri)
    objects = source.list_objects()
    _check_names(source.uri, objects)
    _check_required(source.uri, objects, settings.require_files)
    name, version = _identity(settings, source.uri, objects)

    current = read_manifest(model_dir / CURRENT)
    if current is not None and _same(current, source.uri, name, version, objects):
        log.info("up to date: %s %s from %s is already published", name, version, source.uri)
        return LoadResult("up-to-date", (model_dir / CURRENT).resolve(), current)

    total = sum(o.size for o in objects)
    _check_space(model_dir, total)

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        staging.chmod(0o755)
        entries = [_fetch(source, obj, staging) for obj in objects]
        manifest = {
            "format": MANIFEST_FORMAT,
            "model_name": name,
            "model_version": version,
            "source_uri": source.uri,
            "loaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "loader_version": __version__,
            "total_bytes": total,
            "objects": entries,
        }
        _write_json(staging / MANIFEST, manifest)
        _fsync_dir(staging)
        target = _commit(model_dir, staging, name, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    _prune(model_dir, keep=target.name)
    log.info(
        "published %s %s (%d files, %d bytes) in %.2f s -> %s",
        name,
        version,
        len(objects),
        total,
        time.monotonic() - started,
        model_dir / CURRENT,
    )
    return LoadResult("published", target, manifest)


def read_manifest(version_dir: Path) -> dict[str, Any] | None:
    try:
        with open(version_dir / MANIFEST, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _prepare(model_dir: Path) -> None:
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / VERSIONS).mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=model_dir):
            pass
    except OSError as exc:
        raise DestinationError(f"MODEL_DIR {model_dir} is not writable: {exc.strerror}") from exc
    # Litter from a run that was killed (SIGKILL, node loss) before it could clean up.
    for stale in model_dir.glob(STAGING_PREFIX + "*"):
        log.info("removing %s left by an interrupted run", stale.name)
        shutil.rmtree(stale, ignore_errors=True)


def _check_names(uri: str, objects: list[RemoteObject]) -> None:
    for obj in objects:
        path = PurePosixPath(obj.name)
        if (
            not obj.name
            or path.is_absolute()
            or ".." in path.parts
            or "\\" in obj.name
            or "\x00" in obj.name
        ):
            raise IntegrityError(f"{uri}: object name {obj.name!r} would escape MODEL_DIR")
        if obj.name == MANIFEST:
            raise IntegrityError(f"{uri}: object name {MANIFEST!r} is reserved for the loader")


def _check_required(uri: str, objects: list[RemoteObject], required: tuple[str, ...]) -> None:
    present = {o.name for o in objects}
    missing = [f for f in required if f not in present]
    if missing:
        raise ObjectNotFoundError(
            f"{uri}: missing {', '.join(missing)} (found: {', '.join(sorted(present))})"
        )


def _identity(settings: LoaderSettings, uri: str, objects: list[RemoteObject]) -> tuple[str, str]:
    """Model name and version: from settings, else the URI's last two path segments."""
    parts = urlsplit(uri)
    segments = [s for s in (parts.netloc + "/" + parts.path).split("/") if s]
    if len(objects) == 1 and segments and segments[-1] == objects[0].name:
        segments.pop()  # the URI named a single object
    derived_name = segments[-2] if len(segments) >= 2 else (segments[-1] if segments else "model")
    derived_version = segments[-1] if len(segments) >= 2 else "1"
    return settings.model_name or derived_name, settings.model_version or derived_version


def _same(
    manifest: dict[str, Any], uri: str, name: str, version: str, objects: list[RemoteObject]
) -> bool:
    if (manifest.get("source_uri"), manifest.get("model_name"), manifest.get("model_version")) != (
        uri,
        name,
        version,
    ):
        return False
    try:
        recorded = sorted(
            RemoteObject(**_remote_fields(e)).fingerprint() for e in manifest["objects"]
        )
    except (KeyError, TypeError):
        return False
    return recorded == sorted(o.fingerprint() for o in objects)


def _remote_fields(entry: dict[str, Any]) -> dict[str, Any]:
    fields = RemoteObject.__dataclass_fields__
    return {k: v for k, v in entry.items() if k in fields}


def _check_space(model_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(model_dir).free
    if free < needed + FREE_SPACE_MARGIN_BYTES:
        raise DestinationError(
            f"MODEL_DIR {model_dir} has {free} bytes free; the model needs {needed} "
            f"(+{FREE_SPACE_MARGIN_BYTES} margin). Raise the volume's size (emptyDir sizeLimit)."
        )


def _fetch(source: Source, obj: RemoteObject, staging: Path) -> dict[str, Any]:
    dest = staging / obj.name
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    log.info("downloading %s (%d bytes)", obj.uri, obj.size)
    try:
        source.download(obj, dest)
    except OSError as exc:
        if exc.errno in _DESTINATION_ERRNOS:
            raise DestinationError(f"writing {dest}: {exc.strerror}") from exc
        raise
    try:
        size = dest.stat().st_size
        digest = hashlib.sha256()
        with open(dest, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
            os.fsync(fh.fileno())
        dest.chmod(0o644)
    except OSError as exc:
        raise DestinationError(f"writing {dest}: {exc.strerror or exc}") from exc
    if size != obj.size:
        raise IntegrityError(f"{obj.uri}: got {size} bytes, storage lists {obj.size}")
    return {**asdict(obj), "sha256": digest.hexdigest()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    path.chmod(0o644)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(model_dir: Path, staging: Path, name: str, version: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}-{version}")
    target = model_dir / VERSIONS / f"{stamp}-{safe}-{staging.name[len(STAGING_PREFIX) :]}"
    os.rename(staging, target)
    link_tmp = model_dir / f".{CURRENT}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        link_tmp.unlink()
    os.symlink(Path(VERSIONS) / target.name, link_tmp)
    os.replace(link_tmp, model_dir / CURRENT)
    _fsync_dir(model_dir)
    return target


def _prune(model_dir: Path, keep: str) -> None:
    for old in (model_dir / VERSIONS).iterdir():
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
