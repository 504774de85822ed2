"""routes/v2.py: the Open Inference Protocol's request and response shapes, in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model_api.codec import decode
from model_api.config import ApiSettings
from model_api.datatypes import DATATYPES
from model_api.errors import BadRequestError
from model_api.main import create_app
from model_api.model import OnnxModel
from model_api.signature import Signature, TensorSpec
from tests.conftest import MODEL_V1, SETOSA, VIRGINICA

INFER = "/v2/models/iris_svc/versions/v1/infer"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = ApiSettings(MODEL_DIR=str(MODEL_V1), MAX_BATCH_SIZE="10")  # type: ignore[call-arg]
    with TestClient(create_app(settings, OnnxModel.load(MODEL_V1))) as c:
        yield c


def tensor(data: Any, shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": shape or [1, 4], "datatype": "FP32", "data": data, **fields}
        ]
    }


def test_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    body = client.get("/v2/models/iris_svc").json()
    assert body == client.get("/v2/models/iris_svc/versions/v1").json()
    assert body["name"] == "iris_svc" and body["versions"] == ["v1"]
    # The model's real signature: skl2onnx's class index and probabilities.
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert body["platform"] == "onnxruntime_onnx" and len(body["parameters"]["sha256"]) == 64
    assert client.get("/v2/models/iris_svc/ready").json() == {"name": "iris_svc", "ready": True}
    assert client.get("/v2/models/iris_svc/versions/v2/ready").status_code == 404


def test_infer_response_shape(client: TestClient) -> None:
    response = client.post(INFER, json={"id": "x1", **tensor([SETOSA, VIRGINICA], [2, 4])})
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris_svc", "v1", "x1")
    label, probabilities = body["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["datatype"] == "FP32"
    assert probabilities["shape"] == [2, 3] and len(probabilities["data"]) == 6
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}
    only = client.post(INFER, json={**tensor(SETOSA), "outputs": [{"name": "probabilities"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["probabilities"]


def test_id_defaults_to_the_request_id(client: TestClient) -> None:
    response = client.post(INFER, json=tensor(SETOSA), headers={"X-Request-ID": "req-5"})
    assert response.json()["id"] == "req-5"


def test_binary_request_and_response(client: TestClient) -> None:
    rows = np.array([SETOSA, VIRGINICA], dtype="<f4").tobytes()
    header = (
        b'{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":32}}],"parameters":{"binary_data_output":true}}'
    )
    response = client.post(
        INFER, content=header + rows, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 200, response.text
    n = int(response.headers["inference-header-content-length"])
    head, raw = response.content[:n], response.content[n:]
    outputs = json.loads(head)["outputs"]
    sizes = [o["parameters"]["binary_data_size"] for o in outputs]
    assert [o["name"] for o in outputs] == ["label", "probabilities"] and sizes == [16, 24]
    assert "data" not in outputs[0]
    assert np.frombuffer(raw[:16], dtype="<i8").tolist() == [0, 2]
    probabilities = np.frombuffer(raw[16:], dtype="<f4").reshape(2, 3)
    assert probabilities.argmax(1).tolist() == [0, 2]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (tensor([1, 2, 3]), "3 values do not fill shape [1, 4]"),
        (tensor([1, 2, 3], [1, 3]), "shape: the model takes [-1, 4] (-1: any size), got [1, 3]"),
        (tensor([], [0, 4]), "at least 1 row"),
        (tensor(SETOSA * 11, [11, 4]), "11 rows exceed MAX_BATCH_SIZE=10"),
        (tensor([1, 2, 3, True]), "data: FP32 values must be numbers, got true/false"),
        (tensor([1, 2, 3, "4"]), "FP32 values must be numbers"),
        (tensor([[1, 2], [3]], [1, 4]), "nested lists of different lengths"),
        (tensor([[1, 2], [3, 4]], [1, 4]), "nested as [2, 2], but the shape is [1, 4]"),
        (tensor([3.5e38, 1, 2, 3]), "FP32 values must be finite numbers within |x| <= 3.403e+38"),
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        ({"inputs": [{"name": "input"}]}, "inputs.0.shape: Field required"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]},
         "unknown input 'x'"),
        ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": SETOSA}]},
         "datatype: the model takes FP32, got 'INT64'"),
        ({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP8", "data": SETOSA}]},
         "got 'FP8' (not a protocol datatype)"),
        ({"inputs": [tensor(SETOSA)["inputs"][0]] * 2}, "given twice"),
        ({**tensor(SETOSA), "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        (tensor(None), "needs data, or parameters.binary_data_size"),
        (tensor(None, parameters={"binary_data_size": 16}), "16 bytes, but only 0 are left"),
        ({"inputs": "x"}, "inputs: Input should be a valid list"),
        ([1], "Input should be a valid dictionary"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_with_the_field(client: TestClient, body: Any, message: str) -> None:
    response = client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_nan_malformed_and_media_types(client: TestClient) -> None:
    nan = b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}'
    response = client.post(INFER, content=nan)
    assert response.status_code == 400 and "must be finite numbers" in response.json()["error"]
    assert client.post(INFER, content=b"{").status_code == 400
    assert client.post(INFER, content=b"", headers={}).status_code == 400
    plain = client.post(INFER, json=tensor(SETOSA), headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415


@pytest.mark.parametrize(
    "path", ["/v2/models/other", "/v2/models/other/ready", "/v2/models/iris_svc/versions/v0"]
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404 and "error" in response.json()
    assert (
        client.post(f"{path.removesuffix('/ready')}/infer", json=tensor(SETOSA)).status_code == 404
    )


def test_a_bool_among_many_numbers_is_found() -> None:
    """A large tensor's values are looked at for true/false only when the JSON holds the
    word; wherever it is, a hidden bool is still refused."""
    signature = Signature((TensorSpec("x", DATATYPES["FP32"], (-1, 100)),), ())
    values: list[Any] = [0.5] * 100
    plain = {"inputs": [{"name": "x", "shape": [1, 100], "datatype": "FP32", "data": values}]}
    assert decode(json.dumps(plain).encode(), None, signature, 8).inputs["x"].shape == (1, 100)
    assert decode(json.dumps({**plain, "id": "true"}).encode(), None, signature, 8).rows == 1
    values[99] = True
    with pytest.raises(BadRequestError, match="FP32 values must be numbers, got true/false"):
        decode(json.dumps(plain).encode(), None, signature, 8)
