"""Signed models: check a version's OpenSSF model-signing signature before publishing.

The signature is the file `model.sig` in the version, as `model_signing sign key` (and
`make publish SIGN_KEY=...`) writes it with an ECDSA key:

    model.sig   a Sigstore bundle, JSON, mediaType application/vnd.dev.sigstore.bundle.v0.3+json
    ├── verificationMaterial.publicKey.hint   sha256 (hex) of the signer's public key, PEM
    └── dsseEnvelope   payloadType application/vnd.in-toto+json, one ECDSA signature over
        │              DSSE's PAE(payloadType, payload)
        └── payload    an in-toto Statement v1, predicateType https://model_signing/signature/v1.0
            ├── subject[0].digest.sha256   sha256 of the resources' digests, in order
            └── predicate
                ├── resources       [{name, algorithm: sha256, digest}], one per file
                └── serialization   {method: files, hash_type: sha256, ignore_paths}

Hash once: the loader already has the sha256 of every file it received (computed from
the receive buffers, never read back), so the statement's digests are compared with
those; only the signature over the statement is checked here, with `cryptography`.
The same checks as model-signing's own verifier, in the same order, for the one format
the loader accepts (tests/unit/test_loader_signature.py holds them to it); importing
model-signing itself (it loads sigstore and tuf) would cost more start-up than a
gigabyte's verification is allowed to.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from model_loader.errors import ConfigError, IntegrityError

SIGNATURE_FILE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
# Curves model-signing signs with, and the hash each signs over.
_CURVE_HASHES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}


@dataclass(frozen=True)
class VerifyKey:
    """MODEL_VERIFY_KEY: an elliptic-curve public key, PEM, and its fingerprint."""

    key: Any  # cryptography's EllipticCurvePublicKey
    fingerprint: str  # "sha256:<hex>" of the PEM: the hint model-signing puts in a bundle

    @classmethod
    def load(cls, path: str) -> VerifyKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = serialization.load_pem_public_key(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"MODEL_VERIFY_KEY={path}: cannot read it ({exc.strerror})") from exc
        except ValueError as exc:
            raise ConfigError(f"MODEL_VERIFY_KEY={path}: not a PEM public key ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVE_HASHES:
            raise ConfigError(
                f"MODEL_VERIFY_KEY={path}: not an ECDSA P-256/P-384/P-521 public key "
                "(make keys writes one)"
            )
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(key, f"sha256:{hashlib.sha256(pem).hexdigest()}")


def verify(uri: str, signature: bytes, digests: dict[str, str], key: VerifyKey) -> dict[str, Any]:
    """Check `signature` (model.sig's bytes) against `key` and the sha256 (hex) of every
    file of the version (`digests`, model.sig itself included or not). Return the
    manifest's provenance block; raise IntegrityError naming the first thing that fails."""

    def fail(problem: str) -> IntegrityError:
        return IntegrityError(f"signature check failed for {uri}: {problem}; nothing was published")

    statement = _signed_statement(signature, key, fail)
    predicate = statement["predicate"]
    serialization = predicate.get("serialization", {})
    if (serialization.get("method"), serialization.get("hash_type")) != ("files", "sha256"):
        raise fail(
            f"{SIGNATURE_FILE} hashes {serialization.get('method')}/"
            f"{serialization.get('hash_type')}; the loader verifies model-signing's default, "
            "files/sha256 (sign without --shard or another hash)"
        )
    signed: dict[str, str] = {}
    root = hashlib.sha256()
    for resource in predicate.get("resources", []):
        if resource.get("algorithm") != "sha256":
            raise fail(f"{resource.get('name')!r} is signed with {resource.get('algorithm')}")
        signed[resource["name"]] = resource["digest"]
        root.update(bytes.fromhex(resource["digest"]))
    if statement["subject"][0]["digest"]["sha256"] != root.hexdigest():
        raise fail("the signed statement is inconsistent (its root digest does not match)")

    ignored = [PurePosixPath(p) for p in serialization.get("ignore_paths", [])]
    present = {
        name: digest
        for name, digest in digests.items()
        if name != SIGNATURE_FILE and not _ignored(PurePosixPath(name), ignored)
    }
    changed = sorted(n for n in signed.keys() & present.keys() if signed[n] != present[n])
    if changed:
        name = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise fail(
            f"{name} changed after signing{more}: its sha256 is {present[name]}, "
            f"the signature says {signed[name]}"
        )
    added = sorted(present.keys() - signed.keys())
    if added:
        raise fail(f"{', '.join(added)} not covered by the signature (added after signing)")
    removed = sorted(signed.keys() - present.keys())
    if removed:
        raise fail(f"{', '.join(removed)} signed but missing (removed after signing)")
    return {
        "signer": key.fingerprint,
        "digest": f"sha256:{hashlib.sha256(signature).hexdigest()}",
        "file": SIGNATURE_FILE,
        "format": f"model-signing {PREDICATE_TYPE} in a Sigstore bundle v0.3 (DSSE)",
        "key_type": f"ecdsa-{key.key.curve.name}",
        "files": len(signed),
    }


def _signed_statement(signature: bytes, key: VerifyKey, fail: Any) -> dict[str, Any]:
    """The in-toto statement inside the bundle, once its signature holds for `key`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        bundle = json.loads(signature)
        envelope = bundle["dsseEnvelope"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = envelope["payloadType"]
        (entry,) = envelope["signatures"]
        signed_bytes = base64.b64decode(entry["sig"], validate=True)
        hint = bundle["verificationMaterial"]["publicKey"].get("hint", "")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise fail(f"{SIGNATURE_FILE} is not a model-signing key signature ({exc!r})") from exc
    if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
        raise fail(f"{SIGNATURE_FILE} is a {bundle.get('mediaType')!r}, not {BUNDLE_MEDIA_TYPE}")
    if hint and f"sha256:{hint}" != key.fingerprint:
        raise fail(
            f"signed with another key (sha256:{hint}), not MODEL_VERIFY_KEY ({key.fingerprint})"
        )
    pae = b"DSSEv1 %d %b %d %b" % (len(payload_type), payload_type.encode(), len(payload), payload)
    algorithm = getattr(hashes, _CURVE_HASHES[key.key.curve.name])()
    try:
        key.key.verify(signed_bytes, pae, ec.ECDSA(algorithm))
    except InvalidSignature as exc:
        raise fail(
            f"the signature does not verify with MODEL_VERIFY_KEY ({key.fingerprint})"
        ) from exc
    if payload_type != PAYLOAD_TYPE:
        raise fail(f"the signed payload is {payload_type!r}, not {PAYLOAD_TYPE}")
    try:
        statement: dict[str, Any] = json.loads(payload)
        if statement["_type"] != STATEMENT_TYPE or statement["predicateType"] != PREDICATE_TYPE:
            raise ValueError(f"{statement['_type']} / {statement['predicateType']}")
        if len(statement["subject"]) != 1:
            raise ValueError(f"{len(statement['subject'])} subjects")
    except (ValueError, KeyError, TypeError) as exc:
        raise fail(f"the signed statement is not a model-signing v1.0 one ({exc})") from exc
    return statement


def _ignored(name: PurePosixPath, ignored: list[PurePosixPath]) -> bool:
    return any(name == p or p in name.parents for p in ignored)
