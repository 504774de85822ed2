"""model_loader.signature, held to model-signing's own verifier.

Every version here is signed by the real model-signing (through model_tools.publish's
`sign`, as `make publish SIGN_KEY=...` does) with keys made in the test; each case asks
both the loader and `model_signing.verifying` and expects the same verdict, the
loader's with one line naming what failed.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from model_signing import hashing, signing, verifying

import model_tools.publish
from model_load_harness.keys import key_pair
from model_loader.errors import ConfigError, IntegrityError
from model_loader.signature import SIGNATURE_FILE, VerifyKey, verify
from tests.conftest import MODEL_V1, ROOT

URI = "gs://b/iris_svc/v9/"


@pytest.fixture(scope="module")
def publish_module() -> ModuleType:
    return model_tools.publish


@pytest.fixture
def signed(tmp_path: Path, publish_module: ModuleType) -> tuple[Path, Path, Path]:
    """A copy of iris_svc/v1 with model.sig in it (as the loader receives a version),
    and the key pair that signed it."""
    version = tmp_path / "v9"
    version.mkdir()
    for path in MODEL_V1.iterdir():
        (version / path.name).write_bytes(path.read_bytes())
    private, public = key_pair(tmp_path / "keys")
    files = sorted(version.iterdir())
    (version / SIGNATURE_FILE).write_bytes(publish_module.sign(version, private, files))
    return version, private, public


def digests(version: Path) -> dict[str, str]:
    return {
        p.relative_to(version).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in version.rglob("*")
        if p.is_file()
    }


def both(version: Path, public: Path) -> tuple[str | None, str | None]:
    """(the loader's error line, model-signing's error) — None where it verified."""
    try:
        verify(
            URI, (version / SIGNATURE_FILE).read_bytes(), digests(version), VerifyKey.load(public)
        )
        ours = None
    except IntegrityError as exc:
        ours = exc.message
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
            version, version / SIGNATURE_FILE
        )
        reference = None
    except (ValueError, InvalidSignature) as exc:
        reference = str(exc) or type(exc).__name__
    return ours, reference


def test_a_signed_version_verifies_and_names_its_signer(signed: tuple[Path, Path, Path]) -> None:
    version, _, public = signed
    assert both(version, public) == (None, None)
    key = VerifyKey.load(str(public))
    block = verify(URI, (version / SIGNATURE_FILE).read_bytes(), digests(version), key)
    pem = public.read_bytes()
    assert block["signer"] == f"sha256:{hashlib.sha256(pem).hexdigest()}" == key.fingerprint
    sig = (version / SIGNATURE_FILE).read_bytes()
    assert block["digest"] == f"sha256:{hashlib.sha256(sig).hexdigest()}"
    assert block["files"] == 3 and block["key_type"] == "ecdsa-secp256r1"


def change_a_byte(version: Path) -> None:
    data = bytearray((version / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (version / "model.onnx").write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "line"),
    [
        (change_a_byte, "model.onnx changed after signing: its sha256 is "),
        (
            lambda v: (v / "extra.bin").write_bytes(b"x"),
            "extra.bin not covered by the signature (added after signing)",
        ),
        (
            lambda v: (v / "sample.json").unlink(),
            "sample.json signed but missing (removed after signing)",
        ),
        (
            lambda v: (v / SIGNATURE_FILE).write_bytes(b"{not json"),
            "model.sig is not a model-signing key signature",
        ),
    ],
    ids=["changed-byte", "file-added", "file-removed", "garbage-signature"],
)
def test_a_tampered_version_fails_in_both_with_one_line(
    signed: tuple[Path, Path, Path], tamper: Callable[[Path], object], line: str
) -> None:
    version, _, public = signed
    tamper(version)
    ours, reference = both(version, public)
    assert reference is not None, "model-signing accepted it"
    assert ours is not None and line in ours, ours
    assert ours.startswith(f"signature check failed for {URI}: ") and "\n" not in ours
    assert ours.endswith("nothing was published")


def test_another_key_fails_in_both(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    version, _, _ = signed
    _, other = key_pair(tmp_path / "other")
    ours, reference = both(version, other)
    assert reference is not None
    assert ours is not None and "signed with another key (sha256:" in ours
    assert f"not MODEL_VERIFY_KEY ({VerifyKey.load(str(other)).fingerprint})" in ours


def test_a_signature_without_the_key_hint_is_still_checked_against_the_key(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import json

    version, _, _ = signed
    bundle = json.loads((version / SIGNATURE_FILE).read_bytes())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    (version / SIGNATURE_FILE).write_text(json.dumps(bundle))
    _, other = key_pair(tmp_path / "other")
    ours, reference = both(version, other)
    assert reference is not None
    assert ours is not None and "does not verify with MODEL_VERIFY_KEY" in ours


def test_a_p384_key_verifies(tmp_path: Path, publish_module: ModuleType) -> None:
    version = tmp_path / "v"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"onnx")
    private, public = key_pair(tmp_path / "k", "secp384r1")
    (version / SIGNATURE_FILE).write_bytes(
        publish_module.sign(version, private, [version / "model.onnx"])
    )
    assert both(version, public) == (None, None)


def test_shard_signatures_are_refused_by_name(tmp_path: Path) -> None:
    version = tmp_path / "v"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"onnx" * 1000)
    private, public = key_pair(tmp_path / "k")
    config = hashing.Config().use_shard_serialization(shard_size=1000)
    signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(
        config.set_ignored_paths(paths=[SIGNATURE_FILE])
    ).sign(version, version / SIGNATURE_FILE)
    with pytest.raises(IntegrityError, match="hashes shards/sha256; the loader verifies"):
        verify(
            URI,
            (version / SIGNATURE_FILE).read_bytes(),
            digests(version),
            VerifyKey.load(str(public)),
        )


def test_paths_the_signer_ignored_stay_ignored(tmp_path: Path, publish_module: ModuleType) -> None:
    # publish.py signs exactly what it uploads: a .py beside the model is left out.
    version = tmp_path / "v"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"onnx")
    (version / "train.py").write_text("print(1)\n")
    private, public = key_pair(tmp_path / "k")
    (version / SIGNATURE_FILE).write_bytes(
        publish_module.sign(version, private, [version / "model.onnx"])
    )
    assert both(version, public) == (None, None)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it"),
        (b"not a key", "not a PEM public key"),
        ("rsa", "not an ECDSA P-256/P-384/P-521 public key"),
    ],
)
def test_a_bad_verify_key_is_a_configuration_error(
    tmp_path: Path, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / "key.pub"
    if content == "rsa":
        from cryptography.hazmat.primitives.asymmetric import rsa

        content = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem):
        VerifyKey.load(str(path))


def test_make_keys_makes_a_pair_that_signs_and_verifies(
    tmp_path: Path, publish_module: ModuleType
) -> None:
    keys = tmp_path / "keys"
    made = subprocess.run(
        ["make", "-s", "keys", f"KEYS_DIR={keys}"], cwd=ROOT, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    private, public = keys / "model-signing.key", keys / "model-signing.pub"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert VerifyKey.load(str(public)).key.curve.name == "secp256r1"
    version = tmp_path / "v"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"onnx")
    (version / SIGNATURE_FILE).write_bytes(
        publish_module.sign(version, private, [version / "model.onnx"])
    )
    assert both(version, public) == (None, None)
    again = subprocess.run(
        ["make", "-s", "keys", f"KEYS_DIR={keys}"], cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode != 0 and "exists" in again.stdout + again.stderr
