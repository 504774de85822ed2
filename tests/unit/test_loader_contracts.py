"""What the loader assumes of its libraries, pinned: an upgrade that breaks one fails here.

loader/pyproject.toml declares the ranges these hold for. The servers are in-process,
on loopback; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import mmap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import google.auth.transport.requests
import google_crc32c
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from model_load_harness.keys import fake_google_credentials
from model_loader.sources.gcs import GcsSource

READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # a body announced as 10 bytes, of which 4 arrive
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.write(b"abcd")
        self.wfile.flush()
        self.close_connection = True

    def do_POST(self) -> None:  # a token endpoint that grants every request
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"access_token": "granted", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --- the standard library: http.client ------------------------------------------------
def test_http_client_readinto_is_its_own_and_fills_the_callers_buffer(server: str) -> None:
    # transfer.py receives into pool buffers with HTTPResponse.readinto: it must be
    # http.client's own (straight from the socket), not io's read-then-copy default.
    assert http.client.HTTPResponse.readinto is not io.BufferedIOBase.readinto
    conn = http.client.HTTPConnection(server, timeout=5)
    conn.request("GET", "/")
    response = conn.getresponse()
    buffer = mmap.mmap(-1, 4096)
    with memoryview(buffer) as view:
        # A body that ends early is an exception or a short count: both are retried.
        try:
            got = response.readinto(view[:10])
        except http.client.IncompleteRead:
            got = -1
        assert got in (-1, 4)
        if got == 4:
            assert buffer[:4] == b"abcd"
    conn.close()


# --- google-cloud-storage -----------------------------------------------------------------
def test_storage_client_names_its_endpoint_publicly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Downloads go to Client.api_endpoint: the emulator's URL when STORAGE_EMULATOR_HOST
    # is set, Google's otherwise.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    client = storage.Client(project=None, credentials=AnonymousCredentials())
    assert client.api_endpoint == "http://127.0.0.1:4443"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    client = storage.Client(project=None, credentials=AnonymousCredentials())
    assert client.api_endpoint == "https://storage.googleapis.com"
    client.close()


def test_storage_client_scopes_allow_reading() -> None:
    # GcsSource asks google.auth.default for the client's own scopes.
    assert READ_ONLY in storage.Client.SCOPE


def test_gcs_source_hands_the_client_its_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from model_loader.config import LoaderSettings

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    settings = LoaderSettings(MODEL_URI="gs://b/m/v1/", MODEL_DIR=str(tmp_path))  # type: ignore[call-arg]
    source = GcsSource(settings.model_uri, settings)
    assert source.endpoint == "http://127.0.0.1:1"
    headers: dict[str, str] = {}
    source.client  # noqa: B018 - made on first use
    source._authorize("http://127.0.0.1:1/download/x", headers)
    assert headers == {}  # anonymous against an emulator, as the client would choose
    source.close()


# --- google-auth --------------------------------------------------------------------------
def test_credentials_before_request_adds_a_bearer_token(server: str, tmp_path: Path) -> None:
    # Each ranged GET is authorised by Credentials.before_request: it refreshes the token
    # (here from a token endpoint that grants it) and sets the Authorization header.
    info = fake_google_credentials(
        tmp_path / "key.json", "service_account", f"http://{server}/token"
    )
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[READ_ONLY])
    headers: dict[str, str] = {}
    request = google.auth.transport.requests.Request(requests.Session())
    credentials.before_request(request, "GET", "https://storage.googleapis.com/x", headers)
    assert headers["authorization"] == "Bearer granted"
    anonymous: dict[str, str] = {}
    AnonymousCredentials().before_request(request, "GET", "https://x/", anonymous)
    assert anonymous == {}


# --- google-crc32c ------------------------------------------------------------------------
def test_crc32c_digest_is_the_big_endian_value_gcs_lists() -> None:
    # The CRC-32C check value of "123456789" is 0xE3069283; GCS lists it base64-encoded.
    checksum = google_crc32c.Checksum()
    checksum.update(b"1234")
    checksum.update(b"56789")
    assert checksum.digest() == bytes.fromhex("e3069283")
    assert base64.b64encode(checksum.digest()).decode() == "4waSgw=="


# --- requests -----------------------------------------------------------------------------
def test_requests_reads_proxies_and_ca_bundle_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The downloader's connections follow the environment as requests reads it.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "storage.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")
    session = requests.Session()
    env = session.merge_environment_settings("https://storage.example/x", {}, None, None, None)
    assert env["proxies"]["https"] == "http://proxy.internal:3128"
    assert env["verify"] == "/etc/ssl/custom.pem"
    bypass = session.merge_environment_settings("https://storage.internal/", {}, None, None, None)
    assert not bypass["proxies"].get("https")
    assert Path(requests.certs.where()).is_file()
