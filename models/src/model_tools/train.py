"""Train the iris classifier and export it as a versioned ONNX model.

    uv run python -m model_tools.train                  # writes models/iris_svc/v1/
    uv run python -m model_tools.train --out /tmp/v2    # anywhere else

Reproducible: the split, the SVC's internal Platt-scaling folds and the export are
all seeded, so re-running this script gives the same probabilities (the test
`tests/unit/test_train.py` holds the committed artifact to that).

The ONNX graph takes one float tensor `input` of shape [N, 4] and returns `label`
(int64, [N]) and `probabilities` (float32, [N, 3]); no ZipMap, so any ONNX Runtime
or Open Inference Protocol client can consume the output as a plain tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

RANDOM_STATE = 0
TEST_SIZE = 0.25
INPUT_NAME = "input"
OUTPUT_NAMES = ("label", "probabilities")
# ai.onnx 17 / ai.onnx.ml 3: loadable by every onnxruntime since 1.12.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SAMPLE_ROW = [5.1, 3.5, 1.4, 0.2]  # the seed's setosa example; served by /predict/test
# models/, where this package lives (models/src/model_tools/): a development tool, run
# from the checkout (installed editable), never from an image.
MODELS_DIR = Path(__file__).resolve().parents[2]
DEFAULT_OUT = MODELS_DIR / "iris_svc" / "v1"


@contextlib.contextmanager
def svc_probability_deprecation_ignored() -> Iterator[None]:
    # scikit-learn 1.9 deprecates SVC(probability=True) and its probA_/probB_
    # attributes (removal planned for 1.11, hence the <1.11 pin in pyproject.toml).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def train(svc_c: float = 1.0) -> tuple[Pipeline, float, dict[str, str]]:
    """Fit the classifier; return it, its held-out accuracy and the label map."""
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data,
        iris.target,
        test_size=TEST_SIZE,
        random_state=RANDOM_STATE,
        stratify=iris.target,
    )
    model = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("svc", SVC(C=svc_c, probability=True, random_state=RANDOM_STATE)),
        ]
    )
    with svc_probability_deprecation_ignored():
        model.fit(x_train, y_train)
    labels = {str(i): str(name) for i, name in enumerate(iris.target_names)}
    return model, float(model.score(x_test, y_test)), labels


def to_onnx(model: Pipeline, n_features: int) -> bytes:
    with svc_probability_deprecation_ignored():
        onx = convert_sklearn(
            model,
            name="iris_svc",
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options={id(model.steps[-1][1]): {"zipmap": False}},
            target_opset=TARGET_OPSET,
        )
    produced = tuple(o.name for o in onx.graph.output)
    if produced != OUTPUT_NAMES:
        raise RuntimeError(f"unexpected ONNX outputs {produced}, want {OUTPUT_NAMES}")
    # skl2onnx lists the opsets in hash order, which differs per process: sorted, the
    # file is byte-identical on every run.
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    onx.ClearField("opset_import")
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    return onx.SerializeToString(deterministic=True)


def export(out_dir: Path, svc_c: float = 1.0) -> Pipeline:
    model, accuracy, labels = train(svc_c)
    n_features = int(model.n_features_in_)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(to_onnx(model, n_features))
    (out_dir / "label.json").write_text(json.dumps(labels) + "\n")
    (out_dir / "sample.json").write_text(json.dumps({"data": [SAMPLE_ROW]}) + "\n")
    print(
        f"wrote {out_dir}/model.onnx, label.json and sample.json (held-out accuracy {accuracy:.3f})"
    )
    return model


def predict_proba(model: Pipeline, rows: np.ndarray) -> np.ndarray:
    with svc_probability_deprecation_ignored():
        return model.predict_proba(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--svc-c",
        type=float,
        default=1.0,
        help="the SVC's regularisation C (default 1.0: the committed v1)",
    )
    args = parser.parse_args()
    export(args.out, args.svc_c)


if __name__ == "__main__":
    main()
