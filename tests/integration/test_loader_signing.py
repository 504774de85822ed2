"""Signed models end to end on loopback: model_tools.publish signs and uploads to the real
fake-gcs-server, the loader (a process) verifies with MODEL_VERIFY_KEY. Keys are made in
the test; each tamper is done in the bucket, after signing, as an attacker would."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from google.cloud import storage

import model_tools.publish
from model_load_harness.fakegcs import FakeGcs
from model_load_harness.keys import key_pair
from tests.conftest import MODEL_V1
from tests.integration.conftest import BUCKET, run_loader


@pytest.fixture(scope="module")
def publish_module() -> ModuleType:
    return model_tools.publish


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def bucket(fake_gcs: FakeGcs) -> Iterator[storage.Bucket]:
    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": fake_gcs.url}):
        yield storage.Client().bucket(BUCKET)


def publish(
    module: ModuleType, fake_gcs: FakeGcs, sign_key: Path | None, src: Path = MODEL_V1
) -> str:
    """A new version, a copy of iris_svc/v1 (signed with sign_key if given)."""
    uri = f"gs://{BUCKET}/signed/{uuid.uuid4().hex[:8]}/"
    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": fake_gcs.url}):
        module.publish(src, uri, storage.Client(), sign_key)
    return uri


def load(fake_gcs: FakeGcs, model_dir: Path, uri: str, **extra: str) -> tuple[int, str]:
    result = run_loader(
        {
            "STORAGE_EMULATOR_HOST": fake_gcs.url,
            "MODEL_URI": uri,
            "MODEL_DIR": str(model_dir),
            "LOADER_WAIT_SECONDS": "5",
            **extra,
        }
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


def manifest(model_dir: Path) -> dict[str, object]:
    return json.loads((model_dir / "current" / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_a_signed_version_loads_and_records_its_signer(
    fake_gcs: FakeGcs, publish_module: ModuleType, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    uri = publish(publish_module, fake_gcs, private)
    code, stderr = load(fake_gcs, tmp_path / "m", uri, MODEL_VERIFY_KEY=str(public))
    assert code == 0, stderr
    assert "signature verified" in stderr
    block = manifest(tmp_path / "m")["signature"]
    assert isinstance(block, dict)
    signature = (tmp_path / "m" / "current" / "model.sig").read_bytes()
    assert block["signer"] == f"sha256:{hashlib.sha256(public.read_bytes()).hexdigest()}"
    assert block["digest"] == f"sha256:{hashlib.sha256(signature).hexdigest()}"
    assert block["files"] == 3
    # Unchanged, the same key: up to date, nothing downloaded or verified again.
    code, stderr = load(fake_gcs, tmp_path / "m", uri, MODEL_VERIFY_KEY=str(public))
    assert code == 0 and "up to date" in stderr


def tampered(
    bucket: storage.Bucket, uri: str, how: str
) -> None:  # the attacker's move, after signing
    prefix = uri.split(f"gs://{BUCKET}/", 1)[1]
    if how == "changed-byte":
        blob = bucket.blob(prefix + "model.onnx")
        data = bytearray(blob.download_as_bytes())
        data[100] ^= 0x01
        blob.upload_from_string(bytes(data))
    elif how == "file-added":
        bucket.blob(prefix + "extra.bin").upload_from_string(b"payload")
    elif how == "file-removed":
        bucket.blob(prefix + "sample.json").delete()


@pytest.mark.parametrize(
    ("how", "line"),
    [
        ("changed-byte", "model.onnx changed after signing: its sha256 is "),
        ("file-added", "extra.bin not covered by the signature (added after signing)"),
        ("file-removed", "sample.json signed but missing (removed after signing)"),
    ],
)
def test_a_version_tampered_in_the_bucket_is_exit_6_and_keeps_the_previous_one(
    fake_gcs: FakeGcs,
    bucket: storage.Bucket,
    publish_module: ModuleType,
    keys: tuple[Path, Path],
    tmp_path: Path,
    how: str,
    line: str,
) -> None:
    private, public = keys
    good = publish(publish_module, fake_gcs, private)
    assert load(fake_gcs, tmp_path, good, MODEL_VERIFY_KEY=str(public))[0] == 0
    current = os.readlink(tmp_path / "current")

    bad = publish(publish_module, fake_gcs, private)
    tampered(bucket, bad, how)
    code, stderr = load(fake_gcs, tmp_path, bad, MODEL_VERIFY_KEY=str(public))
    assert code == 6, stderr
    assert f"signature check failed for {bad}: {line}" in error_line(stderr)
    assert os.readlink(tmp_path / "current") == current
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "versions"]  # no litter
    termination = (tmp_path.parent / "termination-log").read_text()
    assert termination.startswith("exit 6: integrity failure: signature check failed")


def test_another_key_is_exit_6(
    fake_gcs: FakeGcs, publish_module: ModuleType, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _, other = key_pair(tmp_path / "other")
    uri = publish(publish_module, fake_gcs, keys[0])
    code, stderr = load(fake_gcs, tmp_path / "m", uri, MODEL_VERIFY_KEY=str(other))
    assert code == 6, stderr
    assert "signed with another key" in error_line(stderr)
    assert not (tmp_path / "m" / "current").exists()


def test_unsigned_with_a_key_is_exit_6_before_downloading(
    fake_gcs: FakeGcs, publish_module: ModuleType, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    uri = publish(publish_module, fake_gcs, None)
    code, stderr = load(
        fake_gcs,
        tmp_path / "m",
        uri,
        MODEL_VERIFY_KEY=str(keys[1]),
        MODEL_SIGNATURE_REQUIRED="true",
    )
    assert code == 6, stderr
    assert "no model.sig (unsigned), and MODEL_VERIFY_KEY requires" in error_line(stderr)
    assert "downloading" not in stderr
    assert not (tmp_path / "m" / "current").exists()


def test_required_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_loader(
        {
            "MODEL_URI": f"gs://{BUCKET}/iris_svc/v1/",
            "MODEL_DIR": str(tmp_path / "m"),
            "MODEL_SIGNATURE_REQUIRED": "true",
        }
    )
    assert result.returncode == 2, result.stderr
    assert "MODEL_SIGNATURE_REQUIRED=true needs MODEL_VERIFY_KEY" in error_line(result.stderr)


def test_unsigned_without_a_key_loads_with_one_line_saying_so(
    fake_gcs: FakeGcs, publish_module: ModuleType, tmp_path: Path
) -> None:
    uri = publish(publish_module, fake_gcs, None)
    code, stderr = load(fake_gcs, tmp_path / "m", uri)
    assert code == 0, stderr
    assert [line for line in stderr.splitlines() if "unsigned:" in line] == [
        next(line for line in stderr.splitlines() if "unsigned:" in line)
    ]
    assert "signature" not in manifest(tmp_path / "m")


def test_a_key_set_later_verifies_a_version_loaded_unverified(
    fake_gcs: FakeGcs, publish_module: ModuleType, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = keys
    uri = publish(publish_module, fake_gcs, private)
    code, stderr = load(fake_gcs, tmp_path / "m", uri)
    assert code == 0 and "not verified" in stderr, stderr
    assert "signature" not in manifest(tmp_path / "m")
    code, stderr = load(fake_gcs, tmp_path / "m", uri, MODEL_VERIFY_KEY=str(public))
    assert code == 0 and "up to date" not in stderr and "signature verified" in stderr, stderr
    assert "signature" in manifest(tmp_path / "m")
