"""model_tools.zoo: the committed zoo is what the script builds, byte for byte, and each model
answers as its signature declares (onnxruntime directly, no API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from model_tools import zoo
from model_tools.publish import publish
from tests.conftest import ROOT
from tests.v2_tensors import DATATYPES, NUMPY_DTYPES

MODELS = ROOT / "models"
ONE_MB = 1_000_000


def model_path(name: str, root: Path = MODELS) -> Path:
    return root / name / "v1" / "model.onnx"


def session_of(source: Path | bytes) -> ort.InferenceSession:
    data = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


HASH_SEEDS = ("1", "2")  # a hash-ordered set or dict in a build would differ between these


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m model_tools.zoo --out DIR` in fresh processes, as `make models` runs it."""
    outs = {}
    for seed in HASH_SEEDS:
        out = outs[seed] = tmp_path_factory.mktemp(f"zoo-{seed}")
        result = subprocess.run(
            [sys.executable, "-m", "model_tools.zoo", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr
    return outs


@pytest.mark.parametrize("seed", HASH_SEEDS)
@pytest.mark.parametrize("name", zoo.COMMITTED)
def test_rebuilding_gives_the_committed_bytes(
    rebuilt: dict[str, Path], name: str, seed: str
) -> None:
    assert model_path(name, rebuilt[seed]).read_bytes() == model_path(name).read_bytes()
    # Readable by all: the emulator image and a non-root loader copy it as it is.
    assert model_path(name, rebuilt[seed]).stat().st_mode & 0o444 == 0o444


def test_the_script_builds_exactly_the_committed_zoo_by_default(rebuilt: dict[str, Path]) -> None:
    for out in rebuilt.values():
        assert sorted(p.name for p in out.iterdir()) == sorted(zoo.COMMITTED)


def test_the_repository_commits_each_small_model_alone_in_its_version_directory() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "models/*/v*/*"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    zoo_files = sorted(f for f in tracked if not f.startswith("models/iris_svc/"))
    assert zoo_files == sorted(f"models/{name}/v1/model.onnx" for name in zoo.COMMITTED)
    for name in zoo.COMMITTED:
        assert model_path(name).stat().st_size < ONE_MB, name


def test_the_benchmark_models_are_never_committed_nor_in_the_emulator_image() -> None:
    bench = [name for name in zoo.ZOO if name not in zoo.COMMITTED]
    assert sorted(bench) == ["large_mlp", "mlp_bench"]
    for name in bench:
        assert not (MODELS / name).exists(), f"{name} belongs in build/models, not models/"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "build/models/mlp_bench/v1/model.onnx"], cwd=ROOT
    )
    assert ignored.returncode == 0, "build/ must be git-ignored"


def test_fixed_producer_and_opsets() -> None:
    for name in zoo.COMMITTED:
        model = onnx.load(str(model_path(name)))
        assert (model.producer_name, model.producer_version) == ("model-load-zoo", "1"), name
        assert model.ir_version == 8, name
        assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] <= 17


def test_unknown_model_names_are_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "model_tools.zoo", "--out", str(tmp_path), "fixed_batch", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("zoo: unknown model nope; known: tabular_regressor")
    assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-built


# --- each model answers as declared ----------------------------------------------------

ROWS = 3
SAMPLES: dict[str, dict[str, np.ndarray]] = {
    "tabular_regressor": {"features": np.linspace(-2, 2, ROWS * 8, dtype=np.float32).reshape(3, 8)},
    "image_classifier": {
        "image": np.random.RandomState(0).randint(0, 256, (ROWS, 3, 32, 32), np.uint8)
    },
    "text_classifier": {
        "input_ids": np.array([[1, 999, 5, 0, 0], [7, 8, 9, 10, 11], [0, 0, 0, 0, 0]], np.int64),
        "attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.int64),
    },
    "string_lookup": {"text": np.array(["rouge", "blue", "zebra"], dtype=object)},
    "fixed_batch": {"input": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)},
    "fp16_mlp": {"input": np.linspace(-1, 1, ROWS * 16, dtype=np.float16).reshape(ROWS, 16)},
    "dtypes_identity": {
        f"in_{datatype.lower()}": (
            np.array([["a", "bc", ""]] * ROWS, dtype=object)
            if datatype == "BYTES"
            else (np.arange(ROWS * 3) % 2).reshape(ROWS, 3).astype(NUMPY_DTYPES[datatype])
        )
        for datatype in zoo.DATATYPES
    },
}


def run(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = session_of(model_path(name))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_every_committed_model_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(zoo.COMMITTED)


@pytest.mark.parametrize("name", zoo.COMMITTED)
def test_each_model_answers_with_its_declared_types_and_shapes(name: str) -> None:
    session = session_of(model_path(name))
    feeds = SAMPLES[name]
    assert sorted(feeds) == sorted(i.name for i in session.get_inputs())
    for arg in session.get_inputs():
        assert feeds[arg.name].dtype == np.dtype(NUMPY_DTYPES[DATATYPES[arg.type]]), arg.name
    rows = next(iter(feeds.values())).shape[0]
    outputs = session.run(None, feeds)
    for arg, value in zip(session.get_outputs(), outputs, strict=True):
        assert value.dtype == np.dtype(NUMPY_DTYPES[DATATYPES[arg.type]]), arg.name
        assert len(value.shape) == len(arg.shape), arg.name
        for i, (got, declared) in enumerate(zip(value.shape, arg.shape, strict=True)):
            if isinstance(declared, int):
                assert got == declared, (arg.name, value.shape, arg.shape)
            elif i == 0:
                assert got == rows, (arg.name, value.shape, arg.shape)


def test_the_fixed_batch_model_refuses_batch_2() -> None:
    session = session_of(model_path("fixed_batch"))
    (arg,) = session.get_inputs()
    assert arg.shape == [1, 4]
    with pytest.raises(Exception, match=r"(?is)invalid dimensions.*index: 0 Got: 2 Expected: 1"):
        session.run(None, {"input": np.zeros((2, 4), np.float32)})


def test_the_regressor_is_scikit_learns_fit() -> None:
    pipeline, r2 = zoo.fit_regressor()
    assert r2 > 0.99  # a real fit: 6 informative features, little noise
    x, _ = zoo.regression_data()
    got = run("tabular_regressor", {"features": x.astype(np.float32)})["prediction"]
    assert got.shape == (len(x), 1)
    np.testing.assert_allclose(got[:, 0], pipeline.predict(x), rtol=1e-4, atol=1e-2)


def test_image_probabilities_sum_to_one_and_depend_on_the_pixels() -> None:
    (probabilities,) = run("image_classifier", SAMPLES["image_classifier"]).values()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(probabilities[0], probabilities[1])


def test_text_pooled_is_the_masked_mean_of_the_embeddings() -> None:
    model = onnx.load(str(model_path("text_classifier")))
    embedding = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}[
        "embedding"
    ]
    assert embedding.shape[0] >= 1000
    feeds = SAMPLES["text_classifier"]
    out = run("text_classifier", feeds)
    assert out["logits"].shape == (ROWS, 4) and out["pooled"].shape == (ROWS, 32)
    np.testing.assert_allclose(out["pooled"][0], embedding[[1, 999, 5]].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(out["pooled"][2], 0.0)  # an all-padding row: zeros, not NaN
    # Padding does not count: other ids under a zero mask give the same answer.
    padded = {"input_ids": feeds["input_ids"].copy(), "attention_mask": feeds["attention_mask"]}
    padded["input_ids"][0, 3:] = [500, 600]
    np.testing.assert_allclose(run("text_classifier", padded)["pooled"][0], out["pooled"][0])


def test_text_accepts_any_sequence_length_and_every_id_below_1000() -> None:
    ids = np.arange(1000, dtype=np.int64).reshape(2, 500)
    out = run("text_classifier", {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert out["logits"].shape == (2, 4)
    assert np.isfinite(out["logits"]).all()


def test_string_lookup_maps_words_to_ids_and_back_unknown_to_the_default() -> None:
    out = run("string_lookup", SAMPLES["string_lookup"])
    assert out["id"].tolist() == [0, 2, -1]
    assert out["label"].tolist() == ["red", "blue", "<unknown>"]


def test_fp16_model_computes_in_half_precision() -> None:
    out = run("fp16_mlp", SAMPLES["fp16_mlp"])["output"]
    assert out.dtype == np.float16 and out.shape == (ROWS, 4)
    assert np.isfinite(out).all()


def test_dtypes_identity_covers_every_datatype_and_returns_its_input() -> None:
    expected = {
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    }  # fmt: skip
    session = session_of(model_path("dtypes_identity"))
    assert {DATATYPES[i.type] for i in session.get_inputs()} == expected
    for arg in session.get_inputs():
        assert arg.name == f"in_{DATATYPES[arg.type].lower()}"
        assert arg.shape[1] == 3 and not isinstance(arg.shape[0], int)
    out = run("dtypes_identity", SAMPLES["dtypes_identity"])
    for name, value in SAMPLES["dtypes_identity"].items():
        got = out[name.replace("in_", "out_")]
        assert got.dtype == value.dtype and got.tolist() == value.tolist(), name


# --- the benchmark models (built small here; `make bench-models` builds them full size) ---


def test_mlp_bench_signature_and_answer() -> None:
    session = session_of(zoo.serialize(zoo.mlp_bench(hidden=64)))
    (arg,) = session.get_inputs()
    assert arg.shape[1:] == [256] and DATATYPES[arg.type] == "FP32"
    (out,) = session.run(None, {"input": np.ones((2, 256), np.float32)})
    assert out.shape == (2, 10) and np.isfinite(out).all()
    graph = onnx.load_from_string(zoo.serialize(zoo.mlp_bench(hidden=64))).graph
    assert [n.op_type for n in graph.node] == ["Gemm", "Relu"] * 3 + ["Gemm"]
    assert [list(t.dims) for t in graph.initializer if t.name.startswith("w")] == [
        [256, 64], [64, 64], [64, 64], [64, 10]
    ]  # fmt: skip


def test_large_mlp_is_at_least_256_mb_at_full_size() -> None:
    assert zoo.LARGE_LAYERS * zoo.LARGE_WIDTH**2 * 4 >= 256 * 2**20
    session = session_of(zoo.serialize(zoo.large_mlp(width=32)))
    (out,) = session.run(None, {"input": np.ones((3, 32), np.float32)})
    assert out.shape == (3, 32)
    graph = onnx.load_from_string(zoo.serialize(zoo.large_mlp(width=32))).graph
    assert [n.op_type for n in graph.node].count("MatMul") == zoo.LARGE_LAYERS


def test_builds_are_deterministic_within_a_process() -> None:
    for build in (zoo.fixed_batch, zoo.text_classifier, lambda: zoo.mlp_bench(hidden=32)):
        assert zoo.serialize(build()) == zoo.serialize(build())


def test_publish_refuses_a_model_the_loader_would_not_find(tmp_path: Path) -> None:
    """The loader reads <uri>model.onnx: a version whose model.onnx is one directory down
    is refused before anything is uploaded (no client call: None would fail)."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(ValueError, match=r"no model.onnx at its top to publish \(found onnx/model"):
        publish(tmp_path, "gs://ml-models/nested/v1/", None)  # type: ignore[arg-type]
