"""compose.gcs.yaml: the stack against real GCS. The key file arrives only at run time,
as a Compose secret of the loader alone; every hardening setting still holds. The runs
use fake credentials made by the test: with no route to Google (this machine) the
loader fails within LOADER_WAIT_SECONDS with exit 3, where Google answers it refuses the
fake key with exit 5; either way after reading the key from the secret."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from model_load_harness.compose import Stack
from model_load_harness.keys import fake_google_credentials
from tests.conftest import ROOT
from tests.k8s.conftest import compose_config, run_compose_config

GCS = ROOT / "compose.gcs.yaml"
SECRET = "/run/secrets/gcs_credentials"
URI = "gs://fake-bucket/iris_svc/v1/"
WAIT_SECONDS = 3
# Added or changed for real GCS; everything else in the loader stays as compose.yaml has it.
GCS_ENV = {
    "MODEL_URI",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT",
}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "model-loader.json"
    fake_google_credentials(path, "service_account")
    return path


def without(service: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    environment = {k: v for k, v in service["environment"].items() if k not in GCS_ENV}
    rest = {k: v for k, v in service.items() if k not in keys | {"environment"}}
    return {**rest, "environment": environment}


def test_merged_config_gives_the_key_to_the_loader_only(key_file: Path) -> None:
    base = compose_config()
    gcs = compose_config(GCS, GCS_CREDENTIALS_FILE=str(key_file), MODEL_URI=URI)
    services = gcs["services"]
    assert set(services) == {"loader", "api", "proxy"}  # no emulator

    loader = services["loader"]
    assert loader["secrets"] == [{"source": "gcs_credentials", "target": SECRET}]
    assert gcs["secrets"]["gcs_credentials"]["file"] == str(key_file)
    assert loader["environment"]["GOOGLE_APPLICATION_CREDENTIALS"] == SECRET
    assert loader["environment"]["MODEL_URI"] == URI
    assert "STORAGE_EMULATOR_HOST" not in loader["environment"]
    assert loader["environment"]["GOOGLE_CLOUD_PROJECT"] is None  # from the shell, if set
    assert "depends_on" not in loader
    assert loader["group_add"] == ["10001"]  # its own group unless GCS_CREDENTIALS_GID
    # Nothing else of the loader changed: user, read-only root, cap_drop, limits...
    changed = {"depends_on", "secrets", "group_add"}
    assert without(loader, changed) == without(base["services"]["loader"], changed)
    assert loader["user"] == "10001:10001" and loader["read_only"] is True
    assert loader["cap_drop"] == ["ALL"]

    # The API is exactly what it was: no secret, no credentials.
    assert services["api"] == base["services"]["api"]
    assert "secrets" not in services["api"]
    assert not [k for k in services["api"]["environment"] if k.startswith("GOOGLE_")]


@pytest.mark.parametrize("missing", ["GCS_CREDENTIALS_FILE", "MODEL_URI"])
def test_the_key_file_and_the_model_uri_are_required(key_file: Path, missing: str) -> None:
    env = {"GCS_CREDENTIALS_FILE": str(key_file), "MODEL_URI": URI}
    del env[missing]
    result = run_compose_config(GCS, **env)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value: set {missing} to" in result.stderr


@pytest.fixture
def gcs_stack(built_images: None) -> Iterator[Stack]:
    # Placeholders until `up` names the real ones: `down` needs them interpolated too.
    env = {"GCS_CREDENTIALS_FILE": "/dev/null", "MODEL_URI": URI}
    stack = Stack(f"modelload-e2e-gcs-{os.getpid()}", env=env, overrides=[GCS])
    yield stack
    stack.down()


def ran_for(state: dict[str, Any]) -> float:
    """Seconds a container ran, from Docker's own StartedAt and FinishedAt (what `up`
    spent creating containers and starting others on a busy machine is not counted)."""

    def moment(stamp: str) -> datetime:  # RFC 3339 with nanoseconds: keep microseconds
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp))

    return (moment(state["FinishedAt"]) - moment(state["StartedAt"])).total_seconds()


def up(stack: Stack, key: Path, **env: str) -> tuple[str, float]:
    """`up --wait` with the override; returns the loader's one ERROR line and how long
    the loader ran."""
    stack.env.update(
        GCS_CREDENTIALS_FILE=str(key), MODEL_URI=URI, LOADER_WAIT_SECONDS=str(WAIT_SECONDS), **env
    )
    result = stack.compose("up", "-d", "--wait", "--wait-timeout", "120", check=False)
    seconds = ran_for(stack.inspect("loader")["State"])
    assert result.returncode != 0
    logs = stack.compose("logs", "--no-log-prefix", "loader").stdout
    errors = [line for line in logs.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in logs, (logs, result.stderr)
    code = stack.inspect("loader")["State"]["ExitCode"]
    assert f'service "loader" didn\'t complete successfully: exit {code}' in result.stderr
    # never started
    assert {c["State"]["Status"] for c in stack.containers()["api"]} == {"created"}
    print(f"\nexit {code} after {seconds:.1f} s: {errors[0]}")  # for the runbook (README)
    return errors[0], seconds


def assert_hardened_and_alone_with_the_key(stack: Stack, key: Path) -> None:
    containers = stack.containers()
    assert set(containers) == {"loader", "api", "proxy"}
    loader, api = stack.inspect("loader"), containers["api"][0]
    secret = [m for m in loader["Mounts"] if m["Destination"] == SECRET]
    assert len(secret) == 1 and secret[0]["Type"] == "bind" and secret[0]["RW"] is False
    assert secret[0]["Source"] == str(key)
    assert "STORAGE_EMULATOR_HOST" not in str(loader["Config"]["Env"])
    assert f"GOOGLE_APPLICATION_CREDENTIALS={SECRET}" in loader["Config"]["Env"]
    for c in (loader, api):
        assert c["Config"]["User"] == "10001:10001"
        assert c["HostConfig"]["ReadonlyRootfs"] is True
        assert c["HostConfig"]["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in c["HostConfig"]["SecurityOpt"]
    assert not [m for m in api["Mounts"] if m["Destination"].startswith("/run/secrets")]
    assert not [e for e in api["Config"]["Env"] if e.startswith("GOOGLE_")]


def assert_key_read_then_refused_or_unreachable(line: str, seconds: float) -> None:
    if "storage unreachable" in line:  # exit 3: no route to Google
        expected = f"the credentials' token endpoint not reachable within {WAIT_SECONDS} s"
        assert expected in line and "oauth2.googleapis.com" in line
        assert seconds < WAIT_SECONDS + 30
    else:  # exit 5: Google refused the fake credentials
        assert "credentials rejected" in line, line


@pytest.mark.parametrize("kind", ["service_account", "authorized_user"])
def test_loader_reads_the_key_from_the_secret(gcs_stack: Stack, tmp_path: Path, kind: str) -> None:
    key = tmp_path / f"{kind}.json"
    fake_google_credentials(key, kind)
    # README's no-sudo way: 0640, group = the owner's group, passed as GCS_CREDENTIALS_GID.
    # (As root, any group that is not the loader's own proves the same.)
    gid = os.getgid() if os.getuid() != 0 else 4242
    os.chown(key, -1, gid)
    key.chmod(0o640)
    line, seconds = up(gcs_stack, key, GCS_CREDENTIALS_GID=str(gid))
    assert_key_read_then_refused_or_unreachable(line, seconds)
    assert_hardened_and_alone_with_the_key(gcs_stack, key)
    assert gcs_stack.inspect("loader")["HostConfig"]["GroupAdd"] == [str(gid)]


def test_key_owned_by_group_10001_needs_no_extra_group(gcs_stack: Stack, key_file: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("chgrp to 10001 needs root (README: sudo chgrp 10001)")
    os.chown(key_file, -1, 10001)
    key_file.chmod(0o640)
    line, seconds = up(gcs_stack, key_file)
    assert_key_read_then_refused_or_unreachable(line, seconds)


def test_a_0600_key_of_another_user_is_exit_5_saying_who_must_read_it(
    gcs_stack: Stack, key_file: Path
) -> None:
    # Compose mounts the file with its host owner and mode (uid/gid/mode of a file secret
    # are ignored without swarm): UID 10001 without capabilities cannot open it.
    assert key_file.stat().st_mode & 0o777 == 0o600
    line, seconds = up(gcs_stack, key_file)
    assert gcs_stack.inspect("loader")["State"]["ExitCode"] == 5
    assert seconds < 30
    assert re.search(
        rf"permission denied: cannot read GOOGLE_APPLICATION_CREDENTIALS={SECRET} "
        r"\(PermissionError: .*\) as uid 10001, groups 10001: make the key file readable",
        line,
    ), line
