"""Build the model zoo: ONNX models of every shape the API must serve, offline and reproducibly.

    uv run python -m model_tools.zoo                         # the committed zoo, into models/
    uv run python -m model_tools.zoo --out /tmp/zoo fixed_batch    # one model, anywhere else
    uv run python -m model_tools.zoo --out build/models mlp_bench large_mlp  # benchmark models

Each model is written to `<out>/<name>/v1/model.onnx`, alone: a version directory holding
only model.onnx is what the API must serve (no labels, no config). models/README.md lists
the models, what each one proves and how to publish and serve it.

Reproducible: no downloads (the regressor is fitted on scikit-learn's seeded synthetic
data), weights from numpy's legacy `RandomState` (its streams are frozen across numpy
versions), fixed ir_version, opsets and producer fields, deterministic serialisation.
Re-running gives byte-identical files (tests/unit/test_models_zoo.py holds the committed
ones to that).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import make_regression
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# models/, where this package lives (models/src/model_tools/): run from the checkout.
MODELS_DIR = Path(__file__).resolve().parents[2]
VERSION = "v1"
MODEL_FILE = "model.onnx"
# ai.onnx 17 / ai.onnx.ml 3 with IR 8: loadable by every onnxruntime since 1.12, and
# independent of the installed onnx package's newest IR version.
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
# Fixed, so a library upgrade does not change the bytes of a model whose graph it did not change.
PRODUCER_NAME = "model-load-zoo"
PRODUCER_VERSION = "1"
BATCH = "batch"  # the symbolic first dimension: dynamic batch size

DATATYPES = {  # Open Inference Protocol datatype -> ONNX element type
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(
    nodes: list[onnx.NodeProto],
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    doc: str,
    ml: bool = False,
) -> onnx.ModelProto:
    """The model with every header field fixed: opsets (in this order), IR version, producer."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        model_version=1,
        doc_string=doc,
    )
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _weights(rng: np.random.RandomState, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-initialised float32 weights: activations keep their scale through Relu layers."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


# --- the committed zoo ------------------------------------------------------------------


def regression_data() -> tuple[np.ndarray, np.ndarray]:
    """The regressor's data set: 1000 seeded synthetic rows of 8 features (6 informative)."""
    return make_regression(n_samples=1000, n_features=8, n_informative=6, noise=5.0, random_state=0)


def fit_regressor() -> tuple[Pipeline, float]:
    """The regressor as scikit-learn fits it, and its R^2 on the held-out quarter."""
    x, y = regression_data()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    pipeline = Pipeline([("scaler", StandardScaler()), ("ridge", Ridge(alpha=1.0))])
    pipeline.fit(x_train, y_train)
    return pipeline, float(pipeline.score(x_test, y_test))


def tabular_regressor() -> onnx.ModelProto:
    """FP32 [N, 8] -> FP32 [N, 1]: a ridge regression fitted on seeded synthetic data."""
    pipeline, r2 = fit_regressor()
    graph = convert_sklearn(
        pipeline,
        name="tabular_regressor",
        initial_types=[("features", FloatTensorType([None, 8]))],
        final_types=[("prediction", FloatTensorType([None, 1]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    ).graph
    # Only skl2onnx's graph is kept: its header (producer, its version, opsets listed in
    # hash order, which differs per process) is replaced by the fixed one.
    return _model(
        list(graph.node),
        graph.name,
        list(graph.input),
        list(graph.output),
        list(graph.initializer),
        f"Ridge regression on sklearn make_regression(random_state=0); held-out R^2 {r2:.3f}.",
        ml=True,
    )


def image_classifier() -> onnx.ModelProto:
    """UINT8 [N, 3, 32, 32] -> FP32 [N, 10] probabilities: Cast, scale, two Convs, pooling,
    Gemm, Softmax (random weights: the point is the input type and the image shape)."""
    rng = np.random.RandomState(1)
    initializers = [
        _const("scale", np.array(1 / 255, np.float32)),
        _const("centre", np.array(0.5, np.float32)),
        _const("conv1_w", _weights(rng, (8, 3, 3, 3), 3 * 9)),
        _const("conv1_b", np.zeros(8, np.float32)),
        _const("conv2_w", _weights(rng, (16, 8, 3, 3), 8 * 9)),
        _const("conv2_b", np.zeros(16, np.float32)),
        _const("fc_w", _weights(rng, (16, 10), 16)),
        _const("fc_b", np.zeros(10, np.float32)),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["unit"]),
        helper.make_node("Sub", ["unit", "centre"], ["centred"]),
        helper.make_node("Conv", ["centred", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return _model(
        nodes,
        "image_classifier",
        [_tensor("image", TensorProto.UINT8, [BATCH, 3, 32, 32])],
        [_tensor("probabilities", TensorProto.FLOAT, [BATCH, 10])],
        initializers,
        "uint8 NCHW image -> 10 class probabilities (random weights).",
    )


VOCAB_SIZE = 1000
EMBEDDING_DIM = 32
TEXT_CLASSES = 4


def text_classifier() -> onnx.ModelProto:
    """INT64 input_ids [N, L] + INT64 attention_mask [N, L] (L dynamic) -> FP32 logits
    [N, 4] and FP32 pooled [N, 32]: an embedding lookup, a masked mean, a linear head."""
    rng = np.random.RandomState(2)
    embedding = (rng.standard_normal((VOCAB_SIZE, EMBEDDING_DIM)) * 0.5).astype(np.float32)
    initializers = [
        _const("embedding", embedding),
        _const("head_w", _weights(rng, (EMBEDDING_DIM, TEXT_CLASSES), EMBEDDING_DIM)),
        _const("head_b", np.zeros(TEXT_CLASSES, np.float32)),
        _const("axis_2", np.array([2], np.int64)),
        _const("axis_1", np.array([1], np.int64)),
        _const("one", np.array(1.0, np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis_1"], ["count"], keepdims=0),
        # An all-zero mask pools to zeros instead of dividing by zero.
        helper.make_node("Max", ["count", "one"], ["denominator"]),
        helper.make_node("Div", ["summed", "denominator"], ["pooled"]),
        helper.make_node("Gemm", ["pooled", "head_w", "head_b"], ["logits"]),
    ]
    return _model(
        nodes,
        "text_classifier",
        [
            _tensor("input_ids", TensorProto.INT64, [BATCH, "sequence"]),
            _tensor("attention_mask", TensorProto.INT64, [BATCH, "sequence"]),
        ],
        [
            _tensor("logits", TensorProto.FLOAT, [BATCH, TEXT_CLASSES]),
            _tensor("pooled", TensorProto.FLOAT, [BATCH, EMBEDDING_DIM]),
        ],
        initializers,
        f"token ids in [0, {VOCAB_SIZE}) + attention mask -> masked-mean embedding and logits.",
    )


# Colour names in a few languages -> one id -> the English name. ASCII only, no
# StringNormalizer: LabelEncoder needs no locale (slim images have none).
COLOURS = {
    "red": ["red", "rouge", "rot", "rojo", "rosso"],
    "green": ["green", "vert", "gruen", "verde"],
    "blue": ["blue", "bleu", "blau", "azul", "blu"],
    "yellow": ["yellow", "jaune", "gelb", "amarillo", "giallo"],
    "black": ["black", "noir", "schwarz", "negro", "nero"],
    "white": ["white", "blanc", "weiss", "blanco", "bianco"],
}
UNKNOWN_ID = -1
UNKNOWN_LABEL = "<unknown>"


def string_lookup() -> onnx.ModelProto:
    """BYTES (ONNX string) [N] -> BYTES `label` [N] and INT64 `id` [N]: a colour name in
    one of a few languages -> its id -> its English name; unknown words -> -1, <unknown>."""
    keys = [word for names in COLOURS.values() for word in names]
    ids = [i for i, names in enumerate(COLOURS.values()) for _ in names]
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["id"],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_int64s=ids,
            default_int64=UNKNOWN_ID,
        ),
        helper.make_node(
            "LabelEncoder",
            ["id"],
            ["label"],
            domain="ai.onnx.ml",
            keys_int64s=list(range(len(COLOURS))),
            values_strings=list(COLOURS),
            default_string=UNKNOWN_LABEL,
        ),
    ]
    return _model(
        nodes,
        "string_lookup",
        [_tensor("text", TensorProto.STRING, [BATCH])],
        [_tensor("label", TensorProto.STRING, [BATCH]), _tensor("id", TensorProto.INT64, [BATCH])],
        [],
        "colour word -> colour id -> English colour name (ai.onnx.ml LabelEncoder).",
        ml=True,
    )


def fixed_batch() -> onnx.ModelProto:
    """FP32 [1, 4] -> FP32 [1, 3]: the first dimension is fixed at 1, so a server must never
    merge requests for it."""
    rng = np.random.RandomState(3)
    initializers = [_const("w", _weights(rng, (4, 3), 4)), _const("b", np.zeros(3, np.float32))]
    return _model(
        [helper.make_node("Gemm", ["input", "w", "b"], ["output"])],
        "fixed_batch",
        [_tensor("input", TensorProto.FLOAT, [1, 4])],
        [_tensor("output", TensorProto.FLOAT, [1, 3])],
        initializers,
        "A linear layer whose batch dimension is fixed at 1.",
    )


def fp16_mlp() -> onnx.ModelProto:
    """FP16 [N, 16] -> FP16 [N, 4]: a two-layer MLP computed in half precision."""
    rng = np.random.RandomState(4)
    initializers = [
        _const("w1", _weights(rng, (16, 32), 16).astype(np.float16)),
        _const("b1", np.zeros(32, np.float16)),
        _const("w2", _weights(rng, (32, 4), 32).astype(np.float16)),
        _const("b2", np.zeros(4, np.float16)),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["output"]),
    ]
    return _model(
        nodes,
        "fp16_mlp",
        [_tensor("input", TensorProto.FLOAT16, [BATCH, 16])],
        [_tensor("output", TensorProto.FLOAT16, [BATCH, 4])],
        initializers,
        "16 -> 32 -> 4 MLP in float16.",
    )


def dtypes_identity() -> onnx.ModelProto:
    """One [N, 3] input per V2 datatype, each passed through to an output of the same type:
    `in_<type>` -> `out_<type>` (e.g. in_uint16 -> out_uint16). Proves a codec per datatype."""
    inputs, outputs, nodes = [], [], []
    for datatype, elem_type in DATATYPES.items():
        suffix = datatype.lower()
        inputs.append(_tensor(f"in_{suffix}", elem_type, [BATCH, 3]))
        outputs.append(_tensor(f"out_{suffix}", elem_type, [BATCH, 3]))
        nodes.append(helper.make_node("Identity", [f"in_{suffix}"], [f"out_{suffix}"]))
    return _model(
        nodes,
        "dtypes_identity",
        inputs,
        outputs,
        [],
        "Identity per Open Inference Protocol datatype: " + ", ".join(DATATYPES) + ".",
    )


# --- benchmark models (not committed: `make bench-models` writes them to build/models) ----


def _mlp(name: str, widths: list[int], seed: int, bias: bool, doc: str) -> onnx.ModelProto:
    """A chain of linear layers (Gemm with a bias, or MatMul), Relu between them:
    widths[0] -> widths[1] -> ... -> widths[-1]."""
    rng = np.random.RandomState(seed)
    nodes, initializers = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        last = i == len(widths) - 2
        linear = "output" if last else f"z{i}"
        initializers.append(_const(f"w{i}", _weights(rng, (fan_in, fan_out), fan_in)))
        if bias:
            initializers.append(_const(f"b{i}", np.zeros(fan_out, np.float32)))
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [linear]))
        else:
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [linear]))
        if not last:
            current = f"h{i}"
            nodes.append(helper.make_node("Relu", [linear], [current]))
    return _model(
        nodes,
        name,
        [_tensor("input", TensorProto.FLOAT, [BATCH, widths[0]])],
        [_tensor("output", TensorProto.FLOAT, [BATCH, widths[-1]])],
        initializers,
        doc,
    )


def mlp_bench(hidden: int = 2048) -> onnx.ModelProto:
    """FP32 [N, 256] -> 2048 -> 2048 -> 2048 -> FP32 [N, 10] (Gemm + Relu): compute-bound."""
    return _mlp(
        "mlp_bench",
        [256, hidden, hidden, hidden, 10],
        seed=5,
        bias=True,
        doc=f"Benchmark MLP 256 -> {hidden} x3 -> 10 (Gemm + Relu, random weights).",
    )


LARGE_WIDTH = 4096
LARGE_LAYERS = 4


def large_mlp(width: int = LARGE_WIDTH, layers: int = LARGE_LAYERS) -> onnx.ModelProto:
    """FP32 [N, 4096] -> 4 MatMuls of 4096 x 4096 (Relu between) -> FP32 [N, 4096]:
    a 256 MiB file, for the API's memory benchmark."""
    return _mlp(
        "large_mlp",
        [width] * (layers + 1),
        seed=6,
        bias=False,
        doc=f"Memory benchmark: {layers} MatMuls of {width} x {width} (random weights).",
    )


@dataclass(frozen=True)
class ZooModel:
    build: Callable[[], onnx.ModelProto]
    committed: bool  # False: too big for the repository, built on demand


ZOO: dict[str, ZooModel] = {
    "tabular_regressor": ZooModel(tabular_regressor, True),
    "image_classifier": ZooModel(image_classifier, True),
    "text_classifier": ZooModel(text_classifier, True),
    "string_lookup": ZooModel(string_lookup, True),
    "fixed_batch": ZooModel(fixed_batch, True),
    "fp16_mlp": ZooModel(fp16_mlp, True),
    "dtypes_identity": ZooModel(dtypes_identity, True),
    "mlp_bench": ZooModel(mlp_bench, False),
    "large_mlp": ZooModel(large_mlp, False),
}
COMMITTED = [name for name, entry in ZOO.items() if entry.committed]


def serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def write(name: str, out: Path) -> Path:
    """Build one model and write <out>/<name>/v1/model.onnx atomically (never half a file)."""
    data = serialize(ZOO[name].build())
    target = out / name / VERSION / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a non-root emulator or loader out
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=MODELS_DIR, help=f"output folder (default: {MODELS_DIR})"
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"models to build (default: the committed zoo: {', '.join(COMMITTED)}; "
        f"also: {', '.join(n for n in ZOO if n not in COMMITTED)})",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ZOO]
    if unknown:
        print(f"zoo: unknown model {', '.join(unknown)}; known: {', '.join(ZOO)}", file=sys.stderr)
        return 2
    for name in args.names or COMMITTED:
        path = write(name, args.out)
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
