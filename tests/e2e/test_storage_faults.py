"""Storage faults on the real compose stack: the emulator dying mid-download, a corrupted
object in the bucket. Each asserts what an operator sees (`up`'s exit, the loader's exit
code and log line) and that the API never starts on a partial or corrupt model.

The emulator here keeps its objects on disk (`-backend filesystem`, an override), so a
restarted emulator still has them and a test can alter stored bytes behind its back: the
object's md5/crc32c live in an extended attribute next to the bytes (fake-gcs-server
1.54), so bytes changed in place are served with the checksums of the original, as a
bit flip on GCS's disks would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_load_harness.compose import Stack
from tests.conftest import MODEL_V1, SETOSA

pytestmark = pytest.mark.docker

# The emulator keeping its objects in a host directory (bind-mounted through a named
# volume): they survive an emulator restart, and a test can reach the stored bytes.
FILESYSTEM_EMULATOR = """
services:
  fake-gcs:
    command: ["-scheme", "http", "-host", "0.0.0.0", "-port", "4443",
              "-backend", "filesystem", "-filesystem-root", "/storage",
              "-external-url", "http://fake-gcs:4443", "-log-level", "warn"]
    volumes: ["gcs-storage:/storage"]
volumes:
  gcs-storage:
    driver_opts: {{type: none, o: bind, device: "{storage}"}}
"""

# The loader reports progress every second, so a test sees the download under way, and
# gives up on a silent connection after 5 s instead of 30: a killed container's half-sent
# replies vanish with its network namespace, so the loader sees no reset, only silence.
PROGRESS_EVERY_SECOND = """
services:
  loader:
    environment:
      LOADER_PROGRESS_SECONDS: 1
      LOADER_REQUEST_TIMEOUT_SECONDS: 5
"""

BIG_MIB = 128
THROTTLE = "100mbit"  # the emulator's egress: ~10 s for BIG_MIB
PROGRESS = re.compile(r"progress: ([\d.]+)/([\d.]+) MiB \((\d+)%\)")


def storage_stack(name: str, tmp_path: Path, *extra: str) -> Stack:
    storage = tmp_path / "gcs-storage"
    storage.mkdir()
    storage.chmod(0o777)  # the emulator runs as UID 10001
    files = []
    for i, text in enumerate((FILESYSTEM_EMULATOR.format(storage=storage), *extra)):
        path = tmp_path / f"override-{i}.yaml"
        path.write_text(text)
        files.append(path)
    return Stack(f"modelload-e2e-{name}-{os.getpid()}", overrides=files)


def image(stack: Stack, service: str) -> str:
    config = json.loads(stack.compose("config", "--format", "json").stdout)
    return str(config["services"][service]["image"])


def in_volume(stack: Stack, volume: str, mount: str, script: str) -> str:
    """Run python3 -c script in a throwaway container (the loader's image, UID 10001,
    no network) with the project's volume at mount."""
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "10001:10001",
            "-v",
            f"{stack.project}_{volume}:{mount}",
            "--entrypoint",
            "python3",
            image(stack, "loader"),
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def model_volume(stack: Stack) -> dict[str, Any]:
    """What the API would find: every path in the model volume, where `current` points,
    and the manifest it names."""
    return json.loads(
        in_volume(
            stack,
            "models",
            "/models",
            "import json, os\n"
            "paths = sorted(os.path.relpath(os.path.join(d, n), '/models')\n"
            "               for d, ds, fs in os.walk('/models') for n in ds + fs)\n"
            "cur = '/models/current'\n"
            "man = os.path.join(cur, 'manifest.json')\n"
            "print(json.dumps({'paths': paths,\n"
            "  'current': os.readlink(cur) if os.path.islink(cur) else None,\n"
            "  'manifest': json.load(open(man)) if os.path.exists(man) else None}))",
        )
    )


def wait_emulator(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.gcs}/_internal/healthcheck", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the emulator did not come up")


def publish_big_version(stack: Stack, tmp_path: Path, uri: str) -> str:
    """iris v1 plus a BIG_MIB object of random bytes; returns that object's sha256."""
    src = tmp_path / "big"
    shutil.copytree(MODEL_V1, src)
    blob = os.urandom(BIG_MIB << 20)
    (src / "weights.bin").write_bytes(blob)
    stack.publish(src, uri)
    return hashlib.sha256(blob).hexdigest()


class Up(threading.Thread):
    """`docker compose up -d --wait` running in the background."""

    def __init__(self, stack: Stack, **env: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.env = stack, env
        self.result: subprocess.CompletedProcess[str] | None = None

    def run(self) -> None:
        self.result = self.stack.compose(
            "up", "-d", "--wait", "--wait-timeout", "180", check=False, **self.env
        )


def wait_mid_download(stack: Stack, timeout: float = 90) -> float:
    """Block until the loader logged progress below 100%; returns that percentage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = stack.compose("logs", "--no-color", "loader", check=False).stdout
        for match in PROGRESS.finditer(logs):
            percent = int(match.group(3))
            if 0 < percent < 60:
                return percent
            if percent >= 60:
                pytest.fail(f"the download went too fast to interrupt: {match.group(0)}")
        time.sleep(0.2)
    raise TimeoutError("the loader never reported download progress")


def error_line(logs: str) -> str:
    """The loader's one ERROR line (printed: the README quotes it)."""
    lines = [line for line in logs.splitlines() if " ERROR " in line]
    assert len(lines) == 1, logs[-3000:]
    print(f"\n{lines[0]}")
    return lines[0]


def emulator_pid(stack: Stack) -> int:
    return int(stack.inspect("fake-gcs")["State"]["Pid"])


def throttle_emulator(stack: Stack) -> None:
    """A slow link: a token bucket on the emulator's egress, set in its network namespace
    (tc from the host; the container itself has no capabilities). A restarted emulator
    gets a new namespace, unthrottled."""
    subprocess.run(
        [
            "nsenter",
            "-t",
            str(emulator_pid(stack)),
            "-n",
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            THROTTLE,
            "burst",
            "256kb",
            "latency",
            "100ms",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


BIG_URI = "gs://ml-models/iris_svc/big/"


def start_big_download(stack: Stack, tmp_path: Path, uri: str) -> tuple[Up, float, float, str]:
    """The emulator alone, the big version published to it at `uri`, its network
    throttled, then `up` of the rest in a thread; returns once the loader is mid-download:
    the running `up`, when it started, how far the loader got (%) and the big object's
    sha256."""
    stack.compose("up", "-d", "--wait", "fake-gcs")
    wait_emulator(stack)
    sha256 = publish_big_version(stack, tmp_path, uri)
    throttle_emulator(stack)
    up = Up(stack, MODEL_URI=uri)
    started = time.monotonic()
    up.start()
    return up, started, wait_mid_download(stack), sha256


@pytest.mark.skipif(os.geteuid() != 0, reason="throttling a container's network needs root")
def test_emulator_gone_mid_download_fails_the_loader_and_the_api_never_starts(
    built_images: None, tmp_path: Path
) -> None:
    stack = storage_stack("gcsgone", tmp_path, PROGRESS_EVERY_SECOND)
    try:
        up, _, percent, _ = start_big_download(stack, tmp_path, BIG_URI)
        stack.compose("kill", "fake-gcs")  # SIGKILL; a `docker kill` is not restarted
        killed = time.monotonic()
        up.join(timeout=120)
        assert up.result is not None, "`up` still running two minutes after the kill"
        gave_up = time.monotonic() - killed
        print(
            f"\nemulator killed at {percent}%: `up` returned {up.result.returncode} "
            f"after {gave_up:.1f} s"
        )
        assert up.result.returncode != 0
        containers = stack.containers()
        assert stack.inspect("loader")["State"]["ExitCode"] == 3
        assert all(c["State"]["StartedAt"].startswith("0001-01-01") for c in containers["api"])
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert "retry 1/4" in logs
        assert re.search(
            r"storage unreachable: gs://ml-models/iris_svc/big/weights.bin: gave up at byte \d+ "
            r"after 5 attempts",
            error_line(logs),
        )
        assert "Traceback" not in logs
        volume = model_volume(stack)
        assert volume["current"] is None and volume["manifest"] is None
        assert not [p for p in volume["paths"] if p.startswith(".staging-")], volume["paths"]
    finally:
        stack.down()


@pytest.mark.skipif(os.geteuid() != 0, reason="throttling and killing a container need root")
def test_emulator_crash_mid_download_is_retried_through_its_restart(
    built_images: None, tmp_path: Path
) -> None:
    stack = storage_stack("gcscrash", tmp_path, PROGRESS_EVERY_SECOND)
    try:
        up, started, percent, sha256 = start_big_download(stack, tmp_path, BIG_URI)
        os.kill(emulator_pid(stack), signal.SIGKILL)  # a crash: the restart policy applies
        killed = time.monotonic()
        wait_emulator(stack)
        emulator_back = time.monotonic() - killed
        up.join(timeout=180)
        assert up.result is not None
        print(
            f"\nemulator crashed at {percent}%, back in {emulator_back:.1f} s; `up` "
            f"returned {up.result.returncode} {time.monotonic() - started:.1f} s after it began"
        )
        logs = stack.compose("logs", "--no-color", "loader", "fake-gcs").stdout
        assert up.result.returncode == 0, logs[-4000:]
        assert stack.inspect("fake-gcs")["RestartCount"] == 1
        logs = stack.compose("logs", "--no-color", "loader").stdout
        assert re.search(r"at byte \d+; retry 1/4", logs), logs[-3000:]
        assert "published iris_svc big" in logs
        volume = model_volume(stack)
        objects = {o["name"]: o for o in volume["manifest"]["objects"]}
        assert objects["weights.bin"]["sha256"] == sha256
        assert objects["weights.bin"]["size"] == BIG_MIB << 20
        ready = httpx.get(f"{stack.api}/ready").json()
        assert ready["model_version"] == "big"
        assert httpx.post(f"{stack.api}/predict", json={"data": [SETOSA]}).status_code == 200
    finally:
        stack.down()


def test_a_corrupted_object_fails_the_loader_as_an_integrity_error(
    built_images: None, tmp_path: Path
) -> None:
    stack = storage_stack("corrupt", tmp_path, PROGRESS_EVERY_SECOND)
    try:
        stack.compose("up", "-d", "--wait", "fake-gcs")
        wait_emulator(stack)
        listed = httpx.get(
            f"{stack.gcs}/storage/v1/b/ml-models/o/iris_svc%2Fv1%2Fmodel.onnx"
        ).json()
        # One byte flipped in place: the stored checksums (an xattr) stay the original's.
        in_volume(
            stack,
            "gcs-storage",
            "/storage",
            "f = open('/storage/ml-models/iris_svc/v1/model.onnx', 'r+b')\n"
            "f.seek(200); b = f.read(1); f.seek(200); f.write(bytes([b[0] ^ 0xFF])); f.close()",
        )
        served = httpx.get(
            f"{stack.gcs}/download/storage/v1/b/ml-models/o/iris_svc%2Fv1%2Fmodel.onnx",
            params={"alt": "media"},
        )
        assert served.content != (MODEL_V1 / "model.onnx").read_bytes()
        assert f"crc32c={listed['crc32c']}" in served.headers["x-goog-hash"]

        result = stack.compose("up", "-d", "--wait", "--wait-timeout", "120", check=False)
        assert result.returncode != 0
        assert 'service "loader" didn\'t complete successfully: exit 6' in result.stderr
        containers = stack.containers()
        assert stack.inspect("loader")["State"]["ExitCode"] == 6
        assert all(c["State"]["StartedAt"].startswith("0001-01-01") for c in containers["api"])
        logs = stack.compose("logs", "--no-color", "loader").stdout
        line = error_line(logs)
        assert (
            "integrity failure: gs://ml-models/iris_svc/v1/model.onnx: crc32c of the downloaded "
            "bytes is" in line
        )
        assert line.endswith(f"storage lists {listed['crc32c']}; nothing was published")
        assert "Traceback" not in logs
        volume = model_volume(stack)
        assert volume["current"] is None and volume["manifest"] is None
        assert not [p for p in volume["paths"] if p.startswith(".staging-")], volume["paths"]
    finally:
        stack.down()
