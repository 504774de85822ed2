"""Download a model version into MODEL_DIR and publish it atomically.

Layout of MODEL_DIR (an emptyDir in Kubernetes, a named volume in Compose):

    current -> versions/<id>          the one the API reads; swapped with rename(2)
    previous -> versions/<id>         the one `current` named before the last publish,
                                      kept for replicas still serving it (a rollout)
                                      and for a rollback to know where it goes
    versions/<id>/model.onnx ...      a complete, verified copy of the source
    versions/<id>/manifest.json       what was loaded: source, generations, checksums,
                                      and the verified signature's signer (if signed)
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
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from model_loader import __version__
from model_loader.config import LoaderSettings
from model_loader.errors import (
    DESTINATION_ERRNOS,
    ConfigError,
    DestinationError,
    IntegrityError,
    ObjectNotFoundError,
)
from model_loader.onnx_refs import NotOnnx, external_files
from model_loader.progress import Progress
from model_loader.signature import SIGNATURE_FILE, VerifyKey, verify
from model_loader.sources.base import MODEL_FILE, RemoteObject, Source

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
PINNED_FILE = MODEL_FILE


@dataclass(frozen=True)
class LoadResult:
    status: str  # "published" | "up-to-date" | "dry run"
    path: Path
    manifest: dict[str, Any]


def load(settings: LoaderSettings, source: Source, dry_run: bool = False) -> LoadResult:
    """Publish the source's version in MODEL_DIR. `dry_run`: list, check, touch nothing."""
    model_dir = Path(settings.model_dir)
    key = VerifyKey.load(settings.verify_key) if settings.verify_key else None
    if not dry_run:
        _prepare(model_dir)
    started = time.monotonic()

    log.info("listing %s", source.uri)
    objects = source.list_objects()
    _check_names(source.uri, [o.name for o in objects])
    # An archive's files are known once it is unpacked: they are checked then.
    archived = any(o.archive for o in objects)
    if not archived:
        names = [o.name for o in objects]
        _check_required(source.uri, names, settings.require_files)
        _pinned_name(settings, source.uri, names)
        if key is not None and SIGNATURE_FILE not in names:
            raise _unsigned(source.uri)  # before downloading anything
    name, version = _identity(settings, source.uri, objects)

    current = read_manifest(model_dir / CURRENT)
    if (
        current is not None
        and _same(current, source.uri, name, version, objects)
        and _pin_holds(current, settings.model_sha256)
        and (key is None or current.get("signature", {}).get("signer") == key.fingerprint)
    ):
        log.info("up to date: %s %s from %s is already published", name, version, source.uri)
        return LoadResult("up-to-date", (model_dir / CURRENT).resolve(), current)

    total = sum(o.size for o in objects)
    if dry_run:
        for obj in objects:
            unpack = ", to unpack" if obj.archive else ""
            log.info("would download %s (%d bytes%s) -> %s", obj.uri, obj.size, unpack, obj.name)
        if key is not None:
            log.info("would verify %s with MODEL_VERIFY_KEY (%s)", SIGNATURE_FILE, key.fingerprint)
        log.info("would publish %s %s: %d files, %d bytes", name, version, len(objects), total)
        return LoadResult("dry run", model_dir / CURRENT, {})
    _check_space(model_dir, total)

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=model_dir))
    try:
        staging.chmod(0o755)
        entries, archive = _download_all(source, objects, staging, settings)
        names = [e["name"] for e in entries]
        if archive is not None:
            _check_names(source.uri, names)
            _check_required(source.uri, names, settings.require_files)
        _check_external_data(source.uri, staging, names)
        signature = _check_signature(source.uri, staging, entries, key)
        pinned = _pinned_name(settings, source.uri, names)
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
            "total_bytes": sum(e["size"] for e in entries),
            "objects": entries,
        }
        if archive is not None:
            manifest["archive"] = archive
        if signature is not None:
            manifest["signature"] = signature
        _write_json(staging / MANIFEST, manifest)
        _fsync_dir(staging)
        target = _commit(model_dir, staging, name, version)
    except BaseException:
        source.close()  # no download may still write into staging
        shutil.rmtree(staging, ignore_errors=True)
        raise

    _prune(model_dir, keep={target.name, (model_dir / PREVIOUS).resolve().name})
    log.info(
        "published %s %s (%d files, %d bytes) in %.2f s (%.1f MB/s) -> %s",
        name,
        version,
        len(entries),
        total,
        elapsed := time.monotonic() - started,
        total / max(elapsed, 1e-9) / 1e6,
        model_dir / CURRENT,
    )
    return LoadResult("published", target, manifest)


def _check_signature(
    uri: str, staging: Path, entries: list[dict[str, Any]], key: VerifyKey | None
) -> dict[str, Any] | None:
    """Verify model.sig against the digests taken while receiving; the manifest's
    provenance block, or None if the version is not verified (one log line says why)."""
    digests = {e["name"]: e["sha256"] for e in entries}
    if SIGNATURE_FILE not in digests:
        if key is not None:
            raise _unsigned(uri)
        log.info(
            "unsigned: %s has no %s; loaded without a signature check "
            "(MODEL_VERIFY_KEY would require one)",
            uri,
            SIGNATURE_FILE,
        )
        return None
    if key is None:
        log.info(
            "not verified: %s is signed (%s) but MODEL_VERIFY_KEY is not set", uri, SIGNATURE_FILE
        )
        return None
    with _destination(staging / SIGNATURE_FILE):
        signature = (staging / SIGNATURE_FILE).read_bytes()
    provenance = verify(uri, signature, digests, key)
    log.info(
        "signature verified: %s, %d files, signed by %s", uri, provenance["files"], key.fingerprint
    )
    return provenance


def _unsigned(uri: str) -> IntegrityError:
    return IntegrityError(
        f"signature check failed for {uri}: no {SIGNATURE_FILE} (unsigned), and "
        "MODEL_VERIFY_KEY requires a signed model; nothing was published"
    )


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


def _check_names(uri: str, names: list[str]) -> None:
    for name in names:
        path = PurePosixPath(name)
        if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
            raise IntegrityError(f"{uri}: object name {name!r} would escape MODEL_DIR")
        if name == MANIFEST:
            raise IntegrityError(f"{uri}: object name {MANIFEST!r} is reserved for the loader")


def _check_required(uri: str, names: list[str], required: tuple[str, ...]) -> None:
    present = set(names)
    missing = [f for f in required if f not in present]
    if missing:
        raise ObjectNotFoundError(
            f"{uri}: missing {', '.join(missing)} (found: {', '.join(sorted(present))})"
        )


def _check_external_data(uri: str, staging: Path, names: list[str]) -> None:
    """Every file an ONNX model of the version keeps tensors in must be in the version."""
    present = set(names)
    for name in names:
        if not name.endswith(".onnx"):
            continue
        try:
            locations = external_files(staging / name)
        except (NotOnnx, OSError) as exc:
            log.warning("%s: not read as ONNX (%s); the API will say whether it loads", name, exc)
            continue
        folder = PurePosixPath(name).parent
        missing = sorted(
            location
            for location in locations
            if os.path.normpath(folder / location).replace(os.sep, "/") not in present
        )
        if missing:
            hint = "" if uri.endswith("/") else "; MODEL_URI names one object: name its prefix"
            raise ObjectNotFoundError(
                f"{uri}: {name} keeps tensors in {', '.join(missing)}, which the version does "
                f"not hold (found: {', '.join(sorted(present))}){hint}"
            )


def _identity(settings: LoaderSettings, uri: str, objects: list[RemoteObject]) -> tuple[str, str]:
    """Model name and version: from settings, else the URI's last two path segments (a
    URI naming one file: its folder's); an ONNX file named otherwise than model.onnx
    names the model itself, version 1 (gs://bucket/iris_svc.onnx: iris_svc 1)."""
    parts = urlsplit(uri)
    segments = [s for s in (parts.netloc + "/" + parts.path).split("/") if s]
    if len(objects) == 1 and segments and unquote(segments[-1]) == _file_name(objects[0].uri):
        file = unquote(segments.pop())  # the URI named a single object
        stem, dot, suffix = file.rpartition(".")
        if dot and suffix.lower() == "onnx" and file != PINNED_FILE and stem:
            return settings.model_name or stem, settings.model_version or "1"
    derived_name = segments[-2] if len(segments) >= 2 else (segments[-1] if segments else "model")
    derived_version = segments[-1] if len(segments) >= 2 else "1"
    return settings.model_name or derived_name, settings.model_version or derived_version


def _file_name(uri: str) -> str:
    """The last segment of a URI's path, unquoted."""
    return unquote(urlsplit(uri).path.rstrip("/").rpartition("/")[2])


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
        # A version unpacked from an archive is the archive it came from.
        listed = [manifest["archive"]] if "archive" in manifest else manifest["objects"]
        recorded = sorted(RemoteObject(**_remote_fields(e)).fingerprint() for e in listed)
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


def _pinned_name(settings: LoaderSettings, uri: str, names: list[str]) -> str | None:
    if settings.model_sha256 is None:
        return None
    if PINNED_FILE in names:
        return PINNED_FILE
    if len(names) == 1:
        return names[0]
    raise ConfigError(
        f"MODEL_SHA256 pins {PINNED_FILE}, and {uri} has no {PINNED_FILE} "
        f"(found: {', '.join(sorted(names))})"
    )


def _pin_holds(manifest: dict[str, Any], sha256: str | None) -> bool:
    if sha256 is None:
        return True
    recorded = {e.get("name"): e.get("sha256") for e in manifest.get("objects", [])}
    pinned = PINNED_FILE if PINNED_FILE in recorded else next(iter(recorded), None)
    return len(recorded) >= 1 and recorded.get(pinned) == sha256.lower()


def _download_all(
    source: Source, objects: list[RemoteObject], staging: Path, settings: LoaderSettings
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Hand every object to the source at once (it runs them on its one pool of
    workers), log progress at a steady cadence, then make each file's manifest entry.
    Returns the entries, and the archive's own record if the version was one."""
    progress = Progress(sum(o.size for o in objects))
    futures: dict[Future[str | None], RemoteObject] = {}
    for obj in objects:
        dest = staging if obj.archive else staging / obj.name
        log.info("downloading %s (%d bytes)", obj.uri, obj.size)
        with _destination(dest):
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            futures[source.download(obj, dest, progress.add)] = obj
    next_report = time.monotonic() + settings.progress_seconds
    waiting = set(futures)
    while waiting:
        # Timed waits: SIGALRM/SIGTERM raise here, in the main thread.
        finished, waiting = wait(waiting, timeout=0.2, return_when=FIRST_EXCEPTION)
        for future in finished:
            if (exc := future.exception()) is not None:
                raise exc
        if time.monotonic() >= next_report:
            log.info("progress: %s", progress.line())
            next_report += settings.progress_seconds
    log.info("downloaded %s", progress.line())

    entries: list[dict[str, Any]] = []
    archive = None
    for future, obj in futures.items():
        if not obj.archive:
            entries.append(_entry(staging / obj.name, obj, future.result()))
            continue
        archive = {**_fields(obj), "sha256": future.result()}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            name = path.relative_to(staging).as_posix()
            member = RemoteObject(
                name=name,
                uri=f"{obj.uri}#{name}",
                size=path.stat().st_size,
                generation=obj.generation,
            )
            entries.append(_entry(path, member, None))
    return entries, archive


def _entry(path: Path, obj: RemoteObject, sha256: str | None) -> dict[str, Any]:
    """The manifest entry of a downloaded file, made durable and world-readable; its
    sha256 from the download, or read back here if the source did not compute it."""
    with _destination(path):
        size = path.stat().st_size
        digest = hashlib.sha256() if sha256 is None else None
        with open(path, "rb") as fh:
            while digest is not None and (chunk := fh.read(_CHUNK)):
                digest.update(chunk)
            os.fsync(fh.fileno())
        path.chmod(0o644)
    if size != obj.size:
        raise IntegrityError(f"{obj.uri}: got {size} bytes, storage lists {obj.size}")
    return {**_fields(obj), "sha256": sha256 if digest is None else digest.hexdigest()}


def _fields(obj: RemoteObject) -> dict[str, Any]:
    """What the manifest records of an object: everything but the archive flag."""
    return {k: v for k, v in asdict(obj).items() if k != "archive"}


@contextlib.contextmanager
def _destination(path: Path) -> Iterator[None]:
    """Write failures that are the volume's fault (full, read-only) as DestinationError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DESTINATION_ERRNOS:
            raise DestinationError(f"writing {path}: {exc.strerror}") from exc
        raise


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
