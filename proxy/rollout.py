"""Roll the API replicas over to another model version, without a failed request.

    make rollout MODEL_URI=gs://ml-models/iris_svc/v2/
    make rollback          # to the version served before the current one

A Deployment's RollingUpdate, done with Compose's and Docker's own commands; its
strategy is `x-rollout` in compose.yaml (max_surge 1, max_unavailable 0, as in
k8s/base/deployment.yaml):

1. The loader publishes MODEL_URI beside the version being served
   (`docker compose up --no-deps --wait loader` with the new MODEL_URI): `current` names
   the new version, `previous` the old one. Running replicas keep the model they loaded.
   A failing loader ends the rollout here, with its one line: nothing else has changed.
2. Surge: `docker compose up --no-deps --no-recreate --scale api=<running + 1> api`
   starts a new replica, which loads `current`; wait until Docker reports it healthy
   (its /ready: the probe the proxy routes by).
3. Then one old replica leaves: `docker stop` (SIGTERM: /ready answers 503 while it still
   serves for API_DRAIN_SECONDS, so the proxy takes it out; then it closes) and
   `docker rm`.
4. Repeat until API_REPLICAS new replicas serve and no old one is left. The ready count
   never drops below API_REPLICAS (max_unavailable 0); at most max_surge extra run.

A new replica that exits or is not healthy within --timeout aborts the rollout: the new
replicas not yet serving are removed and, if none had served, the old version is published
again, so that an old replica which restarts loads what the others serve.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

SERVICE = "api"
LOADER = "loader"
POLL_SECONDS = 0.5


class RolloutError(Exception):
    """The rollout stopped; the message says why and what is serving."""


@dataclass(frozen=True)
class Strategy:
    max_surge: int
    max_unavailable: int

    def __post_init__(self) -> None:
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ValueError(f"x-rollout: negative values in {self}")
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("x-rollout: max_surge and max_unavailable cannot both be 0")

    def next_step(self, replicas: int, old: int, new: int) -> tuple[int, int]:
        """(old replicas to remove, new replicas to start) from this state."""
        remove = max(0, min(old, old + new - (replicas - self.max_unavailable)))
        add = max(0, min(replicas - new, replicas + self.max_surge - (old - remove + new)))
        return remove, add


class Rollout:
    def __init__(self, compose: list[str], timeout: float) -> None:
        self.compose_command = compose
        self.timeout = timeout
        self.started = time.monotonic()

    # --- commands -------------------------------------------------------------------
    def say(self, message: str) -> None:
        print(f"[rollout {time.monotonic() - self.started:5.1f}s] {message}", flush=True)

    def compose(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        return _run([*self.compose_command, *args], env=env, check=check)

    def config(self) -> dict[str, Any]:
        return json.loads(self.compose("config", "--format", "json"))

    def running(self) -> list[dict[str, Any]]:
        """The service's running replicas, oldest first, as `docker inspect` has them."""
        ids = self.compose("ps", "-q", "--status", "running", SERVICE).split()
        return sorted(_inspect(ids), key=lambda c: c["Created"]) if ids else []

    def read_manifest(self, replica: dict[str, Any], link: str) -> dict[str, Any] | None:
        """MODEL_DIR/<link>/manifest.json, read inside a running replica."""
        out = _run(["docker", "exec", replica["Id"], "cat", f"/models/{link}/manifest.json"],
                   check=False)  # fmt: skip
        try:
            manifest = json.loads(out)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) else None

    # --- steps ----------------------------------------------------------------------
    def publish(self, model_uri: str) -> None:
        """Run the loader with MODEL_URI; a failure raises with its one line."""
        env = {"MODEL_URI": model_uri}
        self.compose("up", "-d", "--no-deps", LOADER, env=env)
        loader = self.compose("ps", "-a", "-q", LOADER, env=env).split()
        code = int(_run(["docker", "wait", *loader]).split()[-1]) if loader else -1
        lines = self.compose("logs", "--no-color", "--no-log-prefix", LOADER, env=env)
        lines = lines.strip().splitlines()
        if code != 0:
            reason = ([x for x in lines if " ERROR " in x] or lines or ["no output"])[-1]
            raise RolloutError(f"the loader exited {code}: {reason}")
        self.say(f"loader: {(lines or [''])[-1].split(' model_loader: ', 1)[-1]}")

    def start(self, count: int, total: int) -> list[str]:
        """Start `count` new replicas (the service then has `total`); their ids."""
        before = {c["Id"] for c in self.running()}
        self.compose(
            "up", "-d", "--no-deps", "--no-recreate", "--scale", f"{SERVICE}={total}", SERVICE
        )
        ids = [c["Id"] for c in _inspect(self.compose("ps", "-a", "-q", SERVICE).split())
               if c["Id"] not in before and c["State"]["Status"] != "exited"]  # fmt: skip
        if len(ids) != count:
            raise RolloutError(f"expected {count} new replicas, Compose started {len(ids)}")
        return ids

    def wait_healthy(self, ids: list[str]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            pending = []
            for c in _inspect(ids):
                state = c["State"]
                health = state.get("Health", {}).get("Status")
                if state["Status"] in {"exited", "dead", "restarting"} or c["RestartCount"]:
                    raise RolloutError(f"{_name(c)} stopped: {_last_error(c['Id'])}")
                if health == "unhealthy":
                    raise RolloutError(f"{_name(c)} is unhealthy: {_last_error(c['Id'])}")
                if health != "healthy":
                    pending.append(_name(c))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RolloutError(f"{', '.join(pending)} not healthy within {self.timeout:g} s")
            time.sleep(POLL_SECONDS)

    def remove(self, replicas: list[dict[str, Any]], grace: int) -> None:
        """Stop (drain) and remove; several at once."""
        ids = [c["Id"] for c in replicas]
        _run(["docker", "stop", "-t", str(grace), *ids])
        _run(["docker", "rm", *ids])

    # --- the whole ------------------------------------------------------------------
    def run(self, model_uri: str) -> None:
        config = self.config()
        strategy = Strategy(**config.get("x-rollout", {"max_surge": 1, "max_unavailable": 0}))
        api = config["services"][SERVICE]
        replicas = int(api.get("deploy", {}).get("replicas", 1))
        grace = _seconds(api.get("stop_grace_period", "10s"))

        old = self.running()
        if not old:
            raise RolloutError(f"no running {SERVICE} replica: start the stack first (make up)")
        serving = self.read_manifest(old[0], "current")
        self.say(
            f"{len(old)} replicas serving {_describe(serving)}; rolling out {model_uri} to "
            f"{replicas} replicas (max surge {strategy.max_surge}, "
            f"max unavailable {strategy.max_unavailable})"
        )
        self.publish(model_uri)

        new: list[str] = []
        while old or len(new) < replicas:
            remove, add = strategy.next_step(replicas, len(old), len(new))
            if remove:
                leaving, old = old[:remove], old[remove:]
                self.say(f"draining {', '.join(map(_name, leaving))}")
                self.remove(leaving, grace)
                self.say(f"removed {', '.join(map(_name, leaving))}")
            if add:
                ids = self.start(add, len(old) + len(new) + add)
                started = [_name(c) for c in _inspect(ids)]
                self.say(f"started {', '.join(started)}; waiting until ready")
                try:
                    self.wait_healthy(ids)
                except RolloutError as exc:
                    self.say(str(exc))
                    self.abort(ids, serving if not new else None)
                    raise RolloutError(
                        f"aborted; {len(old)} old and {len(new)} new replicas serve"
                    ) from exc
                new += ids
                self.say(f"ready: {', '.join(started)}")
            if not remove and not add:
                raise RolloutError(f"no progress possible with {strategy}")
        now = self.read_manifest(_inspect(new[:1])[0], "current")
        self.say(f"done: {len(new)} replicas serve {_describe(now)}")
        self.say(
            f"keep MODEL_URI={model_uri} in your environment or .env: a later `docker "
            "compose up` (or make up) without it restarts the replicas on compose.yaml's default"
        )

    def abort(self, ids: list[str], republish: dict[str, Any] | None) -> None:
        """Remove the replicas that never became ready (they got no traffic); publish
        `republish` again if given, so `current` is what the remaining replicas serve."""
        self.say(f"removing {', '.join(map(_name, _inspect(ids)))}")
        _run(["docker", "rm", "--force", *ids])
        uri = (republish or {}).get("source_uri")
        if uri:
            self.say(f"publishing {uri} again, the version the replicas serve")
            self.publish(uri)

    def previous_uri(self) -> str:
        old = self.running()
        if not old:
            raise RolloutError(f"no running {SERVICE} replica: start the stack first (make up)")
        previous = self.read_manifest(old[0], "previous")
        if previous is None or not previous.get("source_uri"):
            raise RolloutError("no previous version on the model volume: nothing to roll back to")
        return str(previous["source_uri"])


def _environ(extra: dict[str, str] | None) -> dict[str, str] | None:
    return {**os.environ, **extra} if extra else None


def _run(command: list[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(command, env=_environ(env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RolloutError(f"`{shlex.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def _inspect(ids: list[str]) -> list[dict[str, Any]]:
    return json.loads(_run(["docker", "inspect", *ids])) if ids else []


def _name(container: dict[str, Any]) -> str:
    return str(container["Name"]).lstrip("/")


def _last_error(container_id: str) -> str:
    """The replica's last ERROR line (the API's one-line reason), else its last line."""
    result = subprocess.run(
        ["docker", "logs", "--tail", "50", container_id], capture_output=True, text=True
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    errors = [x for x in lines if " ERROR " in x]
    return (errors or lines or ["no output"])[-1]


def _describe(manifest: dict[str, Any] | None) -> str:
    if not manifest:
        return "an unknown version"
    name, version = manifest.get("model_name"), manifest.get("model_version")
    return f"{name} {version} ({manifest.get('source_uri')})"


def _seconds(duration: str | float) -> int:
    """Compose's duration ("30s", "1m30s", "500ms") in whole seconds, rounded up."""
    if isinstance(duration, int | float):
        return int(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"([\d.]+)(h|ms|us|m|s)", duration)
    return int(-(-sum(float(n) * units[u] for n, u in parts) // 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-uri", help="the version to roll out, e.g. gs://bucket/name/v2/")
    target.add_argument(
        "--rollback", action="store_true", help="roll out the version served before this one"
    )
    parser.add_argument("--compose", default="docker compose", help="the Compose command")
    parser.add_argument(
        "--timeout", type=float, default=180, help="seconds a new replica has to become ready"
    )
    args = parser.parse_args(argv)
    rollout = Rollout(shlex.split(args.compose), args.timeout)
    try:
        uri = rollout.previous_uri() if args.rollback else args.model_uri
        rollout.run(uri)
    except (RolloutError, ValueError) as exc:
        rollout.say(f"rollout failed: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
