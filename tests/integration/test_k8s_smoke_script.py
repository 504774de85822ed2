"""k8s/smoke-test.sh (make k8s-up) against the real API, a uvicorn process, serving iris
and serving models of other kinds. kubectl is a stand-in, since no cluster runs here:
`rollout status` succeeds at once and `port-forward svc/model-load-api 127.0.0.1:PORT:8000`
forwards PORT to the API, as kubectl would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_load_harness.api import launch_api, stop_api
from model_load_harness.ports import free_port
from tests.conftest import ROOT

KUBECTL = """
import asyncio, os, sys

args = sys.argv[1:]
if "rollout" in args:
    sys.exit(0)
host, port, _ = args[args.index("port-forward") + 2].split(":")


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def forward(reader, writer):
    api = await asyncio.open_connection("127.0.0.1", int(os.environ["API_PORT_FOR_TEST"]))
    await asyncio.gather(pipe(reader, api[1]), pipe(api[0], writer))


async def main():
    async with await asyncio.start_server(forward, host, int(port)) as server:
        await server.serve_forever()


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("model", "answer"),
    [
        ("iris_svc", "POST /predict"),
        ("text_classifier", "POST /v2/models/text_classifier/infer (zeros)"),
        ("string_lookup", "POST /v2/models/string_lookup/infer (zeros)"),
    ],
)
def test_the_smoke_test_checks_any_served_model(tmp_path: Path, model: str, answer: str) -> None:
    """It used to POST iris's /predict example whatever the model, so a rollout of any
    other model ended in "smoke test: /predict did not answer"."""
    kubectl = tmp_path / "kubectl.py"
    kubectl.write_text(KUBECTL)
    server = launch_api(ROOT / "models" / model / "v1", API_ACCESS_LOG="false")
    try:
        result = subprocess.run(
            ["bash", str(ROOT / "k8s" / "smoke-test.sh"), str(free_port())],
            env={
                **os.environ,
                "KUBECTL": f"{sys.executable} {kubectl}",
                "API_PORT_FOR_TEST": server.url.rsplit(":", 1)[1],
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_api(server)
    assert result.returncode == 0, result.stdout + result.stderr
    assert answer in result.stdout
    assert f'smoke test passed: model-load-api serves {{"ready":true,"model_name":"{model}"' in (
        result.stdout
    )
