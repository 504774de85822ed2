"""Storage schemes the loader reads from. A new scheme is one module and one line here."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from model_loader.config import LoaderSettings
from model_loader.errors import ConfigError
from model_loader.sources.base import RemoteObject, Source
from model_loader.sources.file import FileSource
from model_loader.sources.gcs import GcsSource
from model_loader.sources.http import HttpSource

SOURCES: dict[str, Callable[[str, LoaderSettings], Source]] = {
    "gs": GcsSource,
    "file": FileSource,
    "https": HttpSource,
    "http": HttpSource,  # plain HTTP: an in-cluster mirror, tests
}


def open_source(settings: LoaderSettings) -> Source:
    scheme = urlsplit(settings.model_uri).scheme
    try:
        factory = SOURCES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in SOURCES)
        raise ConfigError(
            f"MODEL_URI {settings.model_uri!r}: unsupported scheme {scheme!r} (supported: {known})"
        ) from None
    return factory(settings.model_uri, settings)


__all__ = ["SOURCES", "RemoteObject", "Source", "open_source"]
