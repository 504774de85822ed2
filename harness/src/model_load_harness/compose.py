"""One Compose project of the stack (compose.yaml at the repository's root) with its own
name and host ports, so tests and benchmarks never collide with a stack the developer
has running: compose commands, its containers, its volume, its proxy's view."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from google.cloud import storage

from model_load_harness import ROOT
from model_load_harness.ports import free_port
from model_tools.publish import publish

SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"


class ComposeError(RuntimeError):
    """A docker compose command exited non-zero."""


@dataclass
class Stack:
    """One compose project with its own name and host ports, so tests never collide
    with a stack the developer has running."""

    project: str
    env: dict[str, str] = field(default_factory=dict)
    overrides: list[Path] = field(default_factory=list)  # extra compose files, applied last

    def __post_init__(self) -> None:
        self.api_port = free_port()
        self.gcs_port = free_port()
        self.env = {
            **os.environ,
            "API_HOST_PORT": str(self.api_port),
            "FAKE_GCS_HOST_PORT": str(self.gcs_port),
            **self.env,
        }

    @property
    def api(self) -> str:
        """The stack's front door: the proxy's published port."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gcs(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    @property
    def compose_command(self) -> list[str]:
        return [
            "docker",
            "compose",
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "compose.yaml"),
            *(arg for path in self.overrides for arg in ("-f", str(path))),
            "-p",
            self.project,
        ]

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.compose_command, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ComposeError(
                f"docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stderr[-3000:]}"
            )
        return result

    def up(self, wait_timeout: int = 180) -> None:
        """`up -d --wait` from nothing: whatever this project left before goes first."""
        self.down()
        self.compose("up", "-d", "--wait", "--wait-timeout", str(wait_timeout))

    def container_ids(self, service: str) -> list[str]:
        """The ids of a service's running containers."""
        return self.compose("ps", "-q", service).stdout.split()

    def containers(self) -> dict[str, list[dict[str, Any]]]:
        """service -> `docker inspect` of its containers, by number (stopped ones included):
        the api service has one per replica."""
        ids = self.compose("ps", "-a", "-q").stdout.split()
        if not ids:
            return {}
        inspected = json.loads(
            subprocess.run(
                ["docker", "inspect", *ids], capture_output=True, text=True, check=True
            ).stdout
        )
        services: dict[str, list[dict[str, Any]]] = {}
        for c in sorted(inspected, key=lambda c: int(c["Config"]["Labels"][NUMBER])):
            services.setdefault(c["Config"]["Labels"][SERVICE], []).append(c)
        return services

    def replicas(self) -> list[dict[str, Any]]:
        """The api containers that are running, by number."""
        return [c for c in self.containers().get("api", []) if c["State"]["Running"]]

    def volumes(self) -> list[str]:
        return subprocess.run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()

    def publish(self, src: Path, uri: str, sign_key: Path | None = None) -> None:
        """Upload a version directory to this stack's emulator, as `make publish` does
        (signed with `sign_key`, as `make publish SIGN_KEY=...` does)."""
        with mock.patch.dict(os.environ, {"STORAGE_EMULATOR_HOST": self.gcs}):
            publish(src, uri, storage.Client(), sign_key)

    def inspect(self, service: str) -> dict[str, Any]:
        """The container of a service that has one (loader, fake-gcs, proxy)."""
        (container,) = self.containers()[service]
        return container

    def rollout(self, *make_args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """`make rollout MODEL_URI=...` (or `make rollback`) on this stack."""
        return self.make("rollback" if not make_args else "rollout", *make_args, timeout=timeout)

    def make(
        self, target: str, *make_args: str, timeout: float = 600, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """`make <target>` on this stack (its compose command as COMPOSE), not checked."""
        return subprocess.run(
            ["make", "--no-print-directory", "-C", str(ROOT), target,
             f"COMPOSE={shlex.join(self.compose_command)}", *make_args],
            env={**self.env, **env}, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def proxy_stats(self) -> dict[str, dict[str, str]]:
        """The proxy's view of the replicas (its stats CSV, read inside its container:
        the image has no HTTP client, bash's /dev/tcp does): server name -> row, for the
        servers that have an address."""
        script = (
            "exec 3<>/dev/tcp/127.0.0.1/8404 && "
            "printf 'GET /;csv HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        )
        out = subprocess.run(
            [*self.compose_command, "exec", "-T", "proxy", "bash", "-c", script],
            env=self.env, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        head, _, body = out.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n", 1)[0], head
        if b"chunked" in head.lower():  # size in hex, CRLF, data, CRLF; size 0 ends it
            chunks = b""
            while body:
                size, _, body = body.partition(b"\r\n")
                chunks, body = chunks + body[: int(size, 16)], body[int(size, 16) + 2 :]
            body = chunks
        rows = csv.DictReader(body.decode().removeprefix("# ").splitlines())
        return {
            r["svname"]: r
            for r in rows
            if r["pxname"] == "api" and r["svname"] != "BACKEND" and "MAINT" not in r["status"]
        }

    def routed(self) -> set[str]:
        """ip:port of the replicas the proxy sends traffic to (those it has UP)."""
        return {r["addr"] for r in self.proxy_stats().values() if r["status"] == "UP"}

    def replica_addresses(self) -> set[str]:
        """ip:port of the running replicas, as the proxy would name them."""
        return {
            f"{network['IPAddress']}:8000"
            for c in self.replicas()
            for network in c["NetworkSettings"]["Networks"].values()
        }

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=120)
