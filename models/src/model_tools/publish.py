"""Publish a model version directory to a bucket: the Model-Load way to ship a model.

    uv run python -m model_tools.publish models/iris_svc/v2 gs://ml-models/iris_svc/v2/
    uv run python -m model_tools.publish models/iris_svc/v2 gs://ml-models/iris_svc/v2/ \
        --sign-key keys/model-signing.key
    uv run python -m model_tools.publish iris_svc.onnx gs://ml-models/iris_svc/v3/

One .onnx file is published as a version holding it alone, as model.onnx.

With --sign-key (an ECDSA private key, PEM: `make keys` makes one), the version is
signed with OpenSSF model-signing (`model_signing sign key`, files/sha256) and the
signature is uploaded with it as `model.sig`, covering exactly the files uploaded. The
signature is written to a temporary file, never into the source directory, and the key
never leaves this machine. A loader given the public key (MODEL_VERIFY_KEY) refuses the
version unless the signature holds for every file.

Talks to the local emulator when STORAGE_EMULATOR_HOST is set (`make publish` sets it
to the compose stack's fake-gcs on 127.0.0.1), otherwise to real GCS with Application
Default Credentials. Refuses to overwrite an existing version: versions are immutable,
publish a new one instead. model.onnx is uploaded last, so a loader listing the prefix
mid-upload finds no model and fails loudly instead of loading a partial version.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from google.api_core.exceptions import GoogleAPIError, PreconditionFailed
from google.cloud import storage

LAST = "model.onnx"
SIGNATURE = "model.sig"  # the name the loader looks for (model_loader.signature)


def sign(src: Path, key: Path, files: list[Path]) -> bytes:
    """model-signing's signature (key-based) over exactly `files` of `src`."""
    from model_signing import hashing, signing

    names = {p.relative_to(src).as_posix() for p in files}
    others = [p.relative_to(src) for p in src.rglob("*") if p.is_file()]
    ignored = [p for p in others if p.as_posix() not in names]
    with tempfile.TemporaryDirectory() as tmp:
        signature = Path(tmp) / SIGNATURE
        config = hashing.Config().set_ignored_paths(paths=[SIGNATURE, *ignored])
        signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(config).sign(
            src, signature
        )
        return signature.read_bytes()


def publish(src: Path, uri: str, client: storage.Client, sign_key: Path | None = None) -> list[str]:
    if not uri.startswith("gs://") or not uri.endswith("/"):
        raise ValueError(f"{uri!r}: expected gs://bucket/prefix/ (with the trailing slash)")
    bucket_name, _, prefix = uri[len("gs://") :].partition("/")
    model = src / LAST
    if not model.is_file():  # the loader reads <uri>model.onnx, and nothing deeper
        nested = sorted(p.relative_to(src).as_posix() for p in src.rglob(LAST))
        found = f" (found {', '.join(nested)}: publish its directory)" if nested else ""
        raise ValueError(f"{src}: no {LAST} at its top to publish{found}")
    files = sorted(
        (
            p
            for p in src.rglob("*")
            if p.is_file()
            and "__pycache__" not in p.relative_to(src).parts
            and not (sign_key and p.name == SIGNATURE)
        ),
        key=lambda p: (p == model, p.as_posix()),
    )
    existing = list(client.list_blobs(bucket_name, prefix=prefix, max_results=1))
    if existing:
        raise ValueError(f"{uri} already exists; publish a new version instead")
    signature = sign(src, sign_key, files) if sign_key else None
    bucket = client.bucket(bucket_name)
    published = []
    if signature is not None:  # before model.onnx: a version is complete once it lands
        bucket.blob(prefix + SIGNATURE).upload_from_string(signature, if_generation_match=0)
        published.append(f"gs://{bucket_name}/{prefix}{SIGNATURE}")
    for path in files:
        name = prefix + path.relative_to(src).as_posix()
        # if_generation_match=0: create only, never overwrite.
        bucket.blob(name).upload_from_filename(str(path), if_generation_match=0)
        published.append(f"gs://{bucket_name}/{name}")
    return published


def publish_path(
    src: Path, uri: str, client: storage.Client, sign_key: Path | None = None
) -> list[str]:
    """publish() a version directory, or one ONNX file as a version of only model.onnx
    (the seed kept iris_svc.onnx alone), copied aside under that name."""
    if not (src.is_file() and src.suffix.lower() == ".onnx"):
        return publish(src, uri, client, sign_key)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(src, Path(tmp) / LAST)
        return publish(Path(tmp), uri, client, sign_key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "src", type=Path, help="a version directory (models/iris_svc/v2), or one .onnx file"
    )
    parser.add_argument("uri", help="destination prefix, e.g. gs://ml-models/iris_svc/v2/")
    parser.add_argument(
        "--sign-key",
        type=Path,
        metavar="PEM",
        help="sign with this ECDSA private key (model-signing) and upload model.sig",
    )
    args = parser.parse_args()
    try:
        for uri in publish_path(args.src, args.uri, storage.Client(), args.sign_key):
            print(f"published {uri}")
    except (ValueError, OSError, PreconditionFailed) as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return 2
    except GoogleAPIError as exc:
        print(f"publish: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
