"""compose.yaml and the minikube overlay describe the same pod: a change to one that
forgets the other fails here. Compose is read through `docker compose config` (the real
interpolation, at the defaults a fresh checkout gets).

Around the pod, Compose emulates what Kubernetes does natively, and the two must agree:
the proxy (proxy/haproxy.cfg) is the Service and its readiness gating, API_REPLICAS the
HPA's minimum, `make rollout` the Deployment's RollingUpdate (x-rollout), the API's
drain and the proxy's probe the pod's preStop and termination grace period.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.k8s.conftest import (
    Doc,
    compose_config,
    find,
    pod_spec,
    with_components,
    with_key_secret,
)

# compose service -> (Deployment, container) in the minikube overlay
PAIRS = {
    "loader": ("model-load-api", "loader"),
    "api": ("model-load-api", "api"),
    "fake-gcs": ("fake-gcs", "fake-gcs"),
}
# compose services that stand for what Kubernetes provides itself -> that object.
NATIVE = {"proxy": ("Service", "model-load-api")}
HAPROXY_CFG = ROOT / "proxy" / "haproxy.cfg"


@pytest.fixture(scope="module")
def compose() -> dict[str, Doc]:
    return compose_config()["services"]


def container(docs: list[Doc], service: str) -> Doc:
    deployment, name = PAIRS[service]
    spec = pod_spec(find(docs, "Deployment", deployment))
    return next(
        c for c in [*spec.get("initContainers", []), *spec["containers"]] if c["name"] == name
    )


def env_of(docs: list[Doc], c: Doc) -> dict[str, str]:
    """The environment a container gets: its envFrom ConfigMaps, then its env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


def test_every_compose_service_has_its_container(compose: dict[str, Doc]) -> None:
    assert set(compose) == set(PAIRS) | set(NATIVE)


def haproxy(keyword: str) -> list[list[str]]:
    """The lines of proxy/haproxy.cfg that start with `keyword`, split into words."""
    lines = [line.split("#", 1)[0].strip() for line in HAPROXY_CFG.read_text().splitlines()]
    return [shlex.split(line) for line in lines if line.split(" ", 1)[0] == keyword]


def server_option(name: str) -> str:
    """A default-server option's value in proxy/haproxy.cfg."""
    words = [w for line in haproxy("default-server") for w in line[1:]]
    return words[words.index(name) + 1]


def seconds(duration: str) -> float:
    """HAProxy's ("500ms", "2s") or Compose's ("30s", "1m30s") durations."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


def test_the_proxy_is_the_service_in_front_of_ready_replicas(
    compose: dict[str, Doc], minikube: list[Doc]
) -> None:
    """Same port for clients, traffic to the API's port, routed by the readiness probe's
    endpoint; the replicas themselves publish nothing (on k8s: no hostPort)."""
    service = find(minikube, *NATIVE["proxy"])
    (port,) = service["spec"]["ports"]
    api = container(minikube, "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert {p["target"] for p in compose["proxy"]["ports"]} == {port["port"]}
    assert all(p["host_ip"] == "127.0.0.1" for p in compose["proxy"]["ports"])
    assert "ports" not in compose["api"]
    assert not any("hostPort" in p for p in api["ports"])
    (template,) = haproxy("server-template")
    assert template[3] == f"api:{ports[port['targetPort']]}"
    assert haproxy("bind")[0][1] == f":{port['port']}"
    (check,) = [line for line in haproxy("option") if line[1] == "httpchk"]
    assert check[2:] == ["GET", api["readinessProbe"]["httpGet"]["path"]]
    # Hardened as the services around it.
    for key in ("user", "read_only", "cap_drop", "security_opt"):
        assert compose["proxy"][key] == compose["api"][key], key


def test_replicas_and_their_cpu_as_the_hpa_minimum_and_the_pod_limit(
    compose: dict[str, Doc], minikube: list[Doc]
) -> None:
    hpa = find(minikube, "HorizontalPodAutoscaler", "model-load-api")
    api = container(minikube, "api")
    assert compose["api"]["deploy"]["replicas"] == hpa["spec"]["minReplicas"]
    assert float(compose["api"]["deploy"]["resources"]["limits"]["cpus"]) == float(
        api["resources"]["limits"]["cpu"]
    )
    # Room in the proxy for the most replicas the HPA makes, plus a rollout's surge.
    (template,) = haproxy("server-template")
    surge = compose_config()["x-rollout"]["max_surge"]
    assert int(template[2]) >= hpa["spec"]["maxReplicas"] + surge


def test_the_rollout_is_the_deployments_rolling_update(minikube: list[Doc]) -> None:
    strategy = find(minikube, "Deployment", "model-load-api")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    rolling = strategy["rollingUpdate"]
    assert compose_config()["x-rollout"] == {
        "max_surge": rolling["maxSurge"],
        "max_unavailable": rolling["maxUnavailable"],
    }


def test_drain_timings_agree(compose: dict[str, Doc], minikube: list[Doc]) -> None:
    """A replica told to stop answers /ready with 503 but serves for API_DRAIN_SECONDS.
    Kubernetes takes the pod out of the Service meanwhile (preStop holds SIGTERM back
    while the endpoint is removed); the proxy takes it out by its probe, which must fail
    `fall` times well within the drain. Both wait as long for the process to end."""
    spec = pod_spec(find(minikube, "Deployment", "model-load-api"))
    drain = float(compose["api"]["environment"]["API_DRAIN_SECONDS"])
    assert seconds(compose["api"]["stop_grace_period"]) == spec["terminationGracePeriodSeconds"]
    # The next probe comes within `inter`, the following ones `fastinter` apart: `fall`
    # failed probes later the replica is out. Half the drain, at most: room for probes
    # answered slowly on a busy machine.
    fall = int(server_option("fall"))
    worst = seconds(server_option("inter")) + (fall - 1) * seconds(server_option("fastinter"))
    assert worst <= drain / 2, f"the proxy may take {worst} s to notice a {drain} s drain"
    # The grace period covers the preStop wait, the drain and in-flight requests.
    pre_stop = container(minikube, "api")["lifecycle"]["preStop"]["exec"]["command"]
    assert (
        pre_stop[0] == "sleep"
        and float(pre_stop[1]) + drain < spec["terminationGracePeriodSeconds"]
    )


@pytest.mark.parametrize("service", ["loader", "api"])
def test_same_environment_names_and_values(
    compose: dict[str, Doc], minikube: list[Doc], service: str
) -> None:
    k8s_env = env_of(minikube, container(minikube, service))
    compose_env = {k: str(v) for k, v in compose[service]["environment"].items()}
    # Each compose service's variables, with its values, reach the container...
    assert {k: k8s_env.get(k) for k in compose_env} == compose_env
    # ...and the shared ConfigMap holds nothing compose sets for neither service.
    both = {**compose["loader"]["environment"], **compose["api"]["environment"]}
    assert sorted(set(k8s_env) - set(both)) == []


@pytest.mark.parametrize("service", ["loader", "api"])
def test_same_mount_paths_and_read_only_ness(
    compose: dict[str, Doc], minikube: list[Doc], service: str
) -> None:
    c = container(minikube, service)
    spec = pod_spec(find(minikube, "Deployment", PAIRS[service][0]))
    volumes = {v["name"]: v for v in spec["volumes"]}
    k8s_mounts = {m["mountPath"]: bool(m.get("readOnly")) for m in c["volumeMounts"]}
    compose_mounts = {
        v["target"]: bool(v.get("read_only")) for v in compose[service].get("volumes", [])
    }
    # compose's tmpfs /tmp (size=16m) is the pod's /tmp emptyDir (16Mi).
    for entry in compose[service].get("tmpfs", []):
        path, _, options = entry.partition(":")
        compose_mounts[path] = False
        size = re.search(r"size=(\d+)m", options)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == path)
        assert size and volumes[mount["name"]]["emptyDir"]["sizeLimit"] == f"{size[1]}Mi"
    assert k8s_mounts == compose_mounts


@pytest.mark.parametrize("service", ["loader", "api", "fake-gcs"])
def test_same_command_and_entrypoint(
    compose: dict[str, Doc], minikube: list[Doc], service: str
) -> None:
    c = container(minikube, service)
    assert c.get("command") == compose[service].get("entrypoint")
    assert c.get("args") == compose[service].get("command")


@pytest.mark.parametrize("service", ["loader", "api"])
def test_same_user_and_hardening(
    compose: dict[str, Doc], minikube: list[Doc], service: str
) -> None:
    sc: dict[str, Any] = container(minikube, service)["securityContext"]
    hardening = compose[service]
    assert hardening["user"] == f"{sc['runAsUser']}:{sc['runAsGroup']}"
    assert hardening["read_only"] is sc["readOnlyRootFilesystem"] is True
    assert hardening["cap_drop"] == sc["capabilities"]["drop"] == ["ALL"]
    assert "no-new-privileges:true" in hardening["security_opt"]
    assert sc["allowPrivilegeEscalation"] is False


def test_same_probe_endpoints(compose: dict[str, Doc], minikube: list[Doc]) -> None:
    api = container(minikube, "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    healthcheck = " ".join(compose["api"]["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", healthcheck)
    assert match, healthcheck
    for probe in ("startupProbe", "readinessProbe"):
        get = api[probe]["httpGet"]
        assert (ports.get(get["port"], get["port"]), get["path"]) == (int(match[1]), match[2])
    # The port the proxy forwards to is the one the container declares.
    (template,) = haproxy("server-template")
    assert {int(template[3].rsplit(":", 1)[1])} == set(ports.values())
    # Compose's proxy waits for the replicas the same way: their healthcheck.
    assert compose["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    gcs_published = {p["target"] for p in compose["fake-gcs"]["ports"]}
    assert gcs_published == {p["containerPort"] for p in container(minikube, "fake-gcs")["ports"]}


def test_same_images(compose: dict[str, Doc], minikube: list[Doc]) -> None:
    for service in PAIRS:
        assert container(minikube, service)["image"] == compose[service]["image"], service


def test_real_gcs_gives_a_key_to_the_loader_alone_in_both(tmp_path: Path) -> None:
    """compose.gcs.yaml and the gke overlay with the gcs-key-secret component: no emulator;
    the loader alone gets GOOGLE_APPLICATION_CREDENTIALS, naming a file on a read-only
    mount of the secret (each platform's usual path)."""
    env = {"GCS_CREDENTIALS_FILE": "/dev/null", "MODEL_URI": "gs://bucket/name/v1/"}
    compose = compose_config(ROOT / "compose.gcs.yaml", **env)["services"]
    docs = with_key_secret(tmp_path)
    assert set(compose) == {"loader", "api", "proxy"}
    assert not [d for d in docs if d["metadata"]["name"].startswith("fake-gcs")]

    loader_env = compose["loader"]["environment"]
    assert [s["target"] for s in compose["loader"]["secrets"]] == [
        loader_env["GOOGLE_APPLICATION_CREDENTIALS"]
    ]
    assert "secrets" not in compose["api"]

    spec = pod_spec(find(docs, "Deployment", "model-load-api"))
    secret_volumes = {v["name"] for v in spec["volumes"] if "secret" in v}
    for c in [*spec["initContainers"], *spec["containers"]]:
        k8s_env = env_of(docs, c)
        key = [m for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
        if c["name"] == "loader":
            assert len(key) == 1 and key[0]["readOnly"] is True
            assert k8s_env["GOOGLE_APPLICATION_CREDENTIALS"].startswith(key[0]["mountPath"] + "/")
            # The same names reach the loader; neither talks to an emulator.
            names = {"GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "MODEL_URI"}
            assert names <= set(k8s_env) and names <= set(loader_env)
            assert "STORAGE_EMULATOR_HOST" not in {*k8s_env, *loader_env}
        else:
            assert key == [] and "GOOGLE_APPLICATION_CREDENTIALS" not in k8s_env


def test_signed_models_give_the_verify_key_to_the_loader_alone_in_both(tmp_path: Path) -> None:
    """MODEL_VERIFY_KEY=<host file> docker compose up, and the minikube overlay with the
    model-verify-key component: the loader alone mounts the public key read-only, at the
    same path, which its MODEL_VERIFY_KEY names; the API neither mounts nor names it."""
    key = tmp_path / "model-signing.pub"
    key.write_text("a public key\n")
    compose = compose_config(MODEL_VERIFY_KEY=str(key))["services"]
    docs = with_components(tmp_path, "minikube", "model-verify-key")

    loader_env = compose["loader"]["environment"]
    assert [c["target"] for c in compose["loader"]["configs"]] == [loader_env["MODEL_VERIFY_KEY"]]
    assert (
        "configs" not in compose["api"] and "MODEL_VERIFY_KEY" not in compose["api"]["environment"]
    )
    config = compose_config(MODEL_VERIFY_KEY=str(key))["configs"]["model_verify_key"]
    assert config["file"] == str(key)

    spec = pod_spec(find(docs, "Deployment", "model-load-api"))
    key_volumes = {
        v["name"]
        for v in spec["volumes"]
        if v.get("configMap", {}).get("name") == "model-verify-key"
    }
    assert len(key_volumes) == 1
    for c in [*spec["initContainers"], *spec["containers"]]:
        env = env_of(docs, c)
        mounts = [m for m in c.get("volumeMounts", []) if m["name"] in key_volumes]
        if c["name"] == "loader":
            assert len(mounts) == 1 and mounts[0]["readOnly"] is True
            assert env["MODEL_VERIFY_KEY"] == loader_env["MODEL_VERIFY_KEY"]
            assert env["MODEL_VERIFY_KEY"].startswith(mounts[0]["mountPath"] + "/")
        else:
            assert mounts == [] and not env.get("MODEL_VERIFY_KEY")


def test_without_a_key_neither_checks_signatures(minikube: list[Doc]) -> None:
    loader_env = compose_config()["services"]["loader"]["environment"]
    assert (loader_env["MODEL_VERIFY_KEY"], loader_env["MODEL_SIGNATURE_REQUIRED"]) == ("", "false")
    k8s_env = env_of(minikube, container(minikube, "loader"))
    assert (k8s_env["MODEL_VERIFY_KEY"], k8s_env["MODEL_SIGNATURE_REQUIRED"]) == ("", "false")
