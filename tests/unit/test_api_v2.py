"""routes/v2.py: the Open Inference Protocol's request and response shapes, in process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
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
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
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
    for length in ("0", "-1", str(len(header + rows) + 1), "x"):
        refused = client.post(
            INFER, content=header + rows, headers={"Inference-Header-Content-Length": length}
        )
        error = refused.json()["error"]
        assert refused.status_code == 400 and "the length of its JSON header" in error
        assert f"Inference-Header-Content-Length {length!r} must be an integer between 1" in error


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
        ({"inputs": []}, "inputs: missing 'input' (FP32 [-1, 4])"),
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
        (tensor(SETOSA, parameters={"binary_data_size": 16}),
         "data or parameters.binary_data_size, not both"),
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


def spec(name: str, *dims: int | str | None, datatype: str = "FP32") -> TensorSpec:
    """A tensor of these dimensions: a size, a name (open), or None (open, unnamed)."""
    shape = tuple(d if isinstance(d, int) else -1 for d in dims)
    names = tuple(d if isinstance(d, str) else None for d in dims)
    return TensorSpec(name, DATATYPES[datatype], shape, names)


@pytest.mark.parametrize(
    ("inputs", "outputs", "batchable"),
    [
        ([spec("x", None, 4)], [spec("y", None, 3)], True),  # scikit-learn's: unnamed
        ([spec("ids", "batch", "seq"), spec("mask", "batch", "seq")],
         [spec("logits", "batch", 2), spec("pooled", "out_dim_0", 8)], True),
        ([spec("q", "Q", 4), spec("d", "D", 4)], [spec("scores", "Q", "D")], False),
        ([spec("x", "N", "M")], [spec("y", "M", "N")], False),  # a transpose
        ([spec("adjacency", "N", "N")], [spec("y", "N", 2)], False),
        ([spec("x", 1, 4)], [spec("y", 1, 3)], False),
        ([spec("x", None, 4)], [spec("total")], False),  # a scalar output
        ([], [spec("y", None, 2)], False),  # no inputs: nothing to stack
    ],
)  # fmt: skip
def test_what_the_signature_allows_to_stack(
    inputs: list[TensorSpec], outputs: list[TensorSpec], batchable: bool
) -> None:
    assert Signature(tuple(inputs), tuple(outputs)).batchable is batchable


def v2_body(**tensors: np.ndarray) -> bytes:
    return json.dumps({"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
        for n, a in tensors.items()
    ]}).encode()  # fmt: skip


def test_inputs_that_name_a_dimension_alike_must_agree_on_it() -> None:
    """ids and their mask of [batch, seq]: 2 and 3 long in seq is the client's mistake (a
    400 naming both), not the model's failure (onnxruntime's broadcast error, a 500)."""
    ids, mask = (spec(name, "batch", "seq", datatype="INT64") for name in ("ids", "mask"))
    signature = Signature((ids, mask), (spec("logits", "batch", 2),))
    same = v2_body(ids=np.zeros((1, 3), np.int64), mask=np.ones((1, 3), np.int64))
    assert decode(same, None, signature, 8).rows == 1
    for ids_shape, mask_shape, dim in (((1, 2), (1, 3), "seq"), ((2, 3), (1, 3), "batch")):
        body = v2_body(ids=np.zeros(ids_shape, np.int64), mask=np.ones(mask_shape, np.int64))
        with pytest.raises(BadRequestError, match=f"share the model's dimension '{dim}'"):
            decode(body, None, signature, 8)


def test_a_model_whose_first_dimension_is_no_batch_takes_any_length() -> None:
    """Without stacking (max_rows None) the first dimension is no count of rows: a
    2,000-long sequence is no 2,000 rows over MAX_BATCH_SIZE."""
    signature = Signature((spec("x", "seq", datatype="INT64"),), (spec("y", "seq"),))
    body = v2_body(x=np.arange(2000, dtype=np.int64))
    with pytest.raises(BadRequestError, match="2000 rows exceed MAX_BATCH_SIZE=1024"):
        decode(body, None, signature, 1024)
    request = decode(body, None, signature, None)
    assert request.rows is None and request.inputs["x"].shape == (2000,)


def test_classification_needs_rows_of_scores(client: TestClient) -> None:
    """A batch's one value per row ([N]) is no row of class scores: 400, not the rows
    ranked against each other."""
    signature = Signature((spec("x", None, 4),), (spec("label", None, datatype="INT64"),))
    body = json.loads(v2_body(x=np.zeros((3, 4), np.int64)))
    body["inputs"][0]["datatype"] = "FP32"
    body["outputs"] = [{"name": "label", "parameters": {"classification": 1}}]
    with pytest.raises(BadRequestError, match="holds no class scores"):
        decode(json.dumps(body).encode(), None, signature, 8)
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]


def test_the_routers_own_errors_say_error(client: TestClient) -> None:
    """404 for an unknown path and 405 in the form of every other error: tritonclient
    reads "error" (its get_model_config got a decoding error from {"detail": ...})."""
    missing = client.get("/v2/models/iris_svc/config")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = client.delete("/predict")
    assert wrong.status_code == 405 and wrong.json() == {"error": "Method Not Allowed"}
    assert "POST" in wrong.headers["allow"]


def test_a_model_that_takes_no_inputs_answers_an_empty_list(tmp_path: Path) -> None:
    """A model of constants only: every request was refused ("at least 1 item")."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    table = nh.from_array(np.arange(4, dtype=np.float32).reshape(2, 2))
    graph = oh.make_graph(
        [oh.make_node("Constant", [], ["y"], value=table)],
        "constant",
        [],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "constant" / "1"
    path.mkdir(parents=True)
    onnx.save(model, path / "model.onnx")
    with TestClient(create_app(ApiSettings(), OnnxModel.load(path))) as constant:
        answer = constant.post("/v2/models/constant/infer", json={"inputs": []})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]
        assert constant.get("/v2/models/constant").json()["inputs"] == []
