"""What every storage scheme provides: list the objects of a version, fetch one."""

from __future__ import annotations

from collections.abc import Callable
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

    def fingerprint(self) -> tuple[str, int, str | None, str | None, str | None]:
        """What must match for a local copy to count as this object."""
        return (self.name, self.size, self.generation, self.md5, self.crc32c)


class Source(Protocol):
    """A model version in some storage. One implementation per URI scheme.

    Implementations translate their library's exceptions into `model_loader.errors`
    and verify whatever transport checksums their storage offers while downloading.
    """

    uri: str

    def list_objects(self) -> list[RemoteObject]:
        """All objects of the version; raise ObjectNotFoundError when there are none."""
        ...

    def download(
        self, obj: RemoteObject, dest: Path, progress: Callable[[int], None]
    ) -> str | None:
        """Write `obj` to `dest` (whose parent exists), verified; call `progress(n)` as
        bytes arrive. Return its sha256 (hex) if computed on the way, else None.

        Several objects may be downloaded at once, from different threads. A source
        that holds connections or threads may also offer `close()`, called on failure.
        """
        ...
