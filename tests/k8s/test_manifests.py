"""The rendered manifests: valid for every supported Kubernetes version, and right in the
ways schemas cannot see (names that must match, settings the code reads, the restricted
Pod Security profile, the images the Makefile builds)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes_validate.utils import all_versions
from pydantic_settings import BaseSettings

from model_api.config import ApiSettings
from model_api.main import create_app
from model_loader.config import LoaderSettings
from tests.conftest import ROOT
from tests.k8s.conftest import (
    K8S,
    NAMESPACE,
    OVERLAYS,
    Doc,
    compose_config,
    containers,
    find,
    pod_spec,
    render,
    tool,
    with_key_secret,
)

# Oldest and newest Kubernetes the offline schemas cover (1.25 and 1.37 today).
_KNOWN = sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))
VERSIONS = [_KNOWN[0], _KNOWN[-1]]
# Read by a library, not by our settings classes.
PASS_THROUGH = {"STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"}
# The restricted profile's allowed volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


# --- schema validation ----------------------------------------------------------------
def validate(docs: list[Doc], tmp_path: Path, version: str) -> list[str]:
    """kubernetes-validate --strict on every document; its warnings (unknown apiVersion or
    kind: rc 0) count as failures too. Returns the problems, empty when all is well."""
    import yaml

    path = tmp_path / f"rendered-{version}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", version, str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    problems = [line for line in lines if not (line.startswith("INFO") and " passed " in line)]
    if result.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {result.returncode}")
    if len(passed) != len(docs):
        problems.append(f"{len(passed)} of {len(docs)} documents passed")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_document_passes_strict_validation(
    rendered: dict[str, list[Doc]], overlay: str, version: str, tmp_path: Path
) -> None:
    assert validate(rendered[overlay], tmp_path, version) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_key_secret_variant_passes_strict_validation(tmp_path: Path, version: str) -> None:
    docs = with_key_secret(tmp_path)
    assert validate(docs, tmp_path, version) == []
    assert check_pod_references(docs) == []
    loader = pod_spec(find(docs, "Deployment", "model-load-api"))["initContainers"][0]
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/secrets/google/key.json"} in (
        loader["env"]
    )
    assert not [d for d in docs if d["kind"] == "Secret"], "no key may be committed"


def test_every_overlay_renders_the_same_pod_shape(rendered: dict[str, list[Doc]]) -> None:
    assert set(OVERLAYS) == {"gke", "minikube"}
    for overlay, docs in rendered.items():
        kinds = sorted(d["kind"] for d in docs if d["metadata"].get("namespace") == NAMESPACE)
        expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                    "PodDisruptionBudget", "Service", "ServiceAccount"]  # fmt: skip
        if overlay == "minikube":  # + the emulator
            expected += ["Deployment", "Service"]
        assert kinds == sorted(expected), overlay
        assert (
            find(docs, "Namespace", NAMESPACE)["metadata"]["labels"][
                "pod-security.kubernetes.io/enforce"
            ]
            == "restricted"
        )


# --- what schemas cannot see -------------------------------------------------------------
def check_pod_references(docs: list[Doc]) -> list[str]:
    """Every volumeMount names a defined volume, every configMapRef a rendered ConfigMap,
    every probe a declared port; no two mounts share a path."""
    problems = []
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(spec):
            where = f"{name}/{c['name']}"
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            if len(paths) != len(set(paths)):
                problems.append(f"{where}: duplicate mountPath in {paths}")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: volumeMount {mount['name']!r} names no volume")
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref is not None and ref not in configmaps:
                    problems.append(f"{where}: configMapRef {ref!r} is not rendered")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    problems.append(f"{where}: {probe} port {port!r} is not a container port")
    return problems


def check_restricted(docs: list[Doc]) -> list[str]:
    """The Pod Security Standards "restricted" profile, on every container (the
    initContainer included), as the effective pod + container securityContext."""
    problems = []
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        spec = pod_spec(deployment)
        pod = spec.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{deployment['metadata']['name']}: {flag}")
        for volume in spec.get("volumes", []):
            kind = next(k for k in volume if k != "name")
            if kind not in RESTRICTED_VOLUMES:
                problems.append(f"{deployment['metadata']['name']}: volume type {kind}")
        for c in containers(spec):
            where = f"{deployment['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})

            def effective(key: str, sc: Doc = sc, pod: Doc = pod) -> Any:
                return sc.get(key, pod.get(key))

            if effective("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if effective("runAsUser") != 10001 or effective("runAsGroup") != 10001:
                problems.append(f"{where}: not UID/GID 10001")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
                problems.append(f"{where}: adds capabilities {caps['add']}")
            seccomp = (effective("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}: seccompProfile {seccomp}")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            elif "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
                problems.append(f"{where}: read-only root without a writable /tmp")
            if "limits" not in c.get("resources", {}) or "requests" not in c["resources"]:
                problems.append(f"{where}: no resource requests and limits")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mounts_env_sources_and_probe_ports_resolve(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    assert check_pod_references(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_meets_the_restricted_profile(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    assert check_restricted(rendered[overlay]) == []


def env_names(settings: type[BaseSettings]) -> dict[str, bool]:
    """The variables a settings class reads -> whether it must be set (no usable default).
    Fields defaulting to None are optional by design (derived when unset)."""
    names = {}
    for field in settings.model_fields.values():
        assert isinstance(field.validation_alias, str), field
        names[field.validation_alias] = field.is_required() or field.default is not None
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_sets_what_the_loader_and_api_read(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    data = find(rendered[overlay], "ConfigMap")["data"]
    read = {**env_names(LoaderSettings), **env_names(ApiSettings)}
    assert "MODEL_URI" in read and "API_PORT" in read  # the derivation sees the classes
    missing = sorted(name for name, needed in read.items() if needed and name not in data)
    assert missing == [], f"set in the ConfigMap (and compose.yaml): {missing}"
    unknown = sorted(set(data) - set(read) - PASS_THROUGH)
    assert unknown == [], f"read by nothing (typo?): {unknown}"
    # The values pass the services' own validation, as they would at start-up.
    for settings in (LoaderSettings, ApiSettings):
        values = {k: v for k, v in data.items() if k in env_names(settings)}
        settings.model_validate(values)  # raises ValidationError on a bad value


def test_the_model_mount_matches_model_dir_and_is_read_only_in_the_api(minikube: list[Doc]) -> None:
    data = find(minikube, "ConfigMap")["data"]
    spec = pod_spec(find(minikube, "Deployment", "model-load-api"))
    (loader,), (api,) = spec["initContainers"], spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    loader_mount = next(m for m in loader["volumeMounts"] if m["mountPath"] == data["MODEL_DIR"])
    api_mount = next(m for m in api["volumeMounts"] if m["mountPath"] == data["MODEL_DIR"])
    assert loader_mount["name"] == api_mount["name"]
    assert "emptyDir" in volumes[api_mount["name"]]
    assert volumes[api_mount["name"]]["emptyDir"].get("sizeLimit")
    assert api_mount.get("readOnly") is True and not loader_mount.get("readOnly")
    assert loader["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_probes_call_routes_the_api_serves_on_the_port_it_listens_on(minikube: list[Doc]) -> None:
    data = find(minikube, "ConfigMap")["data"]
    (api,) = pod_spec(find(minikube, "Deployment", "model-load-api"))["containers"]
    app = create_app(ApiSettings.model_validate({"API_PORT": data["API_PORT"]}))
    get_routes = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    probes = {name: api[name]["httpGet"] for name in ("startupProbe", "readinessProbe",
                                                      "livenessProbe")}  # fmt: skip
    for name, probe in probes.items():
        assert probe["path"] in get_routes, f"{name}: {probe['path']} is no GET route"
        port = ports.get(probe["port"], probe["port"])
        assert port == int(data["API_PORT"]), f"{name}: port {port} is not API_PORT"
    # Liveness is not readiness (a restart would not load a missing model faster).
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/ready"
    service = find(minikube, "Service", "model-load-api")["spec"]
    assert service["ports"][0]["targetPort"] in ports
    assert service["selector"].items() <= pod_template_labels(minikube, "model-load-api").items()


def pod_template_labels(docs: list[Doc], name: str) -> dict[str, str]:
    return find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_pdb_and_the_rollout_fit_together(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deployment = find(docs, "Deployment", "model-load-api")
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets["cpu"]["averageUtilization"] == 70
    assert targets["memory"]["averageUtilization"] == 80
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    # Utilization targets need requests on every container of the pod.
    for c in containers(pod_spec(deployment)):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
    pdb = find(docs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= pod_template_labels(docs, "model-load-api").items()
    )


def test_gke_uses_real_gcs_with_workload_identity(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gke"]
    data = find(docs, "ConfigMap")["data"]
    assert "STORAGE_EMULATOR_HOST" not in data
    assert data["MODEL_URI"].startswith("gs://")
    assert not [d for d in docs if d["metadata"]["name"].startswith("fake-gcs")]
    sa = find(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    )
    assert pod_spec(find(docs, "Deployment"))["serviceAccountName"] == sa["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "Secret"]


def test_a_new_model_uri_renames_the_configmap_and_so_rolls_the_pods(
    minikube: list[Doc], tmp_path: Path
) -> None:
    overlay = tmp_path / "v2"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(K8S / 'overlays' / 'minikube', overlay)}]\n"
        "configMapGenerator:\n- name: model-load-config\n  behavior: merge\n"
        "  literals: [MODEL_URI=gs://ml-models/iris_svc/v2/]\n"
    )
    v2 = render(overlay)
    old, new = find(minikube, "ConfigMap"), find(v2, "ConfigMap")
    assert new["data"]["MODEL_URI"].endswith("/v2/")
    assert new["metadata"]["name"] != old["metadata"]["name"]
    refs = {
        source["configMapRef"]["name"]
        for c in containers(pod_spec(find(v2, "Deployment", "model-load-api")))
        for source in c["envFrom"]
    }
    assert refs == {new["metadata"]["name"]}, "the pod template changes with the ConfigMap"


def test_minikube_never_pulls_the_locally_built_images(minikube: list[Doc]) -> None:
    for deployment in (d for d in minikube if d["kind"] == "Deployment"):
        for c in containers(pod_spec(deployment)):
            assert c["imagePullPolicy"] in ("Never", "IfNotPresent"), c["name"]


def test_images_are_the_ones_make_k8s_images_builds(minikube: list[Doc]) -> None:
    dry_run = subprocess.run(
        ["make", "-n", "k8s-images"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"IMAGE_TAG=(\S+) docker compose build\b", dry_run)
    assert match, f"k8s-images does not build with compose:\n{dry_run}"
    services = compose_config(IMAGE_TAG=match[1])["services"].values()
    built = {s["image"] for s in services if "build" in s}  # the proxy's image is pulled
    used = {
        c["image"] for d in minikube if d["kind"] == "Deployment" for c in containers(pod_spec(d))
    }
    assert used == built


# --- the checks can fail -----------------------------------------------------------------
def _rename_key(doc: Doc, old: str, new: str) -> bool:
    """Rename the first key `old` found anywhere in doc; True if one was."""
    for key, value in list(doc.items()):
        if key == old:
            doc[new] = doc.pop(old)
            return True
        children = value if isinstance(value, list) else [value]
        if any(isinstance(c, dict) and _rename_key(c, old, new) for c in children):
            return True
    return False


@pytest.mark.parametrize(
    ("kind", "name", "old", "new"),
    [
        ("Deployment", "model-load-api", "initContainers", "initContainer"),
        ("Deployment", "model-load-api", "sizeLimit", "sizeLimt"),
        ("Deployment", "fake-gcs", "periodSeconds", "periodSecond"),
        ("HorizontalPodAutoscaler", None, "stabilizationWindowSeconds", "stabilizationWindow"),
    ],
)
def test_a_misspelled_field_is_caught(
    minikube: list[Doc], tmp_path: Path, kind: str, name: str | None, old: str, new: str
) -> None:
    docs = copy.deepcopy(minikube)
    target = find(docs, kind, name)
    assert _rename_key(target, old, new)
    problems = validate(docs, tmp_path, VERSIONS[-1])
    assert any(new in p for p in problems), problems


def test_a_removed_api_version_is_caught(minikube: list[Doc], tmp_path: Path) -> None:
    docs = copy.deepcopy(minikube)
    find(docs, "HorizontalPodAutoscaler")["apiVersion"] = "autoscaling/v2beta2"  # the seed's
    assert validate(docs, tmp_path, VERSIONS[-1]) != []


def test_a_broken_base_is_caught_when_rendered(tmp_path: Path) -> None:
    """The same, from the source files: a typo in k8s/base reaches the validator."""
    copy_of_k8s = tmp_path / "k8s"
    shutil.copytree(K8S, copy_of_k8s)
    deployment = copy_of_k8s / "base" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("initContainers:", "initContainer:"))
    docs = render(copy_of_k8s / "overlays" / "gke")
    problems = validate(docs, tmp_path, VERSIONS[0])
    assert any("initContainer" in p for p in problems), problems


def test_a_mount_of_an_undefined_volume_is_caught(minikube: list[Doc]) -> None:
    docs = copy.deepcopy(minikube)
    spec = pod_spec(find(docs, "Deployment", "model-load-api"))
    spec["containers"][0]["volumeMounts"][0]["name"] = "modles"
    assert check_pod_references(docs) == [
        "model-load-api/api: volumeMount 'modles' names no volume"
    ]


def test_a_container_without_the_restricted_fields_is_caught(minikube: list[Doc]) -> None:
    docs = copy.deepcopy(minikube)
    loader = pod_spec(find(docs, "Deployment", "model-load-api"))["initContainers"][0]
    del loader["securityContext"]["allowPrivilegeEscalation"]
    loader["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    assert check_restricted(docs) == [
        "model-load-api/loader: allowPrivilegeEscalation is not false",
        "model-load-api/loader: capabilities do not drop ALL",
    ]
