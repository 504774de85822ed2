"""The repository commits no keys or credentials; Dockerfiles pass hadolint."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT

SECRET_PATTERNS = [
    re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    re.compile(rb'"type"\s*:\s*"service_account"'),
    re.compile(rb'"private_key"\s*:\s*"-----'),
    re.compile(rb"AKIA[0-9A-Z]{16}"),
]


def tracked_files() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


def test_no_private_keys_or_service_account_files_are_committed() -> None:
    hits = []
    for name in tracked_files():
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            hits += [f"{name}: {p.pattern!r}" for p in SECRET_PATTERNS if p.search(data)]
    assert hits == []


def test_env_files_are_not_committed() -> None:
    assert [n for n in tracked_files() if n.split("/")[-1] == ".env"] == []


def test_dockerfiles_pass_hadolint() -> None:
    dockerfiles = [n for n in tracked_files() if n.split("/")[-1] == "Dockerfile"]
    assert len(dockerfiles) >= 3
    result = subprocess.run(["hadolint", *dockerfiles], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
