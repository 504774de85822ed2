"""Download a model version into MODEL_DIR and publish it atomically.

Layout of MODEL_DIR (an emptyDir in Kubernetes, a named volume in Compose):

    current -> versions/<id>          the one the API reads; swapped with rename(2)
    previous -> versions/<id>         the one `current` named before the last publish,
                                      kept for replicas still serving it (a rollout)
                                      and for a rollback to know where it goes
    versions/<id>/model.onnx ...      a complete, verified copy of the source
    versions/<id>/manifest.json       what was loaded: source, generations, checksums
    .staging-*/                       a download in progress (removed on any failure)

A reader sees the old version or the new one, never a mix: files land in a staging
directory on the same filesystem, are verified and fsynced, the directory is renamed
into versions/ and only then `current` is replaced by a symlink rename. Older versions
than `previous` are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from model_loader import __version__
from model_loader.config import LoaderSettings
from model_loader.errors import (
    DESTINATION_ERRNOS,
    ConfigError,
    DestinationError,
    IntegrityError,
    ObjectNotFoundError,
)
from model_loader.progress import Progress
from model_loader.sources.base import RemoteObject, Source

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "current"
PREVIOUS = "previous"
VERSIONS = "versions"
STAGING_PREFIX = ".staging-"
MANIFEST_FORMAT = 1
# Keep this much free beyond the model itself: the manifest, filesystem overhead.
FREE_SPACE_MARGIN_BYTES = 1 << 20
_CHUNK = 1 << 20
# The file MODEL_SHA256 pins, when the version has it (else its only object).
PINNED_FILE = "model.onnx"


@dataclass(frozen=True)
class LoadResult:
    status: str  # "published" | "up-to-date" | "dry run"
    path: Path
    manifest: dict[str, Any]


def load(settings: LoaderSettings, source: Source, dry_run: bool = False) -> LoadResult:
    """Publish the source's version in MODEL_DIR. `dry_run`: list, check, touch nothing."""
    model_dir = Path(settings.model_dir)
    if not dry_run:
        _prepare(model_dir)
    started = time.monotonic()

    log.info("listing %s", source.uri)
    objects = source.list_objects()
    _check_names(source.uri, objects)
    _check_required(source.uri, objects, settings.require_files)
    name, version = _identity(settings, source.uri, objects)
    pinned = _pinned_name(settings, source.uri, objects)

    current = read_manifest(model_dir / CURRENT)
    if (
        current is not None
        and _same(current, source.uri, name, version, objects)
        and _pin_holds(current, pinned, settings.model_sha256)
    ):
        log.info("up to date: %s %s from %s is already published", name, version, source.uri)
        return LoadResult("up-to-date", (model_dir / CURRENT).resolve(), current)

    total = sum(o.size for o in objects)
    if dry_run:
        for obj in objects:
            log.info("would download %s (%d bytes) -> %s", obj.uri, obj.size, obj.name)
        log.info("would publish %s %s: %d files, %d bytes", name, version, len(objects), total)
        return LoadResult("dry run", model_dir / CURRENT, {})
    _check_space(model_dir, total)

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        staging.chmod(0o755)
        entries = _download_all(source, objects, staging, settings)
        if pinned is not None and settings.model_sha256 is not None:
            got = next(e["sha256"] for e in entries if e["name"] == pinned)
            if got != settings.model_sha256.lower():
                raise IntegrityError(
                    f"{source.uri}{pinned if source.uri.endswith('/') else ''}: sha256 is {got}, "
                    f"MODEL_SHA256 pins {settings.model_sha256.lower()}; nothing was published"
                )
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
        close = getattr(source, "close", None)
        if close is not None:
            close()
        shutil.rmtree(staging, ignore_errors=True)
        raise

    _prune(model_dir, keep={target.name, (model_dir / PREVIOUS).resolve().name})
    log.info(
        "published %s %s (%d files, %d bytes) in %.2f s (%.1f MB/s) -> %s",
        name,
        version,
        len(objects),
        total,
        elapsed := time.monotonic() - started,
        total / max(elapsed, 1e-9) / 1e6,
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


def _pinned_name(settings: LoaderSettings, uri: str, objects: list[RemoteObject]) -> str | None:
    if settings.model_sha256 is None:
        return None
    names = {o.name for o in objects}
    if PINNED_FILE in names:
        return PINNED_FILE
    if len(objects) == 1:
        return objects[0].name
    raise ConfigError(
        f"MODEL_SHA256 pins {PINNED_FILE}, and {uri} has no {PINNED_FILE} "
        f"(found: {', '.join(sorted(names))})"
    )


def _pin_holds(manifest: dict[str, Any], pinned: str | None, sha256: str | None) -> bool:
    if pinned is None or sha256 is None:
        return True
    recorded = {e.get("name"): e.get("sha256") for e in manifest.get("objects", [])}
    return recorded.get(pinned) == sha256.lower()


def _download_all(
    source: Source, objects: list[RemoteObject], staging: Path, settings: LoaderSettings
) -> list[dict[str, Any]]:
    """Fetch every object, several at once; log progress at a steady cadence."""
    progress = Progress(sum(o.size for o in objects))
    pending = list(objects)
    entries: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                obj = pending.pop(0)
            try:
                entry = _fetch(source, obj, staging, progress.add)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                stop.set()
                return
            with lock:
                entries[obj.name] = entry

    # Daemon threads: a failure or a signal in the main thread never waits for them.
    threads = [
        threading.Thread(target=work, name=f"object-{i}", daemon=True)
        for i in range(min(settings.concurrency, len(objects)))
    ]
    for thread in threads:
        thread.start()
    try:
        next_report = time.monotonic() + settings.progress_seconds
        while not stop.is_set() and (alive := [t for t in threads if t.is_alive()]):
            alive[0].join(timeout=0.2)  # interruptible: SIGALRM/SIGTERM raise here
            if time.monotonic() >= next_report:
                log.info("progress: %s", progress.line())
                next_report += settings.progress_seconds
    finally:
        stop.set()
    if errors:
        raise errors[0]
    log.info("downloaded %s", progress.line())
    return [entries[o.name] for o in objects]


def _fetch(
    source: Source, obj: RemoteObject, staging: Path, progress: Callable[[int], None]
) -> dict[str, Any]:
    dest = staging / obj.name
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    log.info("downloading %s (%d bytes)", obj.uri, obj.size)
    try:
        sha256 = source.download(obj, dest, progress)
    except OSError as exc:
        if exc.errno in DESTINATION_ERRNOS:
            raise DestinationError(f"writing {dest}: {exc.strerror}") from exc
        raise
    try:
        size = dest.stat().st_size
        digest = hashlib.sha256() if sha256 is None else None
        with open(dest, "rb") as fh:
            while digest is not None and (chunk := fh.read(_CHUNK)):
                digest.update(chunk)
            os.fsync(fh.fileno())
        dest.chmod(0o644)
    except OSError as exc:
        raise DestinationError(f"writing {dest}: {exc.strerror or exc}") from exc
    if size != obj.size:
        raise IntegrityError(f"{obj.uri}: got {size} bytes, storage lists {obj.size}")
    return {**asdict(obj), "sha256": sha256 if digest is None else digest.hexdigest()}


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
    replaced = model_dir / CURRENT
    if replaced.is_dir():
        _link(model_dir, PREVIOUS, replaced.resolve().name)
    _link(model_dir, CURRENT, target.name)
    _fsync_dir(model_dir)
    return target


def _link(model_dir: Path, name: str, version: str) -> None:
    """Point model_dir/name at versions/<version>, atomically (a symlink renamed over it)."""
    link_tmp = model_dir / f".{name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        link_tmp.unlink()
    os.symlink(Path(VERSIONS) / version, link_tmp)
    os.replace(link_tmp, model_dir / name)


def _prune(model_dir: Path, keep: set[str]) -> None:
    for old in (model_dir / VERSIONS).iterdir():
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
