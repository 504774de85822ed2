"""Key material made on the spot (keys and credentials are never committed)."""

from __future__ import annotations

import json
from pathlib import Path

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"


def fake_google_credentials(path: Path, kind: str, token_uri: str = GOOGLE_TOKEN_URI) -> dict:
    """Write a well-formed but fake Google credentials file (mode 0600) and return it:
    `service_account`, a key with an RSA private key made now (keys are never committed),
    or `authorized_user`, the ADC file `gcloud auth application-default login` writes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if kind == "service_account":
        pem = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode()
        )
        info = dict(
            type=kind,
            project_id="fake-project",
            private_key_id="0" * 40,
            private_key=pem,
            client_email="model-loader@fake-project.iam.gserviceaccount.com",
            client_id="100000000000000000000",
            token_uri=token_uri,
        )
    else:
        info = dict(
            type=kind,
            client_id="fake.apps.googleusercontent.com",
            client_secret="fake-client-secret",
            refresh_token="fake-refresh-token",
            token_uri=token_uri,
        )
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return info


def key_pair(directory: Path, curve: str = "secp256r1") -> tuple[Path, Path]:
    """An ECDSA key pair made now (keys are never committed), as `make keys` makes one:
    directory/key.pem (private, PKCS8 PEM, mode 0600) and directory/key.pub (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP384R1() if curve == "secp384r1" else ec.SECP256R1())
    (directory / "key.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "key.pem").chmod(0o600)
    (directory / "key.pub").write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return directory / "key.pem", directory / "key.pub"
