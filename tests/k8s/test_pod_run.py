"""The rendered minikube pod, run by `podman kube play` (podman 4.3, the closest thing to a
kubelet on a machine without a cluster): the fake-gcs Deployment, then the model
Deployment with its ConfigMap, on the images compose builds.

Proves: the initContainer runs to completion and fills the emptyDir; the API starts on
the read-only mount and answers the seed's setosa example; the securityContext holds
(non-root UID/GID 10001, no capabilities, no privilege escalation, seccomp, read-only
root with a writable /tmp); a loader that fails (a version not in the bucket: exit 4)
keeps the API container from ever starting.

What podman 4.3 cannot do is adapted here, in the harness, never in k8s/ (k8s/README.md,
"Testing the manifests"): restartPolicy Never (podman restarts a finished init container
under Always), no `ports` (podman would publish each containerPort on the host) and
numeric probe ports (it turns named ones into 0), hostAliases for the `fake-gcs` Service
name (no Services), and the probes are called from here (podman runs only the liveness
probe, as curl inside the image, through systemd timers).

Skipped without podman or Docker, failed instead under REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, SETOSA
from tests.e2e.conftest import _docker_problem, built_images
from tests.k8s.conftest import Doc, containers, find, pod_spec

__all__ = ["built_images"]  # the e2e session fixture: the compose images, built once

pytestmark = pytest.mark.docker

# The sandbox this runs in (root, no systemd, a lower RLIMIT_NOFILE than podman's default
# 1048576) needs these; a private store keeps the run apart from any other podman use.
CONTAINERS_CONF = """\
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
"""


def _podman_problem() -> str | None:
    try:
        result = subprocess.run(["podman", "--version"], capture_output=True, text=True)
    except OSError as exc:
        return str(exc)
    return None if result.returncode == 0 else result.stderr.strip()


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "containers.conf").write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(base / "containers.conf")}
        self.flags = ["--root", str(base / "root"), "--runroot", str(base / "run"),
                      "--storage-driver", "overlay"]  # fmt: skip

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 240, stdin: Any = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *self.flags, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, stdin=stdin,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stderr[-3000:]}")  # fmt: skip
        return result

    def ip(self, pod: str) -> str:
        infra = self("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        address = self("inspect", infra, "--format", template).stdout.strip()
        assert address, f"pod {pod} has no IP address"
        return address

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(self("inspect", container).stdout)[0]


def compose_images() -> dict[str, str]:
    """repository -> the image compose built (IMAGE_TAG from the environment or .env)."""
    names = subprocess.run(
        ["docker", "compose", "--project-directory", str(ROOT), "config", "--images"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {name.rsplit(":", 1)[0]: name for name in names}


def for_podman(deployment: Doc, **extra: Any) -> Doc:
    """The harness's adaptations of one rendered Deployment (see the module docstring)."""
    deployment = copy.deepcopy(deployment)
    spec = pod_spec(deployment)
    spec["restartPolicy"] = "Never"
    spec.update(extra)
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        ports = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c.get(probe, {}).get("httpGet")
            if get:
                get["port"] = ports.get(get["port"], get["port"])
    return deployment


def wait_for(url: str, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not 200 within {seconds:g} s"
        time.sleep(0.5)


def probe_url(address: str, container: Doc, probe: str) -> str:
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return f"http://{address}:{ports.get(get['port'], get['port'])}{get['path']}"


@pytest.fixture(scope="session")
def engines() -> None:
    problem = _docker_problem() or _podman_problem()
    if problem is not None:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(f"REQUIRE_DOCKER=1 but no Docker/podman: {problem}", pytrace=False)
        pytest.skip(f"needs Docker and podman ({problem}); run `bash .ci/prepare`")


@pytest.fixture(scope="module")
def podman(
    engines: None, built_images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman")
    pm = Podman(base)
    network = f"modelload-k8s-{os.getpid()}"
    try:
        yield pm
    finally:
        for pod in ("model-load-api-pod-0", "model-load-v404-pod-0", "fake-gcs-pod-0"):
            pm("pod", "rm", "--force", "--ignore", "--time", "2", pod, check=False)
        pm("network", "rm", "--force", network, check=False)
        pm("rmi", "--all", "--force", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pod(
    podman: Podman, minikube: list[Doc], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Both Deployments played; returns the addresses and the rendered API containers."""
    work = tmp_path_factory.mktemp("kube")
    # The compose images, under the names the manifests use.
    images = compose_images()
    saved = subprocess.Popen(["docker", "save", *images.values()], stdout=subprocess.PIPE)
    podman("load", "--quiet", stdin=saved.stdout)
    assert saved.wait() == 0
    deployments = [d for d in minikube if d["kind"] == "Deployment"]
    wanted = {c["image"] for d in deployments for c in containers(pod_spec(d))}
    for image in wanted:
        podman("tag", images[image.rsplit(":", 1)[0]], image)

    network = f"modelload-k8s-{os.getpid()}"
    podman("network", "create", network)

    gcs = find(minikube, "Deployment", "fake-gcs")
    (work / "fake-gcs.yaml").write_text(yaml.safe_dump(for_podman(gcs)))
    podman("kube", "play", "--network", network, str(work / "fake-gcs.yaml"))
    gcs_ip = podman.ip("fake-gcs-pod-0")
    wait_for(probe_url(gcs_ip, pod_spec(gcs)["containers"][0], "readinessProbe"), 30)

    # The Service name resolves to the emulator's pod, as cluster DNS would.
    api = find(minikube, "Deployment", "model-load-api")
    adapted = for_podman(api, hostAliases=[{"ip": gcs_ip, "hostnames": ["fake-gcs"]}])
    (work / "model.yaml").write_text(yaml.safe_dump_all([find(minikube, "ConfigMap"), adapted]))
    # kube play returns once the initContainer has exited; non-zero fails it here.
    played = podman("kube", "play", "--network", network, str(work / "model.yaml"), check=False)
    assert played.returncode == 0, f"the loader or the API did not start:\n{played.stderr[-3000:]}"
    api_ip = podman.ip("model-load-api-pod-0")
    return {"api_ip": api_ip, "spec": pod_spec(api), "podman": podman, "gcs_ip": gcs_ip,
            "network": network, "work": work}  # fmt: skip


def api_exec(pod: dict[str, Any], code: str) -> Any:
    result = pod["podman"]("exec", "model-load-api-pod-0-api", "python3", "-c", code)
    return json.loads(result.stdout)


def test_the_api_becomes_ready_and_answers_the_setosa_example(pod: dict[str, Any]) -> None:
    (api,) = pod["spec"]["containers"]
    ready = wait_for(probe_url(pod["api_ip"], api, "startupProbe"), 60).json()
    assert ready == {"ready": True, "model_name": "iris_svc", "model_version": "v1"}
    assert wait_for(probe_url(pod["api_ip"], api, "livenessProbe"), 5).json() == {"health": "ok"}
    base = f"http://{pod['api_ip']}:{api['ports'][0]['containerPort']}"
    prediction = httpx.post(f"{base}/predict", json={"data": [SETOSA]}).json()["prediction"]
    assert prediction[0] >= 0.9


def test_the_init_container_filled_the_empty_dir_from_the_bucket(
    pod: dict[str, Any], minikube: list[Doc]
) -> None:
    (api,) = pod["spec"]["containers"]
    base = f"http://{pod['api_ip']}:{api['ports'][0]['containerPort']}"
    wait_for(probe_url(pod["api_ip"], api, "startupProbe"), 60)
    # The manifest the loader wrote next to the files: what it copied, from where.
    metadata = httpx.get(f"{base}/metadata").json()
    assert metadata["source_uri"] == find(minikube, "ConfigMap")["data"]["MODEL_URI"]
    files = api_exec(
        pod,
        "import json, os; d = '/models/current'; "
        "print(json.dumps({f: os.stat(os.path.join(d, f)).st_uid for f in os.listdir(d)}))",
    )
    assert {"model.onnx", "label.json"} <= set(files)
    assert set(files.values()) == {10001}, "written by the loader as UID 10001"
    # And not from the image: the API image's /models is empty.
    image = api["image"]
    listing = pod["podman"]("run", "--rm", "--entrypoint", "ls", image, "-A", "/models")
    assert listing.stdout.strip() == ""


def test_the_security_context_is_honoured(pod: dict[str, Any]) -> None:
    seen = api_exec(
        pod,
        "import json, os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "def write(path):\n"
        "    try:\n"
        "        open(path, 'w').close(); return 'ok'\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(),\n"
        "  'cap_eff': status['CapEff'].strip(), 'no_new_privs': status['NoNewPrivs'].strip(),\n"
        "  'seccomp': status['Seccomp'].strip(), 'models': write('/models/x'),\n"
        "  'root': write('/opt/x'), 'tmp': write('/tmp/x')}))",
    )
    assert seen == {
        "uid": 10001,
        "gid": 10001,
        "cap_eff": "0000000000000000",
        "no_new_privs": "1",
        "seccomp": "2",  # filter mode: a seccomp profile is loaded
        "models": "Read-only file system",
        "root": "Read-only file system",
        "tmp": "ok",
    }
    state = pod["podman"].inspect("model-load-api-pod-0-api")
    assert state["HostConfig"]["ReadonlyRootfs"] is True
    assert state["Config"]["User"] == "10001:10001"


def test_a_failing_loader_keeps_the_api_from_starting(
    pod: dict[str, Any], minikube: list[Doc]
) -> None:
    """The same Deployment with a version that is not in the bucket: the initContainer
    exits 4 (not found) and the API container never runs."""
    api = copy.deepcopy(find(minikube, "Deployment", "model-load-api"))
    api["metadata"]["name"] = "model-load-v404"
    config = copy.deepcopy(find(minikube, "ConfigMap"))
    config["data"]["MODEL_URI"] = "gs://ml-models/iris_svc/v404/"
    adapted = for_podman(api, hostAliases=[{"ip": pod["gcs_ip"], "hostnames": ["fake-gcs"]}])
    path = pod["work"] / "v404.yaml"
    path.write_text(yaml.safe_dump_all([config, adapted]))
    podman = pod["podman"]
    played = podman("kube", "play", "--network", pod["network"], str(path), check=False)
    try:
        assert played.returncode != 0
        assert "exited with code 4" in played.stderr, played.stderr[-2000:]
        loader = podman.inspect("model-load-v404-pod-0-loader")["State"]
        api_state = podman.inspect("model-load-v404-pod-0-api")["State"]
        assert (loader["Status"], loader["ExitCode"]) == ("exited", 4)
        assert api_state["Status"] == "created", "the API container must never have run"
    finally:
        podman(
            "pod", "rm", "--force", "--ignore", "--time", "2", "model-load-v404-pod-0", check=False
        )
