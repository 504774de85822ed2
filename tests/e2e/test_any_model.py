"""Bring your own model, on the real Compose stack: a model that is not iris (two int64
inputs, two outputs, no labels, no config: a version holding only model.onnx), served
from the emulator's bucket by changing nothing but MODEL_URI, answers tritonclient as
onnxruntime does; and a model too large for the API's memory limit is refused with one
line, not killed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from model_load_harness.compose import Stack
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

TEXT = ROOT / "models" / "text_classifier" / "v1"


@pytest.fixture(scope="module")
def text_stack(built_images: None) -> Iterator[Stack]:
    stack = Stack(
        f"modelload-e2e-any-{os.getpid()}",
        env={"MODEL_URI": "gs://ml-models/text_classifier/v1/"},
    )
    stack.down()
    stack.compose("up", "-d", "--wait", "--wait-timeout", "180")
    yield stack
    stack.down()


def test_a_text_model_from_the_bucket_answers_as_onnxruntime(text_stack: Stack) -> None:
    client = triton.InferenceServerClient(text_stack.api.removeprefix("http://"))
    assert client.is_model_ready("text_classifier", "v1")
    metadata = client.get_model_metadata("text_classifier")
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input_ids", "INT64", [-1, -1]),
        ("attention_mask", "INT64", [-1, -1]),
    ]
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 1000, size=(3, 6), dtype=np.int64)
    mask = np.ones((3, 6), dtype=np.int64)
    mask[1, 4:] = 0
    tensors = []
    for name, array in (("input_ids", ids), ("attention_mask", mask)):
        tensor = triton.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer("text_classifier", tensors)
    session = ort.InferenceSession(str(TEXT / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, pooled = session.run(["logits", "pooled"], {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("pooled"), pooled, rtol=1e-6, atol=1e-6)


def test_a_model_over_the_memory_limit_exits_3_with_one_line(
    text_stack: Stack, tmp_path: Path
) -> None:
    """A 64 MiB model against a 96 MiB limit: the API refuses it before loading it."""
    big = tmp_path / "big_model" / "v1"
    big.mkdir(parents=True)
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as nh

    weights = nh.from_array(np.zeros((4096, 4096), dtype=np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4096])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4096])],
        [weights],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, big / "model.onnx")
    text_stack.publish(big, "gs://ml-models/big_model/v1/")
    result = text_stack.compose(
        "up", "-d", "--wait", "--wait-timeout", "120", check=False,
        MODEL_URI="gs://ml-models/big_model/v1/", API_MEMORY_LIMIT="96m",
    )  # fmt: skip
    assert result.returncode != 0  # never ready
    assert not any(api["State"]["OOMKilled"] for api in text_stack.containers()["api"])
    # It exits 3 (and its restart policy starts it again): each time the same one line.
    errors = {
        line.split(" ERROR ", 1)[1]
        for line in text_stack.compose("logs", "--no-log-prefix", "api").stdout.splitlines()
        if " ERROR " in line
    }
    assert len(errors) == 1, errors
    (error,) = errors
    assert "over the container's memory limit of 96 MiB: raise API_MEMORY_LIMIT" in error
    assert "the model's 64 MiB need" in error
    # `make why` (what `make up` prints when the stack does not come up) says so: the
    # services' states, then the API's line (the loader, which succeeded, has none).
    why = text_stack.make("why").stdout
    said = [line for line in why.splitlines() if line.startswith(("api: ", "loader: "))]
    assert len(said) == 1 and said[0].startswith("api: ") and said[0].endswith(error), why
    assert "loader " in why and "Exited (0)" in why
