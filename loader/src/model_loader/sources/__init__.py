"""Storage schemes the loader reads from. A new scheme is one module and one line here.

Each scheme's module is imported only when a URI uses it: google-cloud-storage, requests
and the archive modules cost a few hundred milliseconds of start-up, paid by the one
scheme that needs them.
"""

from __future__ import annotations

from importlib import import_module
from urllib.parse import urlsplit

from model_loader.config import LoaderSettings
from model_loader.errors import ConfigError
from model_loader.sources.base import RemoteObject, Source

# scheme -> "module:class" of its Source
SOURCES: dict[str, str] = {
    "gs": "model_loader.sources.gcs:GcsSource",
    "file": "model_loader.sources.file:FileSource",
    "https": "model_loader.sources.http:HttpSource",
    "http": "model_loader.sources.http:HttpSource",  # plain HTTP: an in-cluster mirror, tests
}


def open_source(settings: LoaderSettings) -> Source:
    scheme = urlsplit(settings.model_uri).scheme
    try:
        module, _, name = SOURCES[scheme].partition(":")
    except KeyError:
        known = ", ".join(f"{s}://" for s in SOURCES)
        raise ConfigError(
            f"MODEL_URI {settings.model_uri!r}: unsupported scheme {scheme!r} (supported: {known})"
        ) from None
    source: Source = getattr(import_module(module), name)(settings.model_uri, settings)
    return source


__all__ = ["SOURCES", "RemoteObject", "Source", "open_source"]
