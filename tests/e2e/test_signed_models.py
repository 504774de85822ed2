"""Signed models on the real Compose stack: `make keys`, `make publish ... SIGN_KEY=...`,
then `MODEL_VERIFY_KEY=... docker compose up -d --wait` serves the signed version, and a
version tampered with in the bucket after signing makes `up` fail with the loader's line."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from unittest import mock

import httpx
import pytest
from google.cloud import storage

from model_load_harness.compose import Stack
from model_load_harness.keys import key_pair
from tests.conftest import MODEL_V1

pytestmark = pytest.mark.docker


def test_verification_on_serves_the_signed_version_and_refuses_a_tampered_one(
    stack: Stack, tmp_path: Path
) -> None:
    private, public = key_pair(tmp_path / "keys")
    stack.publish(MODEL_V1, "gs://ml-models/iris_signed/v1/", sign_key=private)
    stack.publish(MODEL_V1, "gs://ml-models/iris_signed/v2/", sign_key=private)

    stack.compose(
        "up", "-d", "--wait", "--wait-timeout", "120",
        MODEL_URI="gs://ml-models/iris_signed/v1/", MODEL_VERIFY_KEY=str(public),
    )  # fmt: skip
    ready = httpx.get(f"{stack.api}/ready").json()
    assert (ready["model_name"], ready["model_version"]) == ("iris_signed", "v1")
    logs = stack.compose("logs", "loader").stdout
    assert "signature verified: gs://ml-models/iris_signed/v1/, 3 files" in logs
    # The API reports who signed what it serves: /metadata, V2 metadata, the metric.
    signature = httpx.get(f"{stack.api}/metadata").json()["signature"]
    signer = signature["signer"]
    assert signer == "sha256:" + hashlib.sha256(public.read_bytes()).hexdigest()
    assert signature["digest"].startswith("sha256:")
    parameters = httpx.get(f"{stack.api}/v2/models/iris_signed").json()["parameters"]
    assert parameters["signer"] == signer
    assert parameters["signature_digest"] == signature["digest"]
    assert f'signer="{signer}"' in httpx.get(f"{stack.api}/metrics").text

    # One byte of v2's model.onnx changes in the bucket, after it was signed.
    with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": stack.gcs}):
        blob = storage.Client().bucket("ml-models").blob("iris_signed/v2/model.onnx")
        data = bytearray(blob.download_as_bytes())
        data[100] ^= 0x01
        blob.upload_from_string(bytes(data))
    result = stack.compose(
        "up", "-d", "--wait", "--wait-timeout", "120", check=False,
        MODEL_URI="gs://ml-models/iris_signed/v2/", MODEL_VERIFY_KEY=str(public),
    )  # fmt: skip
    assert result.returncode != 0
    assert 'service "loader" didn\'t complete successfully: exit 6' in result.stderr
    errors = [
        line for line in stack.compose("logs", "loader").stdout.splitlines() if " ERROR " in line
    ]
    assert len(errors) == 1, errors
    assert (
        "signature check failed for gs://ml-models/iris_signed/v2/: model.onnx changed after "
        "signing: its sha256 is "
    ) in errors[0]
