"""model_api.main: the seed's HTTP contract, in process (FastAPI's TestClient)."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from model_api.config import ApiSettings
from model_api.main import create_app
from model_api.model import OnnxModel
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA


def make_settings(**env: str) -> ApiSettings:
    return ApiSettings(MODEL_DIR=str(MODEL_V1), **env)  # type: ignore[call-arg]


def wait_ready(client: TestClient, timeout: float = 20.0) -> None:
    """The lifespan loads the model in the background: ready comes a moment later."""
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(make_settings(MAX_BATCH_SIZE="200"))
    with TestClient(app) as c:  # runs the lifespan: load + warm-up, in the background
        wait_ready(c)
        yield c


def test_health_is_the_seeds(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"health": "ok"}


def test_ready_names_the_model(client: TestClient) -> None:
    assert client.get("/ready").json() == {
        "ready": True,
        "model_name": "iris_svc",
        "model_version": "v1",
    }
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/health/live").json() == {"live": True}


def test_not_ready_before_the_lifespan_ran() -> None:
    app = create_app(make_settings())
    client = TestClient(app)  # no `with`: no lifespan, no model
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    response = client.post("/predict", json={"data": [SETOSA]})
    assert response.status_code == 503 and "not loaded" in response.json()["error"]


def test_single_row_returns_one_probability_list(client: TestClient) -> None:
    prediction = client.post("/predict", json={"data": [SETOSA]}).json()["prediction"]
    assert len(prediction) == 3 and abs(sum(prediction) - 1) < 1e-5
    assert prediction[0] > 0.9


def test_batch_returns_one_result_per_row_in_order(client: TestClient) -> None:
    rows = [SETOSA, VIRGINICA, SETOSA]
    probabilities = client.post("/predict", json={"data": rows}).json()["prediction"]
    assert [max(range(3), key=p.__getitem__) for p in probabilities] == [0, 2, 0]
    labels = client.post("/predict/label", json={"data": rows}).json()["prediction"]
    assert labels == ["setosa", "virginica", "setosa"]


def test_label_routes(client: TestClient) -> None:
    assert client.post("/predict/label", json={"data": [VIRGINICA]}).json() == {
        "prediction": "virginica"
    }
    assert client.get("/label").json() == {"0": "setosa", "1": "versicolor", "2": "virginica"}
    assert client.get("/predict/test/label").json() == {"prediction": "setosa"}
    assert len(client.get("/predict/test").json()["prediction"]) == 3


def test_metadata_describes_the_model(client: TestClient) -> None:
    body = client.get("/metadata").json()
    assert body["model_name"] == "iris_svc" and len(body["sha256"]) == 64
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]} in body["outputs"]
    assert body["labels"] == ["setosa", "versicolor", "virginica"]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ('{"data": [[6.3, 3.3, 6.0]]}', 422, "data.0: has 3 values; the model takes 4"),
        ('{"data": [[1, 2, 3, 4], [1, 2, 3, 4, 5]]}', 422, "data.1: has 5 values"),
        ('{"data": []}', 422, "data: List should have at least 1 item"),
        ('{"data": [[NaN, 1, 2, 3]]}', 422, "data.0.0: must be a finite number"),
        ('{"data": [[1, Infinity, 2, 3]]}', 422, "data.0.1: must be a finite number"),
        ('{"data": [[1, 2, true, 3]]}', 422, "data.0.2: must be a number, got bool"),
        ('{"data": [[1, 2, 3, "4"]]}', 422, "data.0.3: must be a number, got str"),
        ('{"data": [[1, 2, 3, null]]}', 422, "data.0.3: must be a number, got NoneType"),
        ('{"data": [[[1], 2, 3, 4]]}', 422, "data.0.0: must be a number, got list"),
        ('{"data": 5}', 422, "data: Input should be a valid list"),
        ('{"rows": [[1, 2, 3, 4]]}', 422, "data: Field required"),
        ("[1, 2]", 422, "body: Input should be a valid dictionary"),
        ('{"data": [[3.5e38, 1, 2, 3]]}', 422, "data.0.0: out of the model's float32 range"),
        ('{"data": [[1, 2, 3, 1e999]]}', 422, "data.0.3: must be a finite number, got inf"),
        ('{"data": [[1, 2, 3, 4]], "extra": 1}', 422, "extra: Extra inputs are not permitted"),
        ('{"data": [[1, 2, 3, 4]]', 400, "malformed JSON"),
        ('{"data": [[1, 2, 3, 4]]} trailing', 400, "malformed JSON"),
        ("[" * 100_000 + "]" * 100_000, 400, "malformed JSON"),
        ("", 400, "empty request body"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(
    client: TestClient, body: str, status: int, names: str
) -> None:
    for path in ("/predict", "/predict/label"):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status, response.text
        assert names in response.json()["error"]


def test_batch_over_the_limit(client: TestClient) -> None:
    response = client.post("/predict", json={"data": [SETOSA] * 201})
    assert response.status_code == 422
    assert "201 rows exceed MAX_BATCH_SIZE=200" in response.json()["error"]


def test_wrong_content_type_is_415(client: TestClient) -> None:
    response = client.post(
        "/predict", content='{"data": [[1, 2, 3, 4]]}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405


def test_model_without_sample_answers_404_on_test_routes(tmp_path: Path) -> None:
    shutil.copytree(MODEL_V1, tmp_path / "v1")
    (tmp_path / "v1" / "sample.json").unlink()
    app = create_app(make_settings(), OnnxModel.load(tmp_path / "v1"))
    with TestClient(app) as c:
        response = c.get("/predict/test")
    assert response.status_code == 404 and "ships no sample.json" in response.json()["error"]


def test_body_over_max_body_bytes_is_413() -> None:
    app = create_app(make_settings(MAX_BODY_BYTES="2048"), OnnxModel.load(MODEL_V1))
    with TestClient(app) as c:
        body = '{"data": [' + ", ".join(["[1, 2, 3, 4]"] * 200) + "]}"
        response = c.post("/predict", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert "exceeds MAX_BODY_BYTES=2048" in response.json()["error"]
        assert c.post("/predict", json={"data": [SETOSA]}).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/v2/models/iris_svc/infer"])
@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_compressed_bodies_are_read_as_sent(
    client: TestClient, path: str, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    """As tritonclient sends them with request_compression_algorithm (Triton takes both)."""
    if path == "/predict":
        body: dict[str, Any] = {"data": [SETOSA]}
    else:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
    plain = client.post(path, json=body)
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    packed = client.post(path, content=compress(json.dumps(body).encode()), headers=headers)
    assert packed.status_code == plain.status_code == 200, packed.text
    assert packed.json().get("outputs", packed.json()) == plain.json().get("outputs", plain.json())


@pytest.mark.parametrize(
    ("encoding", "body", "status", "words"),
    [
        ("gzip", b"\x1f\x8b...", 400, "not valid gzip data"),
        ("deflate", gzip.compress(b'{"data": [[1, 2, 3, 4]]}'), 400, "not valid deflate data"),
        ("gzip", gzip.compress(b'{"data": [[1, 2, 3, 4]]}')[:-9], 400, "not one whole gzip"),
        ("gzip", gzip.compress(b"{}") * 2, 400, "not one whole gzip"),
        ("br", b"\x0b\x02\x80{}\x03", 415, "'br' is not supported (gzip, deflate or identity)"),
    ],
)
def test_bad_compressed_bodies_are_refused_with_the_reason(
    client: TestClient, encoding: str, body: bytes, status: int, words: str
) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == status and words in response.json()["error"]


def test_a_compressed_body_is_held_to_max_body_bytes_once_decompressed() -> None:
    """A 10 KB gzip of 10 MB of spaces is refused, not inflated: no bomb gets through."""
    app = create_app(make_settings(MAX_BODY_BYTES="65536"), OnnxModel.load(MODEL_V1))
    bomb = gzip.compress(b'{"data": [[1, 2, 3, 4]]' + b" " * 10_000_000 + b"}")
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with TestClient(app) as c:
        response = c.post("/predict", content=bomb, headers=headers)
        assert len(bomb) < 65536 and response.status_code == 413
        assert "decompresses to more than MAX_BODY_BYTES=65536" in response.json()["error"]
        small = gzip.compress(json.dumps({"data": [SETOSA]}).encode())
        assert c.post("/predict", content=small, headers=headers).status_code == 200


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "a1-b2"}).headers["x-request-id"] == (
        "a1-b2"
    )
    # Unsafe ids (spaces, quotes, over 128 characters) are replaced, not reflected.
    for bad in ("has space", 'q"uote', "x" * 129):
        rid = client.get("/health", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid != bad and len(rid) == 32


def test_prediction_responses_carry_the_model_version(client: TestClient) -> None:
    for response in (
        client.post("/predict", json={"data": [SETOSA]}),
        client.post("/predict/label", json={"data": [SETOSA]}),
        client.get("/predict/test"),
        client.get("/predict/test/label"),
    ):
        assert response.headers["x-model-version"] == "v1"


def test_metrics_names(client: TestClient) -> None:
    client.post("/predict", json={"data": [SETOSA]})
    text = client.get("/metrics").text
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "model_inference_seconds_bucket",
        "model_call_rows_bucket",
        "model_info",
        "model_load_seconds",
    ):
        assert f"\n{name}" in text, name
    assert 'route="/predict",status="200"' in text


@pytest.mark.parametrize("mode", ["auto", "loop", "thread"])
def test_every_inference_mode_gives_the_same_answer(client: TestClient, mode: str) -> None:
    body = {"data": [SETOSA, VIRGINICA]}
    settings = make_settings(INFERENCE_MODE=mode)
    with TestClient(create_app(settings, OnnxModel.load(MODEL_V1))) as c:
        assert c.post("/predict", json=body).json() == client.post("/predict", json=body).json()
        one = c.post("/predict", json={"data": [SETOSA]}).json()["prediction"]
    assert one[0] > 0.9


def test_an_unexpected_error_on_a_hot_route_is_a_500_with_a_message(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: OnnxModel, *args: object) -> None:
        raise RuntimeError("session exploded")

    monkeypatch.setattr(OnnxModel, "run", broken)
    response = client.post("/predict", json={"data": [SETOSA]}, headers={"X-Request-ID": "b-1"})
    assert response.status_code == 500
    assert response.json() == {"error": "inference failed: session exploded"}
    assert response.headers["x-request-id"] == "b-1"
    assert any("session exploded" in (r.exc_text or "") for r in caplog.records)


def test_hot_routes_answer_through_fastapi_too(client: TestClient) -> None:
    """The FastAPI routes of the hot operations (OpenAPI; other model names) give the
    same answers as the front door."""
    app = client.app
    front, app.front = app.front, None  # type: ignore[attr-defined]
    try:
        direct = client.post("/predict", json={"data": [SETOSA, VIRGINICA]})
        test_label = client.get("/predict/test/label")
        tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}
        v2 = client.post("/v2/models/iris_svc/versions/v1/infer", json={"inputs": [tensor]})
    finally:
        app.front = front  # type: ignore[attr-defined]
    assert direct.json() == client.post("/predict", json={"data": [SETOSA, VIRGINICA]}).json()
    assert direct.headers["x-model-version"] == "v1"
    assert test_label.json() == client.get("/predict/test/label").json()
    assert v2.status_code == 200
    assert {o["name"]: o["data"] for o in v2.json()["outputs"]}["label"] == [0]


def test_the_verified_signature_is_reported_everywhere(tmp_path: Path) -> None:
    shutil.copytree(MODEL_V1, tmp_path / "iris_svc" / "v1")
    signature = {"signer": "sha256:ab12", "digest": "sha256:cd34", "format": "test"}
    (tmp_path / "iris_svc" / "v1" / "manifest.json").write_text(
        f'{{"model_name": "iris_svc", "model_version": "v1", "signature": {json.dumps(signature)}}}'
    )
    app = create_app(make_settings(), OnnxModel.load(tmp_path / "iris_svc" / "v1"))
    with TestClient(app) as c:
        assert c.get("/metadata").json()["signature"] == signature
        parameters = c.get("/v2/models/iris_svc").json()["parameters"]
        assert parameters["signer"] == "sha256:ab12"
        assert parameters["signature_digest"] == "sha256:cd34"
        assert 'signer="sha256:ab12"' in c.get("/metrics").text
    unsigned = create_app(make_settings(), OnnxModel.load(MODEL_V1))
    with TestClient(unsigned) as c:
        assert c.get("/metadata").json()["signature"] is None
        assert "signer" not in c.get("/v2/models/iris_svc").json()["parameters"]


def test_the_guards_fast_path_answers_as_uvicorns_cycle(client: TestClient) -> None:
    """A whole request the guard hands to the front door (serve_whole: no task, the
    answer from the inference's done callback) gets the answer the ASGI call gives."""
    app = create_app(make_settings(MAX_BATCH_SIZE="200"))
    limit = app.state.max_body_bytes
    bodies = [
        json.dumps({"data": [SETOSA, VIRGINICA]}).encode(),
        b'{"data": [[1, 2]]}',  # 422: the wrong number of features (the seed's)
        b"[" + b" " * limit + b"]",  # 413
    ]

    async def fast() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        answers = []
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 20
            while app.state.dataplane.model is None:  # loaded in the background
                assert time.monotonic() < deadline, "not loaded in time"
                await asyncio.sleep(0.01)
            assert app.front is not None
            for body in bodies:
                answered = asyncio.get_running_loop().create_future()
                scope = {
                    "type": "http",
                    "method": "POST",
                    "path": "/predict",
                    "http_version": "1.1",
                    "client": ("127.0.0.1", 40000),
                    "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"f-1")],
                }
                app.front.serve_whole(scope, body, lambda *a, f=answered: f.set_result(a))
                status, headers, content = await answered
                answers.append((status, dict(headers), content))
        return answers

    got = asyncio.run(fast())
    assert [status for status, _, _ in got] == [200, 422, 413]
    for body, (status, headers, content) in zip(bodies, got, strict=True):
        want = client.post(
            "/predict",
            content=body,
            headers={"content-type": "application/json", "x-request-id": "f-1"},
        )
        assert (status, content) == (want.status_code, want.content)
        assert headers[b"x-request-id"] == b"f-1"
        assert headers[b"content-type"] == want.headers["content-type"].encode()
