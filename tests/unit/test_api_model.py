"""model_api.model and model_config: loading a version directory, or refusing it with a
reason; what its optional files and the config change."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from model_api.batching import Batcher
from model_api.config import ApiSettings
from model_api.dataplane import prepare
from model_api.errors import ModelInvalidError, ModelMissingError
from model_api.model import (
    SPINNING,
    SPINNING_STOP,
    OnnxModel,
    create_session,
    resolve_model_dir,
    session_options,
)
from model_api.model_config import CONFIG_FILE, CPU_PROVIDER, ModelConfig, OnnxRuntime
from tests.conftest import MODEL_V1, SETOSA


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    target = tmp_path / "iris_svc" / "v1"
    shutil.copytree(MODEL_V1, target)
    return target


def write_model(path: Path, graph: onnx.GraphProto) -> Path:
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path / "model.onnx")
    return path


def identity(dtype: int, name: str = "x") -> onnx.GraphProto:
    return oh.make_graph(
        [oh.make_node("Identity", [name], ["y"])],
        "identity",
        [oh.make_tensor_value_info(name, dtype, ["batch", 2])],
        [oh.make_tensor_value_info("y", dtype, ["batch", 2])],
    )


def test_loads_the_committed_model() -> None:
    model = OnnxModel.load(MODEL_V1)
    assert (model.name, model.version) == ("iris_svc", "v1")
    assert model.labels == ["setosa", "versicolor", "virginica"]
    assert [t.metadata() for t in model.signature.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert [t.name for t in model.signature.outputs] == ["label", "probabilities"]
    assert model.signature.batchable
    assert model.sample == [SETOSA]
    label, proba = model.run(
        {"input": np.array([SETOSA], dtype=np.float32)}, ["label", "probabilities"]
    )
    assert label.tolist() == [0] and proba.shape == (1, 3) and proba[0].argmax() == 0
    prepare(model)
    assert model.latency > 0


def test_prefers_the_loaders_current_link(tmp_path: Path) -> None:
    (tmp_path / "versions").mkdir()
    shutil.copytree(MODEL_V1, tmp_path / "versions" / "abc")
    (tmp_path / "current").symlink_to(Path("versions") / "abc")
    assert resolve_model_dir(tmp_path) == (tmp_path / "versions" / "abc").resolve()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match=r"no model\.onnx"):
        OnnxModel.load(tmp_path)


def test_a_directory_with_only_model_onnx_is_servable(model_dir: Path) -> None:
    for name in ("label.json", "sample.json"):
        (model_dir / name).unlink()
    model = OnnxModel.load(model_dir)
    assert model.labels is None and model.sample is None
    prepare(model)  # warms up on zeros


def test_name_and_version_from_manifest_then_layout_then_settings(
    model_dir: Path, tmp_path: Path
) -> None:
    assert OnnxModel.load(model_dir).identity.name == "iris_svc"  # the layout
    (model_dir / "manifest.json").write_text(
        json.dumps({"model_name": "flowers", "model_version": "2024-06"})
    )
    assert (OnnxModel.load(model_dir).name, OnnxModel.load(model_dir).version) == (
        "flowers",
        "2024-06",
    )
    flat = tmp_path / "somewhere"
    shutil.copytree(MODEL_V1, flat)
    loaded = OnnxModel.load(flat, name="given", version="7")
    assert (loaded.name, loaded.version) == ("given", "7")
    # A name the routes cannot carry (/v2/models/org%2Firis was 404, its /infer 200).
    with pytest.raises(ModelInvalidError, match="model name 'org/iris' cannot be served"):
        OnnxModel.load(flat, name="org/iris", version="7")


def test_a_sample_that_does_not_fit_the_model_is_refused_at_start(model_dir: Path) -> None:
    """GET /predict/test sends sample.json's rows: 3 features to a model of 4 would be
    the request's fault in a 400, when the version is broken."""
    (model_dir / "sample.json").write_text(json.dumps({"data": [[5.1, 3.5, 1.4]]}))
    with pytest.raises(
        ModelInvalidError, match=r"sample.json does not fit the model: .*got \[1, 3\]"
    ):
        prepare(OnnxModel.load(model_dir))
    (model_dir / "sample.json").write_text(json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]}))
    prepare(OnnxModel.load(model_dir))


def test_corrupt_onnx(model_dir: Path) -> None:
    (model_dir / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelInvalidError, match="ONNX Runtime cannot load it"):
        OnnxModel.load(model_dir)


def test_labels_that_do_not_fit_the_model(model_dir: Path) -> None:
    (model_dir / "label.json").write_text(json.dumps({"0": "a", "1": "b"}))
    with pytest.raises(ModelInvalidError, match=r"outputs have \[3\] classes but its labels are 2"):
        prepare(OnnxModel.load(model_dir))


def test_bytes_that_differ_from_the_manifest(model_dir: Path) -> None:
    manifest = {"objects": [{"name": "model.onnx", "sha256": "0" * 64}]}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelInvalidError, match="differs from the loader's manifest"):
        OnnxModel.load(model_dir)


def test_malformed_label_json(model_dir: Path) -> None:
    (model_dir / "label.json").write_text("{oops")
    with pytest.raises(ModelInvalidError, match="not readable JSON"):
        OnnxModel.load(model_dir)


def test_signer_comes_from_the_manifest(model_dir: Path) -> None:
    assert OnnxModel.load(model_dir).signer is None
    signature = {"signer": "sha256:ab12", "digest": "sha256:cd34"}
    (model_dir / "manifest.json").write_text(json.dumps({"signature": signature}))
    assert OnnxModel.load(model_dir).signer == "sha256:ab12"


# -- model-config.json ---------------------------------------------------------------------


def test_config_labels_win_over_label_json(model_dir: Path) -> None:
    (model_dir / CONFIG_FILE).write_text(json.dumps({"labels": ["a", "b", "c"]}))
    assert OnnxModel.load(model_dir).labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{", "not valid JSON"),
        ('{"batching": {"max_batch_sise": 4}}', "batching.max_batch_sise: Extra inputs"),
        ('{"batching": {"max_batch_size": -1}}', "batching.max_batch_size: Input should be"),
        ('{"onnxruntime": {"graph_optimization_level": "max"}}', "graph_optimization_level"),
        ('{"labels": []}', "labels: List should have at least 1 item"),
    ],
)
def test_a_bad_config_is_refused_naming_the_field(
    model_dir: Path, config: str, message: str
) -> None:
    (model_dir / CONFIG_FILE).write_text(config)
    with pytest.raises(ModelInvalidError, match=CONFIG_FILE) as caught:
        OnnxModel.load(model_dir)
    assert message in str(caught.value)


def test_config_warmup_requests_run_and_a_bad_one_is_refused(model_dir: Path) -> None:
    good = {"name": "input", "datatype": "FP32", "shape": [2, 4], "data": SETOSA * 2}
    (model_dir / CONFIG_FILE).write_text(json.dumps({"warmup": [{"inputs": [good]}]}))
    prepare(OnnxModel.load(model_dir))
    bad = {**good, "shape": [2, 3]}
    (model_dir / CONFIG_FILE).write_text(json.dumps({"warmup": [{"inputs": [bad]}]}))
    with pytest.raises(ModelInvalidError, match=r"warmup\.0: inputs\.0 \('input'\)\.shape"):
        prepare(OnnxModel.load(model_dir))


def test_config_threads_and_session_options(model_dir: Path) -> None:
    (model_dir / CONFIG_FILE).write_text(
        json.dumps({"onnxruntime": {"intra_op_threads": 3, "graph_optimization_level": "basic"}})
    )
    model = OnnxModel.load(model_dir, threads=1)
    assert model.threads == 3  # the model's config wins over the server's choice
    options = session_options(model.config, 3)
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level.name == "ORT_ENABLE_BASIC"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_after_calls(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> float:
    """CPU the process spends in the 100 ms after a few calls: what its threads burn
    waiting for work."""
    for _ in range(5):
        session.run(None, inputs)
    before = _cpu_seconds()
    time.sleep(0.1)
    return _cpu_seconds() - before


def test_intra_op_threads_spin_only_while_a_call_runs(tmp_path: Path) -> None:
    """A contract with ONNX Runtime (session.force_spinning_stop): the intra-op threads
    of a served model sleep once a call returns. Fails on an onnxruntime that drops the
    option: its threads would then spin for tens of milliseconds after every call, on the
    cores the event loop needs."""
    rng = np.random.RandomState(0)
    weights = onnx.numpy_helper.from_array(rng.rand(256, 256).astype(np.float32), "w")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["h"]), oh.make_node("Relu", ["h"], ["y"])],
        "matmul",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 256])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 256])],
        [weights],
    )
    model_file = write_model(tmp_path / "matmul" / "v1", graph) / "model.onnx"
    inputs = {"x": rng.rand(64, 256).astype(np.float32)}
    config = ModelConfig()
    served = create_session(model_file, config, threads=2)
    assert served.get_session_options().get_session_config_entry(SPINNING) == "1"
    # The same session, but left spinning after its calls (onnxruntime's default): the
    # measure sees it.
    options = session_options(config, 2)
    options.add_session_config_entry(SPINNING_STOP, "0")
    spinning = ort.InferenceSession(str(model_file), options, providers=[CPU_PROVIDER])
    assert _cpu_after_calls(spinning, inputs) > 0.010
    del spinning
    time.sleep(0.1)  # its threads wind down
    assert _cpu_after_calls(served, inputs) < 0.005


def test_execution_providers_by_preference_with_cpu_as_last_resort() -> None:
    runtime = OnnxRuntime(
        execution_providers=[
            {"name": "CUDAExecutionProvider", "options": {"device_id": 0}},  # type: ignore[list-item]
            "CPUExecutionProvider",
        ]
    )
    # A build with CUDA (onnxruntime-gpu): CUDA first, with its options.
    chosen, skipped = runtime.providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen == [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]
    assert skipped == []
    # This build (CPU only): CUDA skipped, said so.
    chosen, skipped = runtime.providers(["CPUExecutionProvider"])
    assert chosen == [("CPUExecutionProvider", {})] and skipped == ["CUDAExecutionProvider"]
    # CPU is added even when the config names only others.
    only_gpu = OnnxRuntime(execution_providers=["CUDAExecutionProvider"])
    assert only_gpu.providers(["CPUExecutionProvider"])[0] == [("CPUExecutionProvider", {})]


def test_a_missing_provider_is_a_warning_not_a_failure(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ModelConfig(onnxruntime=OnnxRuntime(execution_providers=["CUDAExecutionProvider"]))
    with caplog.at_level(logging.WARNING):
        session = create_session(
            model_dir / "model.onnx", config, 1, available=["CPUExecutionProvider"]
        )
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in caplog.text and "not in this onnxruntime build" in caplog.text


# -- what the protocol can and cannot carry ----------------------------------------------


@pytest.mark.parametrize(
    "classes", [[0, 1, 2], [10, 20, 30], ["setosa", "versicolor", "virginica"]]
)
def test_a_zipmap_output_is_served_as_rows_of_probabilities(
    tmp_path: Path, classes: list[Any]
) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    exported = to_onnx(  # scikit-learn's default export: probabilities as a ZipMap
        LogisticRegression(max_iter=500).fit(x, np.array(classes)[y]),
        x[:1].astype(np.float32),
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (tmp_path / "zipmap" / "v1").mkdir(parents=True)
    onnx.save(exported, tmp_path / "zipmap" / "v1" / "model.onnx")
    model = OnnxModel.load(tmp_path / "zipmap" / "v1")
    assert model.signature.zipmaps == ("output_probability",)
    assert model.signature.output("output_probability").shape == (-1, -1)  # type: ignore[union-attr]
    model.warmup([model.zeros()])
    spec = model.signature.output("output_probability")
    assert spec is not None and (spec.datatype.name, spec.shape) == ("FP32", (-1, 3))
    assert model.batches and not model.signature.hidden_outputs
    # Classes that say more than the column (names, ids other than 0, 1, ...) are its
    # labels: /predict/label and classification name them.
    assert model.labels == (None if classes == [0, 1, 2] else [str(c) for c in classes])
    rows = x[[0, 100, 60]].astype(np.float32)
    label, probabilities = model.run({"X": rows}, ["output_label", "output_probability"])
    maps = model.session.run(["output_probability"], {"X": rows})[0]
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    assert probabilities.tolist() == [list(np.float32(list(m.values()))) for m in maps]
    assert [list(m) for m in maps] == [classes] * 3  # the columns: the maps' key order
    assert label.tolist() == np.array(classes)[probabilities.argmax(axis=1)].tolist()


def test_other_non_tensor_outputs_are_left_out_and_named(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [
            oh.make_node("Identity", ["x"], ["y"]),
            oh.make_node("SequenceConstruct", ["x", "x"], ["pair"]),
        ],
        "seq",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
        [
            oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2]),
            oh.make_tensor_sequence_value_info("pair", onnx.TensorProto.FLOAT, None),
        ],
    )
    model = OnnxModel.load(write_model(tmp_path / "seq" / "v1", graph))
    assert [t.name for t in model.signature.outputs] == ["y"]
    assert model.signature.hidden_outputs == ("pair",) and not model.signature.zipmaps


def test_bfloat16_inputs_are_refused_with_the_reason(tmp_path: Path) -> None:
    write_model(tmp_path / "bf16" / "v1", identity(onnx.TensorProto.BFLOAT16))
    with pytest.raises(ModelInvalidError, match=r"input 'x' is tensor\(bfloat16\): BF16"):
        OnnxModel.load(tmp_path / "bf16" / "v1")


def test_symbolic_and_fixed_dimensions(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "seq", 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "seq", 3])],
    )
    model = OnnxModel.load(write_model(tmp_path / "m" / "1", graph))
    (spec,) = model.signature.inputs
    assert spec.shape == (1, -1, 3) and not model.signature.batchable
    assert spec.shape_problem([1, 7, 3]) is None
    assert spec.shape_problem([2, 7, 3]) is not None
    assert spec.shape_problem([1, 7]) is not None
    assert model.zeros()["x"].shape == (1, 1, 3)


def test_warmup_measures_what_a_batch_gains(tmp_path: Path) -> None:
    """A batchable model's warm-up also times a batch of its first request (the per-row
    gain the worker and thread rules read); a fixed-batch model has none, and so has one
    whose operators refuse the batch its signature allows, which is still served."""
    iris = OnnxModel.load(MODEL_V1)
    prepare(iris)
    assert iris.batch_gain is not None and iris.batch_gain > 0

    fixed = OnnxModel.load(write_model(tmp_path / "fixed" / "1", identity_of_shape([1, 2])))
    prepare(fixed)
    assert fixed.latency > 0 and fixed.batch_gain is None

    # An open batch by its signature, but it reshapes to one row (a shape computed at run
    # time, so the signature keeps the batch open): 8 rows at once fail.
    graph = oh.make_graph(
        [
            oh.make_node("Shape", ["x"], ["shape"]),
            oh.make_node("Gather", ["shape", "first"], ["rows"]),
            oh.make_node("Mul", ["rows", "zero"], ["none"]),
            oh.make_node("Add", ["none", "one"], ["one_row"]),
            oh.make_node("Concat", ["one_row", "two"], ["target"], axis=0),
            oh.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        "one_row",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 2])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 2])],
        [
            onnx.numpy_helper.from_array(np.array([value], dtype=np.int64), name)
            for name, value in (("first", 0), ("zero", 0), ("one", 1), ("two", 2))
        ],
    )
    path = write_model(tmp_path / "refuses" / "1", graph)
    # (Optimised, onnxruntime drops the Reshape and runs any batch.)
    (path / CONFIG_FILE).write_text('{"onnxruntime": {"graph_optimization_level": "disable"}}')
    refuses = OnnxModel.load(path)
    assert refuses.signature.batchable
    prepare(refuses)
    assert refuses.latency > 0 and refuses.batch_gain is None
    # It is served one request a call: stacking would fail every request of the call.
    assert not refuses.stacks and iris.stacks
    assert not Batcher(refuses, max_rows=16).stacking and Batcher(iris, max_rows=16).stacking


def identity_of_shape(shape: list[int | str]) -> onnx.GraphProto:
    return oh.make_graph(
        [oh.make_node("Identity", ["x"], ["y"])],
        "identity",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
    )


def test_an_input_the_model_refuses_at_run_time_is_a_400_others_a_500(tmp_path: Path) -> None:
    """onnxruntime raises InvalidArgument (onnxruntime.capi.onnxruntime_pybind11_state)
    for an index outside an embedding table: the request's fault. A contract: fails if
    an upgrade moves or renames that exception class."""
    from model_api.errors import translate_inference_error

    table = oh.make_tensor("table", onnx.TensorProto.FLOAT, [3, 2], [0.0] * 6)
    graph = oh.make_graph(
        [oh.make_node("Gather", ["table", "ids"], ["y"])],
        "lookup",
        [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        [table],
    )
    model = OnnxModel.load(write_model(tmp_path / "lookup" / "v1", graph))
    assert model.run({"ids": np.array([2])}, ["y"])[0].shape == (1, 2)
    with pytest.raises(Exception) as caught:
        model.run({"ids": np.array([7])}, ["y"])
    error = translate_inference_error(caught.value)
    assert error.status_code == 400 and "the model refused the input" in error.message
    assert translate_inference_error(RuntimeError("boom")).status_code == 500


def mixing_rows(tmp_path: Path, name: str, node: onnx.NodeProto, dims: list[str | None]) -> Path:
    """A model of FP32 `dims` -> FP32 `dims` whose first dimension, open by its signature,
    is no batch of independent rows (`node` mixes them)."""
    graph = oh.make_graph(
        [node],
        name,
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)],
        [onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")],
    )
    return write_model(tmp_path / name / "1", graph)


@pytest.mark.parametrize(
    ("name", "node", "dims"),
    [
        ("softmax_over_rows", oh.make_node("Softmax", ["x"], ["y"], axis=0), ["N", 3]),
        # zeros and ones stacked: the running sum of the second is the first's too
        ("running_sum", oh.make_node("CumSum", ["x", "axis"], ["y"]), ["seq"]),
        ("transpose_unnamed", oh.make_node("Transpose", ["x"], ["y"], perm=[1, 0]), [None, None]),
    ],
)
def test_warmup_finds_a_first_dimension_that_is_no_batch(
    tmp_path: Path,
    name: str,
    node: onnx.NodeProto,
    dims: list[str | None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stacked with another request, its answers would change (a softmax over the rows,
    a running sum along a sequence) or hold the other's values (a transpose): the warm-up
    stacks two different requests in either order, and the model is served unstacked."""
    model = OnnxModel.load(mixing_rows(tmp_path, name, node, dims))
    assert model.signature.batchable
    with caplog.at_level(logging.WARNING):
        prepare(model)
    assert not model.batches and not Batcher(model, max_rows=16).stacking
    assert "no batch of independent rows" in caplog.text


def test_models_of_independent_rows_still_stack(tmp_path: Path) -> None:
    """The same check passes for rows that are independent, whatever the kernels round."""
    iris = OnnxModel.load(MODEL_V1)
    prepare(iris)
    relu_node = oh.make_node("Relu", ["x"], ["y"])
    relu = OnnxModel.load(mixing_rows(tmp_path, "relu", relu_node, ["N", 3]))
    prepare(relu)
    assert iris.batches and relu.batches


def test_label_filepath_labels_a_version_that_carries_none(tmp_path: Path) -> None:
    """The seed's LABEL_FILEPATH (a label.json outside the volume): used when the version
    has no labels of its own, never over them; a path to nothing is a settings error."""
    shutil.copytree(MODEL_V1, tmp_path / "v1")
    (tmp_path / "v1" / "label.json").unlink()
    outside = tmp_path / "config" / "label.json"
    outside.parent.mkdir()
    outside.write_text('{"0": "a", "1": "b", "2": "c"}')
    assert OnnxModel.load(tmp_path / "v1").labels is None
    assert OnnxModel.load(tmp_path / "v1", label_file=outside).labels == ["a", "b", "c"]
    own = OnnxModel.load(MODEL_V1, label_file=outside).labels
    assert own == ["setosa", "versicolor", "virginica"]
    with pytest.raises(ValidationError, match="no such file"):
        ApiSettings(LABEL_FILEPATH=str(tmp_path / "absent.json"))  # type: ignore[call-arg]
