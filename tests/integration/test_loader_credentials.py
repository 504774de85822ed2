"""Real GCS credentials, off GCP: the loader as a process reads a service-account key
named by GOOGLE_APPLICATION_CREDENTIALS and asks a token endpoint on loopback (the key's
token_uri) for an access token, as it would ask oauth2.googleapis.com. Each failure is
one ERROR line and its exit code, in seconds. (gcloud's user-login file always goes to
oauth2.googleapis.com, whatever its token_uri says: tests/e2e/test_compose_gcs.py runs it.)"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from model_load_harness.keys import fake_google_credentials
from model_load_harness.ports import free_port
from tests.integration.conftest import run_loader

URI = "gs://fake-bucket/iris_svc/v1/"


class TokenEndpoint(ThreadingHTTPServer):
    """Google's token endpoint as a fake key meets it: every grant is refused."""

    def __init__(self) -> None:
        self.forms: list[dict[str, list[str]]] = []
        super().__init__(("127.0.0.1", 0), _Refuse)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"


class _Refuse(BaseHTTPRequestHandler):
    server: TokenEndpoint

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.forms.append(parse_qs(body))
        answer = b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def real_gcs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No emulator: the client goes for real credentials."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)


def run(tmp_path: Path, key_file: Path, **extra: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = run_loader(
        {
            "MODEL_URI": URI,
            "MODEL_DIR": str(tmp_path / "models"),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            "LOADER_WAIT_SECONDS": "2",
            **extra,
        }
    )
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.returncode, errors[0], time.monotonic() - started


def b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_service_account_key_is_read_and_its_signed_grant_refused_is_exit_5(
    tmp_path: Path, token_endpoint: TokenEndpoint
) -> None:
    info = fake_google_credentials(tmp_path / "key.json", "service_account", token_endpoint.url)
    code, line, seconds = run(tmp_path, tmp_path / "key.json")
    assert code == 5 and seconds < 20
    assert "credentials rejected" in line and "invalid_grant" in line
    # Not retried: one grant for the listing, at most one more for google-cloud-storage's
    # background fetch of the bucket's metadata.
    assert 1 <= len(token_endpoint.forms) <= 2
    # The grant is a JWT the key signed, in the key's own name.
    header, claims, signature = token_endpoint.forms[0]["assertion"][0].split(".")
    assert json.loads(b64(claims))["iss"] == info["client_email"]
    private = serialization.load_pem_private_key(info["private_key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    private.public_key().verify(  # raises InvalidSignature otherwise
        b64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def test_unreachable_token_endpoint_is_exit_3_within_the_wait(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/token"
    fake_google_credentials(tmp_path / "key.json", "service_account", closed)
    code, line, seconds = run(tmp_path, tmp_path / "key.json", LOADER_WAIT_SECONDS="2")
    assert code == 3 and seconds < 15
    assert "the credentials' token endpoint not reachable within 2 s" in line
    assert "Connection refused" in line


def test_unreadable_key_file_is_exit_5_naming_the_file_and_the_ids(tmp_path: Path) -> None:
    # A directory: unreadable as a file even by root, who ignores a mode of 0000.
    (tmp_path / "key.json").mkdir()
    code, line, seconds = run(tmp_path, tmp_path / "key.json")
    assert code == 5 and seconds < 20
    assert f"cannot read GOOGLE_APPLICATION_CREDENTIALS={tmp_path / 'key.json'}" in line
    assert f"as uid {os.getuid()}, groups " in line


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "was not found"), ("{not json", "not a valid json file")],
)
def test_missing_or_malformed_key_file_is_exit_5_with_the_reason(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    if content is not None:
        (tmp_path / "key.json").write_text(content)
    code, line, _ = run(tmp_path, tmp_path / "key.json")
    assert code == 5
    assert f"GOOGLE_APPLICATION_CREDENTIALS={tmp_path / 'key.json'}: " in line and reason in line
