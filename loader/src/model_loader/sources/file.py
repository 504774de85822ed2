"""file:///dir/ — a local or mounted directory (a PVC, a hostPath, a CI checkout)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import unquote, urlsplit

from model_loader.config import LoaderSettings
from model_loader.errors import ConfigError, ObjectNotFoundError, PermissionDeniedError
from model_loader.sources.base import RemoteObject, done, lone_file_name


class FileSource:
    def __init__(self, uri: str, settings: LoaderSettings | None = None) -> None:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"MODEL_URI {uri!r}: file:// URIs take no host (file:///abs/path)")
        self.uri = uri
        self.root = Path(unquote(parts.path))

    def list_objects(self) -> list[RemoteObject]:
        if self.root.is_file():
            return [self._describe(self.root, lone_file_name(self.root.name))]
        if not self.root.is_dir():
            raise ObjectNotFoundError(f"{self.uri}: no such file or directory")
        try:
            files = sorted(p for p in self.root.rglob("*") if p.is_file())
        except PermissionError as exc:
            raise PermissionDeniedError(f"{self.uri}: {exc.strerror}") from exc
        if not files:
            raise ObjectNotFoundError(f"{self.uri}: the directory is empty")
        return [self._describe(p, p.relative_to(self.root).as_posix()) for p in files]

    def _describe(self, path: Path, name: str) -> RemoteObject:
        stat = path.stat()
        return RemoteObject(
            name=name, uri=path.as_uri(), size=stat.st_size, generation=str(stat.st_mtime_ns)
        )

    def download(
        self, obj: RemoteObject, dest: Path, progress: Callable[[int], None]
    ) -> Future[str | None]:
        src = self.root if self.root.is_file() else self.root / obj.name
        try:
            shutil.copyfile(src, dest)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"{obj.uri}: vanished while loading") from exc
        except PermissionError as exc:
            raise PermissionDeniedError(f"{obj.uri}: {exc.strerror}") from exc
        progress(obj.size)
        return done(None)  # copied here and now; the loader hashes the copy

    def close(self) -> None:
        pass  # holds nothing open
