"""model_loadtest.v2_requests: from any model's V2 metadata alone, requests the model accepts.

For every model of the zoo (and iris), the metadata its signature implies goes in, a
request body comes out; decoded strictly as a V2 server would and run through onnxruntime
directly, it must be accepted, and the answer must pass the load test's output check.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from model_loadtest import response_checks as checks
from model_loadtest import v2_requests as requests
from model_tools import zoo
from tests.conftest import MODEL_V1, ROOT
from tests.v2_tensors import Rejected, decode_inputs, infer, model_metadata

MODELS = {"iris_svc": MODEL_V1 / "model.onnx"} | {
    name: ROOT / "models" / name / "v1" / "model.onnx" for name in zoo.COMMITTED
}


def session_of(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=sorted(MODELS))
def served(request: pytest.FixtureRequest) -> tuple[ort.InferenceSession, dict[str, Any]]:
    session = session_of(MODELS[request.param])
    return session, model_metadata(session, request.param)


@pytest.mark.parametrize(("rows", "dim", "seed"), [(1, 8, 0), (3, 5, 1), (16, 1, 2)])
def test_requests_built_from_metadata_are_accepted_by_the_model(
    served: tuple[ort.InferenceSession, dict[str, Any]], rows: int, dim: int, seed: int
) -> None:
    session, metadata = served
    # The metadata travels as JSON, and so does the body: nothing but JSON values.
    signature = requests.parse_metadata(json.loads(json.dumps(metadata)))
    body = json.loads(
        json.dumps(requests.infer_request(signature.inputs, rows, dim, random.Random(seed)))
    )
    response = infer(session, body, metadata)
    sent_rows = body["inputs"][0]["shape"][0] if body["inputs"][0]["shape"] else 1
    checks.check_v2_outputs(json.loads(json.dumps(response)), signature.outputs, sent_rows)


def test_the_strict_decoder_can_reject() -> None:
    """The acceptance above means something: the decoder refuses what a server must refuse."""
    session = session_of(MODELS["text_classifier"])
    metadata = model_metadata(session, "text_classifier")
    signature = requests.parse_metadata(metadata)
    body = requests.infer_request(signature.inputs, 2, 4, random.Random(0))
    ids, mask = body["inputs"]
    for change, message in [
        ({"datatype": "INT32"}, "datatype 'INT32'"),
        ({"shape": [2, 4, 1]}, "shape"),
        ({"data": ids["data"][:-1]}, "7 values for shape"),
        ({"data": [1.5] * 8}, "not a valid INT64"),
    ]:
        with pytest.raises(Rejected, match=message):
            decode_inputs({"inputs": [{**ids, **change}, mask]}, metadata)
    with pytest.raises(Rejected, match="missing"):
        decode_inputs({"inputs": [ids]}, metadata)


def test_shapes_dynamic_batch_to_rows_other_dynamic_to_dim_fixed_stay() -> None:
    spec = requests.TensorSpec
    assert requests.concrete_shape(spec("ids", "INT64", (-1, -1)), 3, 8) == [3, 8]
    assert requests.concrete_shape(spec("image", "UINT8", (-1, 3, 32, 32)), 1, 8) == [1, 3, 32, 32]
    assert requests.concrete_shape(spec("input", "FP32", (1, 4)), 16, 8) == [1, 4]
    assert requests.concrete_shape(spec("text", "BYTES", (-1,)), 2, 8) == [2]
    assert requests.concrete_shape(spec("scalar", "FP32", ()), 2, 8) == []


def test_inputs_sharing_a_dynamic_dimension_get_the_same_size() -> None:
    metadata = model_metadata(session_of(MODELS["text_classifier"]), "text_classifier")
    body = requests.infer_request(requests.parse_metadata(metadata).inputs, 2, 6, random.Random(0))
    assert [t["shape"] for t in body["inputs"]] == [[2, 6], [2, 6]]


@pytest.mark.parametrize(
    ("datatype", "valid"),
    [
        ("FP16", lambda v: isinstance(v, float) and 0 <= v < 1),
        ("FP32", lambda v: isinstance(v, float) and 0 <= v < 1),
        ("FP64", lambda v: isinstance(v, float) and 0 <= v < 1),
        ("UINT8", lambda v: type(v) is int and 0 <= v <= 255),
        *[
            (t, lambda v: type(v) is int and 0 <= v < 100)
            for t in ("UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
        ],
        ("BOOL", lambda v: isinstance(v, bool)),
        (
            "BYTES",
            lambda v: (
                isinstance(v, str) and 3 <= len(v) <= 8 and set(v) <= set(string.ascii_lowercase)
            ),
        ),
    ],
)
def test_values_by_datatype(datatype: str, valid: Any) -> None:
    values = requests.tensor_data(datatype, 2000, random.Random(3))
    assert len(values) == 2000
    assert all(valid(v) for v in values), [v for v in values if not valid(v)][:5]
    assert len(set(values)) > 1  # not a constant


def test_uint8_spans_the_whole_byte_range() -> None:
    values = requests.tensor_data("UINT8", 5000, random.Random(4))
    assert min(values) == 0 and max(values) == 255


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "not an object"),
        ({"name": "m", "inputs": [], "outputs": []}, "no inputs"),
        ({"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "no outputs"),
        (
            {"inputs": [{"name": "x", "datatype": "BF16", "shape": [-1]}], "outputs": []},
            "datatype 'BF16' is not one of",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}], "outputs": []},
            "shape \\[-2\\]",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": ["N", 4]}], "outputs": []},
            "shape \\['N', 4\\]",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [True]}], "outputs": []},
            "is not a list of sizes",
        ),
        ({"inputs": [{"datatype": "FP32", "shape": [1]}], "outputs": []}, "input: no name"),
    ],
)
def test_unusable_metadata_is_refused_with_the_reason(metadata: Any, message: str) -> None:
    with pytest.raises(requests.BadMetadata, match=message):
        requests.parse_metadata(metadata)


@pytest.mark.parametrize(
    ("name", "labels", "features"),
    [
        ("iris_svc", 3, 4),
        ("iris_svc", 0, None),  # no labels: /predict/label cannot answer
        ("iris_svc", 5, None),  # labels that do not match the classes
        ("tabular_regressor", 0, None),
        ("fixed_batch", 3, None),  # fixed batch: /predict sends 2-32 rows
        ("text_classifier", 4, None),
        ("image_classifier", 10, None),  # 4-D input
        ("dtypes_identity", 3, None),
    ],
)
def test_seed_routes_only_for_classifier_shaped_models(
    name: str, labels: int, features: int | None
) -> None:
    metadata = model_metadata(session_of(MODELS[name]), name)
    signature = requests.parse_metadata(metadata)
    assert requests.seed_features(signature, labels) == features
