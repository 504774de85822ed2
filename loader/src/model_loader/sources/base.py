"""What every storage scheme provides: list the objects of a version, fetch them, close."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RemoteObject:
    """One object of a model version, as its storage describes it."""

    name: str  # path relative to the version's prefix, '/'-separated
    uri: str
    size: int
    generation: str | None = None  # changes whenever the object is rewritten
    md5: str | None = None  # base64, as GCS reports it
    crc32c: str | None = None  # base64, as GCS reports it
    # An archive (.tar.gz, .zip) whose files are the version: unpacked by download().
    archive: bool = False

    def fingerprint(self) -> tuple[str, int, str | None, str | None, str | None]:
        """What must match for a local copy to count as this object."""
        return (self.name, self.size, self.generation, self.md5, self.crc32c)


MODEL_FILE = "model.onnx"


def lone_file_name(name: str) -> str:
    """The name in the version of a file that MODEL_URI names alone: an ONNX file is the
    version's model.onnx whatever it is called (gs://bucket/iris_svc.onnx, as the seed
    stored it); any other file keeps its name."""
    return MODEL_FILE if name.lower().endswith(".onnx") else name


def done(result: str | None) -> Future[str | None]:
    """A download that finished before it was handed back (a local copy)."""
    future: Future[str | None] = Future()
    future.set_result(result)
    return future


class Source(Protocol):
    """A model version in some storage. One implementation per URI scheme.

    Implementations translate their library's exceptions into `model_loader.errors`
    and verify whatever transport checksums their storage offers while downloading.
    Listing reads metadata only: nothing is downloaded before `download()`.
    """

    uri: str

    def list_objects(self) -> list[RemoteObject]:
        """All objects of the version; raise ObjectNotFoundError when there are none."""
        ...

    def download(
        self, obj: RemoteObject, dest: Path, progress: Callable[[int], None]
    ) -> Future[str | None]:
        """Start writing `obj` to `dest` (whose parent exists); call `progress(n)` as
        bytes arrive. The future gives the sha256 (hex) of the bytes received if it was
        computed on the way, else None; it raises a LoaderError on failure.

        Every object of a version is handed over at once: a source runs them on its one
        pool of LOADER_CONCURRENCY workers. An archive (`obj.archive`) is unpacked into
        `dest`, a directory, and the future gives the archive's own sha256 (or None).
        """
        ...

    def close(self) -> None:
        """Stop downloads still running and release connections and threads. Called once
        the load is over, successful or not; may be called more than once."""
        ...
