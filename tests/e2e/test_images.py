"""What the built images contain: no build secrets, no installer, no credentials, no root."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

TAG = os.environ.get("IMAGE_TAG") or "dev"
PYTHON_IMAGES = [f"model-load/api:{TAG}", f"model-load/loader:{TAG}"]
ALL_IMAGES = [*PYTHON_IMAGES, f"model-load/fake-gcs:{TAG}"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CREDENTIAL_NAMES = {
    "application_default_credentials.json",
    "credentials.json",
    "gcs_credentials",  # compose.gcs.yaml's secret: only ever a run-time mount
    "key.json",
    "model-signing.key",  # make keys' private key: never in an image
    "verify-key.pem",  # the loader's public key arrives only as a run-time mount
    "service-account.json",
    "id_rsa",
    "id_ed25519",
    ".env",
    ".netrc",
    ".pypirc",
}


def exported(image: str) -> Iterator[tarfile.TarFile]:
    container = subprocess.run(
        ["docker", "create", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=True)


@pytest.mark.parametrize("image", ALL_IMAGES)
def test_no_build_secret_or_credential_in_any_layer(built_images: None, image: str) -> None:
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "BEGIN CERTIFICATE" not in history and "PRIVATE KEY" not in history

    host_bundle = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    host_digest = hashlib.sha256(host_bundle).hexdigest()
    found = []
    for tar in exported(image):
        for member in tar:
            name = member.name.lstrip("./")
            if name.startswith("run/secrets/") or Path(name).name in CREDENTIAL_NAMES:
                found.append(name)
            elif member.isfile() and host_bundle and member.size == len(host_bundle):
                data = tar.extractfile(member)
                if data and hashlib.sha256(data.read()).hexdigest() == host_digest:
                    found.append(f"{name} (the build host's CA bundle)")
    assert found == []


@pytest.mark.parametrize("image", PYTHON_IMAGES)
def test_runtime_images_carry_no_installer_or_compiler_and_run_unprivileged(
    built_images: None, image: str
) -> None:
    user = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Config.User}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user == "10001:10001"
    names = {m.name.lstrip("./") for tar in exported(image) for m in tar}
    assert "opt/venv/bin/pip" not in names
    assert not [n for n in names if "site-packages/pip/" in n]
    compilers = re.compile(r"(usr/)?(local/)?bin/(gcc|cc|g\+\+|c\+\+|clang)(-[\d.]+)?$")
    assert not [n for n in names if compilers.match(n)]
    assert not [n for n in names if "/.cache/pip" in n or n.startswith("root/.cache")]


def test_loader_runs_from_bytecode_compiled_at_build_time(built_images: None) -> None:
    # The root filesystem is read-only at run time (readOnlyRootFilesystem), so bytecode
    # missing from the image would be compiled again at every start, from source.
    imports = "import model_loader.__main__, model_loader.sources.gcs, model_loader.sources.http"
    image = f"model-load/loader:{TAG}"
    trace = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--read-only",
            "--entrypoint",
            "python3",
            image,
            "-v",
            "-c",
            imports,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    loaded = [
        line.split(" from ", 1)[1] for line in trace.splitlines() if "# code object from" in line
    ]
    assert len(loaded) > 100, trace[-2000:]
    assert [path for path in loaded if not path.strip("'").endswith(".pyc")] == []
