"""gs://bucket/prefix/ — Google Cloud Storage, or an emulator via STORAGE_EMULATOR_HOST.

Credentials: Application Default Credentials (Workload Identity, a key file named by
GOOGLE_APPLICATION_CREDENTIALS, gcloud's user login) unless LOADER_GCS_ANONYMOUS is
set; against an emulator (STORAGE_EMULATOR_HOST=http://host:port) anonymous ones, as
google-cloud-storage itself would choose. The source makes the credentials and hands
them to the client, so listing (google-cloud-storage) and object bytes
(`model_loader.transfer`: concurrent ranges of the listed generation, from the client's
`api_endpoint`, each request authorised by the same credentials) share one identity.
Bytes are verified against the crc32c (or md5) GCS lists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import quote

import google.auth
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import Request
from google.cloud import storage

from model_loader.config import LoaderSettings
from model_loader.errors import (
    ConfigError,
    LoaderError,
    ObjectNotFoundError,
    PermissionDeniedError,
    SourceUnavailableError,
)
from model_loader.sources.base import RemoteObject, lone_file_name
from model_loader.transfer import (
    CONNECT_TIMEOUT_SECONDS,
    Downloader,
    Job,
    Progress,
    transfer_settings,
)

log = logging.getLogger(__name__)

# Worth another try: the storage is not (yet) reachable, or said "try later".
_transient = if_exception_type(
    ConnectionError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
    api_exceptions.TooManyRequests,
    api_exceptions.InternalServerError,
    api_exceptions.BadGateway,
    api_exceptions.ServiceUnavailable,
    api_exceptions.GatewayTimeout,
)

CREDENTIALS_HINT = (
    "provide Application Default Credentials (Workload Identity on GKE, "
    "GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json, or `gcloud auth application-default "
    "login`), set LOADER_GCS_ANONYMOUS=true for a public bucket, or "
    "STORAGE_EMULATOR_HOST=http://host:port for an emulator"
)


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ConfigError(f"MODEL_URI {uri!r}: expected gs://bucket/prefix/")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigError(f"MODEL_URI {uri!r}: no bucket name")
    return bucket, prefix


class GcsSource:
    def __init__(
        self, uri: str, settings: LoaderSettings, client: storage.Client | None = None
    ) -> None:
        self.uri = uri
        self.bucket_name, self.prefix = split_gs_uri(uri)
        self._settings = settings
        self._client = client
        self._timeout = (CONNECT_TIMEOUT_SECONDS, settings.request_timeout_seconds)
        self._retry = Retry(
            predicate=_transient,
            initial=0.5,
            maximum=5.0,
            multiplier=2.0,
            timeout=settings.wait_seconds,
            on_error=self._log_retry,
        )
        self._blobs: dict[str, storage.Blob] = {}
        self._credentials: Credentials | None = None
        self._auth_lock = threading.Lock()
        self._auth_request: Request | None = None
        self._downloader: Downloader | None = None

    @property
    def endpoint(self) -> str:
        if self._client is not None:
            return str(self._client.api_endpoint)
        return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"

    def _what(self, exc: BaseException) -> str:
        """What did not answer: storage, or the token endpoint the credentials ask first."""
        if isinstance(exc, auth_exceptions.TransportError):
            return "the credentials' token endpoint"
        return f"storage at {self.endpoint}"

    def _log_retry(self, exc: BaseException) -> None:
        log.warning("%s not answering yet (%s); retrying", self._what(exc), _brief(exc))

    @property
    def client(self) -> storage.Client:
        if self._client is None:
            self._credentials = self._make_credentials()
            self._client = storage.Client(
                project=self._settings.gcs_project, credentials=self._credentials
            )
        return self._client

    def _make_credentials(self) -> Credentials:
        if self._settings.gcs_anonymous or os.environ.get("STORAGE_EMULATOR_HOST"):
            return AnonymousCredentials()
        try:
            credentials, _ = google.auth.default(scopes=storage.Client.SCOPE)
        except auth_exceptions.DefaultCredentialsError as exc:
            key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
            if key_file:  # the library's reason names the file: missing, not a key
                raise PermissionDeniedError(
                    f"GOOGLE_APPLICATION_CREDENTIALS={key_file}: {_brief(exc)}"
                ) from exc
            raise PermissionDeniedError(f"no Google credentials found: {CREDENTIALS_HINT}") from exc
        except OSError as exc:  # google-auth opens the key file unguarded
            if exc.filename is None:
                raise
            raise PermissionDeniedError(
                f"cannot read GOOGLE_APPLICATION_CREDENTIALS="
                f"{os.environ.get('GOOGLE_APPLICATION_CREDENTIALS')} ({_brief(exc)}) as "
                f"uid {os.getuid()}, groups {','.join(map(str, os.getgroups()))}: make the "
                "key file readable by that uid or one of those groups"
            ) from exc
        return credentials  # type: ignore[no-any-return]

    def _authorize(self, url: str, headers: MutableMapping[str, str]) -> None:
        """Add the credentials' Authorization header, refreshing an expired token once
        for all the download workers."""
        with self._auth_lock, self._translated(url):
            if self._auth_request is None:
                self._auth_request = Request(requests.Session())
            assert self._credentials is not None, "list_objects() first"
            self._credentials.before_request(self._auth_request, "GET", url, headers)

    def list_objects(self) -> list[RemoteObject]:
        # A prefix ends with '/'; without one, the URI may name a single object.
        prefix = self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"
        with self._translated(self.uri):
            blobs = [
                b
                for b in self.client.list_blobs(
                    self.bucket_name, prefix=prefix, retry=self._retry, timeout=self._timeout
                )
                if not b.name.endswith("/")  # folder placeholders
            ]
            if not blobs and not self.prefix.endswith("/") and self.prefix:
                single = self.client.bucket(self.bucket_name).get_blob(
                    self.prefix, retry=self._retry, timeout=self._timeout
                )
                if single is not None:
                    name = lone_file_name(single.name.rpartition("/")[2])
                    self._blobs = {name: single}
                    return self._listed()
        if not blobs:
            raise ObjectNotFoundError(f"no objects under {self.uri}")
        self._blobs = {b.name[len(prefix) :]: b for b in blobs}
        return self._listed()

    def _listed(self) -> list[RemoteObject]:
        return [
            RemoteObject(
                name=name,
                uri=f"gs://{self.bucket_name}/{b.name}",
                size=int(b.size or 0),
                generation=str(b.generation) if b.generation is not None else None,
                md5=b.md5_hash,
                crc32c=b.crc32c,
            )
            for name, b in self._blobs.items()
        ]

    def download(self, obj: RemoteObject, dest: Path, progress: Progress) -> Future[str | None]:
        blob = self._blobs[obj.name]
        url = (
            f"{self.client.api_endpoint.rstrip('/')}/download/storage/v1/b/"
            f"{quote(self.bucket_name, safe='')}/o/{quote(blob.name, safe='')}?alt=media"
        )
        # Pin the listed generation: an object rewritten mid-download is a 404, never a mix.
        if obj.generation is not None:
            url += f"&generation={obj.generation}"
        job = Job(url=url, dest=dest, size=obj.size, label=obj.uri, crc32c=obj.crc32c, md5=obj.md5)
        return self.downloader.submit(job, progress)  # type: ignore[return-value]

    @property
    def downloader(self) -> Downloader:
        if self._downloader is None:
            self._downloader = Downloader(transfer_settings(self._settings), self._authorize)
        return self._downloader

    def close(self) -> None:
        if self._downloader is not None:
            self._downloader.close()
        if self._client is not None:
            self._client.close()

    @contextlib.contextmanager
    def _translated(self, uri: str) -> Iterator[None]:
        """Map google-cloud-storage / api-core / auth exceptions to loader errors."""
        try:
            yield
        except LoaderError:
            raise
        except api_exceptions.RetryError as exc:
            cause = exc.cause or exc
            raise SourceUnavailableError(
                f"{self._what(cause)} not reachable within "
                f"{self._settings.wait_seconds:g} s ({_brief(cause)})"
            ) from exc
        except api_exceptions.NotFound as exc:
            raise ObjectNotFoundError(f"{uri}: {_brief(exc)}") from exc
        except (api_exceptions.Unauthorized, api_exceptions.Forbidden) as exc:
            raise PermissionDeniedError(f"{uri}: {_brief(exc)}") from exc
        except (auth_exceptions.DefaultCredentialsError, auth_exceptions.RefreshError) as exc:
            raise PermissionDeniedError(
                f"{uri}: credentials rejected ({_brief(exc)}); {CREDENTIALS_HINT}"
            ) from exc
        except Exception as exc:
            if _transient(exc):
                raise SourceUnavailableError(
                    f"storage at {self.endpoint} failed for {uri} ({_brief(exc)})"
                ) from exc
            raise


def _brief(exc: BaseException) -> str:
    """One short line: the exception's name and the root of its message."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (requests.exceptions.ConnectionError, auth_exceptions.TransportError)):
        # urllib3 buries the cause: "...Max retries exceeded ... (Caused by ...: [Errno 111] ...")"
        cause = re.search(r"Failed to resolve '[^']*'|\[Errno -?\d+\][^\"')]*", text)
        text = cause.group(0) if cause else text
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
