"""Any ONNX model, served by the real API (uvicorn process) from a directory holding only
model.onnx, answers the official `tritonclient` exactly as onnxruntime does on the same
inputs: JSON and binary, every model kind of the zoo (models/README.md). Bad input is a
400 naming the field; the fixed-batch model serves concurrent clients one by one.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_load_harness.api import ApiServer, launch_api, stop_api
from model_loadtest import v2_requests as requests
from model_tools import zoo
from tests.conftest import ROOT
from tests.v2_tensors import decode_inputs, model_metadata

# Each row of these is its own request, and the batch dimension of a batchable model
# holds 3 rows: answers of stacked requests must be sliced back correctly.
ROWS = 3


@pytest.fixture(scope="module", params=sorted(zoo.COMMITTED))
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, ApiServer]]:
    name = request.param
    server = launch_api(ROOT / "models" / name / "v1", API_ACCESS_LOG="false", LOG_LEVEL="WARNING")
    yield name, server
    stop_api(server)


def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(ROOT / "models" / name / "v1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def inputs_for(name: str, metadata: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs from the model's metadata (as the load test makes them)."""
    signature = requests.parse_metadata(metadata)
    rows = ROWS if all(t.shape[0] == -1 for t in signature.inputs) else 1
    body = requests.infer_request(signature.inputs, rows, 5, random.Random(seed))
    return decode_inputs(body, metadata)


def expected(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort_session = session(name)
    names = [o.name for o in ort_session.get_outputs()]
    return dict(zip(names, ort_session.run(names, inputs), strict=True))


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype.kind in "OSU":  # strings: tritonclient gives bytes
        assert [v.decode() if isinstance(v, bytes) else v for v in got.ravel()] == list(
            want.ravel()
        )
    elif want.dtype.kind == "f":
        assert got.dtype == want.dtype
        tolerance = 1e-3 if want.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    else:
        assert got.dtype == want.dtype and np.array_equal(got, want)


def triton_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "BYTES" if array.dtype.kind in "OSU" else triton_datatype(array)
    tensor = triton.InferInput(name, list(array.shape), datatype)
    if datatype == "BYTES":
        array = np.array([v.encode() for v in array.ravel()], dtype=np.object_).reshape(array.shape)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def triton_datatype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_gets_onnxruntimes_answers(
    served: tuple[str, ApiServer], binary: bool
) -> None:
    name, server = served
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    metadata = client.get_model_metadata(name)
    assert metadata == {**model_metadata(session(name), name), "parameters": metadata["parameters"]}
    assert metadata["versions"] == ["v1"] and metadata["platform"] == "onnxruntime_onnx"
    inputs = inputs_for(name, metadata)
    want = expected(name, inputs)
    outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in want]
    result = client.infer(
        name, [triton_input(k, v, binary) for k, v in inputs.items()], outputs=outputs
    )
    for output, array in want.items():
        assert_same(result.as_numpy(output), array)


def test_plain_json_without_outputs_gets_every_output(served: tuple[str, ApiServer]) -> None:
    name, server = served
    metadata = httpx.get(f"{server.url}/v2/models/{name}").json()
    inputs = inputs_for(name, metadata, seed=1)
    body = {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": next(t["datatype"] for t in metadata["inputs"] if t["name"] == k),
                "data": v.ravel().tolist(),
            }
            for k, v in inputs.items()
        ]
    }
    response = httpx.post(f"{server.url}/v2/models/{name}/versions/v1/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "v1"
    got = {o["name"]: o for o in response.json()["outputs"]}
    for output, array in expected(name, inputs).items():
        assert got[output]["shape"] == list(array.shape)
        data = np.array(
            got[output]["data"], dtype=object if array.dtype.kind in "OSU" else array.dtype
        )
        assert_same(data.reshape(array.shape), array)


def test_bad_requests_are_400_naming_the_input(served: tuple[str, ApiServer]) -> None:
    name, server = served
    url = f"{server.url}/v2/models/{name}/infer"
    metadata = httpx.get(f"{server.url}/v2/models/{name}").json()
    first = metadata["inputs"][0]
    shape = [d if d >= 0 else 1 for d in first["shape"]]
    data = requests.tensor_data(first["datatype"], int(np.prod(shape)), random.Random(0))
    good = {"name": first["name"], "shape": shape, "datatype": first["datatype"], "data": data}
    other = "BOOL" if first["datatype"] != "BOOL" else "INT8"
    takes = f"datatype: the model takes {first['datatype']}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "datatype": other}, takes),
        ({**good, "shape": [*shape, 1]}, "shape: the model takes"),
        ({**good, "name": "nope"}, "unknown input 'nope'"),
    ]
    for tensor, message in cases:
        response = httpx.post(url, json={"inputs": [tensor]})
        assert response.status_code == 400, response.text
        assert message in response.json()["error"], response.json()
    if len(metadata["inputs"]) > 1:
        response = httpx.post(url, json={"inputs": [good]})
        assert response.status_code == 400 and "inputs: missing" in response.json()["error"]
    else:
        response = httpx.post(url, json={"inputs": [good], "outputs": [{"name": "x"}]})
        assert response.status_code == 400 and "unknown output 'x'" in response.json()["error"]


# The models of rows in, rows out (one float input [N, features]): served on /predict too.
TABULAR = {
    "tabular_regressor": ("features", 8, "prediction"),
    "fixed_batch": ("input", 4, "output"),
    "fp16_mlp": ("input", 16, "output"),
}


def test_the_seed_route_answers_or_points_to_v2(served: tuple[str, ApiServer]) -> None:
    name, server = served
    if name not in TABULAR:
        response = httpx.post(f"{server.url}/predict", json={"data": [[0.5] * 8]})
        assert response.status_code == 404
        assert f"use POST /v2/models/{name}/infer" in response.json()["error"]
        return
    input_name, features, output = TABULAR[name]
    response = httpx.post(f"{server.url}/predict", json={"data": [[0.5] * features]})
    assert response.status_code == 200
    dtype = np.float16 if name == "fp16_mlp" else np.float32
    want = expected(name, {input_name: np.full((1, features), 0.5, dtype=dtype)})
    assert response.json()["prediction"] == pytest.approx(want[output][0].tolist(), rel=1e-6)
    labels = httpx.post(f"{server.url}/predict/label", json={"data": [[0.5] * features]})
    assert labels.status_code == 404 and "has no labels" in labels.json()["error"]
    if name == "fixed_batch":
        two = httpx.post(f"{server.url}/predict", json={"data": [[0.5] * features] * 2})
        assert two.status_code == 422 and "the model takes exactly 1" in two.json()["error"]


def test_a_fixed_batch_model_serves_concurrent_clients_one_by_one(
    loaded_zoo_fixed: ApiServer,
) -> None:
    server = loaded_zoo_fixed
    client_inputs = [np.full((1, 4), i, dtype=np.float32) for i in range(64)]

    def infer(x: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [
                {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
        response = httpx.post(f"{server.url}/v2/models/fixed_batch/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        return np.array(output["data"], dtype=np.float32).reshape(output["shape"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(infer, client_inputs))
    for x, got in zip(client_inputs, answers, strict=True):
        assert_same(got, expected("fixed_batch", {"input": x})["output"])
    metrics = httpx.get(f"{server.url}/metrics").text
    calls = float(re.search(r"^model_call_rows_count (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    ones = float(re.search(r'^model_call_rows_bucket\{le="1.0"\} (\S+)', metrics, re.M).group(1))  # type: ignore[union-attr]
    assert calls >= 64 and ones == calls  # every ONNX Runtime call: one row


@pytest.fixture(scope="module")
def loaded_zoo_fixed() -> Iterator[ApiServer]:
    server = launch_api(
        ROOT / "models" / "fixed_batch" / "v1", API_ACCESS_LOG="false", LOG_LEVEL="WARNING"
    )
    yield server
    stop_api(server)


def test_requests_of_different_lengths_all_get_their_own_answer(tmp_path: Path) -> None:
    """The text model takes any sequence length: concurrent requests of lengths 3, 5 and
    9 are never stacked together, and each gets onnxruntime's answer for its input."""
    server = launch_api(
        ROOT / "models" / "text_classifier" / "v1", API_ACCESS_LOG="false", LOG_LEVEL="WARNING"
    )
    try:
        rng = np.random.default_rng(0)
        cases = []
        for length in (3, 5, 9) * 8:
            ids = rng.integers(0, 1000, size=(2, length), dtype=np.int64)
            mask = (rng.random((2, length)) < 0.8).astype(np.int64)
            mask[:, 0] = 1
            cases.append({"input_ids": ids, "attention_mask": mask})

        def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            client = triton.InferenceServerClient(server.url.removeprefix("http://"))
            result = client.infer(
                "text_classifier", [triton_input(k, v, True) for k, v in inputs.items()]
            )
            return {name: result.as_numpy(name) for name in ("logits", "pooled")}

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(infer, cases))
        for inputs, got in zip(cases, answers, strict=True):
            for name, want in expected("text_classifier", inputs).items():
                assert_same(got[name], want)
    finally:
        stop_api(server)


def test_an_id_outside_the_vocabulary_is_a_400_from_the_model(tmp_path: Path) -> None:
    server = launch_api(
        ROOT / "models" / "text_classifier" / "v1", API_ACCESS_LOG="false", LOG_LEVEL="WARNING"
    )
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        ids = np.array([[1, 2, 5000]], dtype=np.int64)
        mask = np.ones((1, 3), dtype=np.int64)
        with pytest.raises(InferenceServerException, match="the model refused the input") as caught:
            client.infer(
                "text_classifier",
                [triton_input("input_ids", ids, True), triton_input("attention_mask", mask, True)],
            )
        assert caught.value.status() == "400"
    finally:
        stop_api(server)


def one_node_model(
    path: Path, node: Any, x: tuple[str, list[Any]], y: tuple[str, list[Any]]
) -> Path:
    """A version directory at `path` holding a model of one FP32 input and one node."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [node],
        path.parent.name,
        [helper.make_tensor_value_info(x[0], TensorProto.FLOAT, x[1])],
        [helper.make_tensor_value_info(y[0], TensorProto.FLOAT, y[1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True)
    save(model, str(path / "model.onnx"))
    return path


def image_mean_model(path: Path) -> Path:
    """FP32 [N, 3, 224, 224] -> the mean of each channel, [N, 3] (an ImageNet-sized input)."""
    from onnx import helper

    mean = helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0)
    return one_node_model(path, mean, ("image", ["N", 3, 224, 224]), ("means", ["N", 3]))


def test_an_image_in_json_is_served_and_three_are_413(tmp_path: Path) -> None:
    """MAX_BODY_BYTES=auto: one FP32 224x224 image as pretty-printed JSON (~5 MB, over the
    1 MiB an iris model keeps) gets onnxruntime's answer; three in one request are over
    the model's limit: 413 naming it, before the body is read."""
    server = launch_api(image_mean_model(tmp_path / "image_mean" / "1"), API_ACCESS_LOG="false")
    output = ""
    try:
        image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
        body = {"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                            "data": image.tolist()}]}  # fmt: skip
        content = json.dumps(body, indent=2).encode()
        assert len(content) > 4 * 2**20
        url = f"{server.url}/v2/models/image_mean/infer"
        answer = httpx.post(url, content=content, timeout=60)
        assert answer.status_code == 200, answer.text
        means = answer.json()["outputs"][0]
        assert means["shape"] == [1, 3]
        np.testing.assert_allclose(means["data"], image.mean(axis=(2, 3)).ravel(), rtol=1e-5)

        body["inputs"][0]["shape"] = [3, 3, 224, 224]
        body["inputs"][0]["data"] = np.repeat(image, 3, axis=0).tolist()
        content = json.dumps(body).encode()
        refused = httpx.post(url, content=content, timeout=60)
        assert refused.status_code == 413
        limit = int(re.search(r"MAX_BODY_BYTES=(\d+)", refused.json()["error"]).group(1))
        assert len(content) > limit > 4 * 2**20
    finally:
        output = stop_api(server)
    assert f"request bodies up to {limit} bytes" in output


def test_concurrent_requests_to_a_model_that_mixes_rows_each_get_their_own_answer(
    tmp_path: Path,
) -> None:
    """Softmax over the first dimension, open by the signature: stacked, each request's
    answer would depend on the others'. Each of 48 concurrent requests (4 at a time, the
    batcher waiting 20 ms for more) gets onnxruntime's answer for it alone."""
    from onnx import helper

    softmax = helper.make_node("Softmax", ["x"], ["y"], axis=0)
    path = one_node_model(
        tmp_path / "softmax_over_rows" / "1", softmax, ("x", ["N", 3]), ("y", ["N", 3])
    )
    (path / "model-config.json").write_text('{"batching": {"max_queue_delay_ms": 20}}')
    alone = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    server = launch_api(path, API_ACCESS_LOG="false")
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"), concurrency=4)
        requests = [np.array([[k, 1, 2]], dtype=np.float32) for k in range(48)]
        pending = [
            client.async_infer("softmax_over_rows", [triton_input("x", x, binary=False)])
            for x in requests
        ]
        for x, answer in zip(requests, pending, strict=True):
            assert_same(answer.get_result().as_numpy("y"), alone.run(None, {"x": x})[0])
    finally:
        output = stop_api(server)
    assert "no batch of independent rows" in output
