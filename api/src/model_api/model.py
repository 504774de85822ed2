"""The served model: one ONNX Runtime session, its labels and the loader's manifest.

Knows nothing of HTTP. `OnnxModel.load(dir)` or raise a `ModelError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_api.errors import ModelInvalidError, ModelMissingError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
LABEL_FILE = "label.json"
MANIFEST_FILE = "manifest.json"
SAMPLE_FILE = "sample.json"

# ONNX element types -> Open Inference Protocol datatypes.
_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}


def resolve_model_dir(model_dir: str | Path) -> Path:
    """MODEL_DIR/current when the loader published there, else MODEL_DIR itself."""
    base = Path(model_dir)
    current = base / "current"
    return current.resolve() if current.exists() else base


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  # -1 for a dynamic dimension

    @classmethod
    def from_ort(cls, arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        return cls(arg.name, _DATATYPES.get(arg.type, arg.type), shape)


@dataclass
class OnnxModel:
    path: Path
    session: ort.InferenceSession
    labels: list[str]
    name: str
    version: str
    sha256: str
    input_name: str
    n_features: int
    probabilities_name: str
    manifest: dict[str, Any] = field(default_factory=dict)
    sample: list[list[float]] | None = None
    load_seconds: float = 0.0
    _one_row: _BoundRow | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._one_row = _BoundRow(self.session, self.input_name, self.n_features,
                                      self.probabilities_name, self.n_classes)  # fmt: skip
        except Exception as exc:  # onnxruntime's errors are untyped; session.run still works
            log.warning("one-row buffers not bound (%s); every inference uses session.run", exc)

    @classmethod
    def load(cls, model_dir: str | Path, threads: int = 1) -> OnnxModel:
        started = time.monotonic()
        path = resolve_model_dir(model_dir)
        model_file = path / MODEL_FILE
        if not model_file.is_file():
            raise ModelMissingError(f"no {MODEL_FILE} in {path} (did the loader run?)")
        manifest = _read_json(path / MANIFEST_FILE, required=False) or {}
        labels_raw = _read_json(path / LABEL_FILE, required=True)
        sha256 = _sha256(model_file)
        _check_manifest(manifest, MODEL_FILE, sha256)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelInvalidError(f"{model_file}: ONNX Runtime cannot load it: {exc}") from exc

        labels = _labels(labels_raw, path / LABEL_FILE)
        input_name, n_features, probabilities_name = _signature(session, len(labels), path)
        model = cls(
            path=path,
            session=session,
            labels=labels,
            name=str(manifest.get("model_name") or path.parent.name or "model"),
            version=str(manifest.get("model_version") or path.name),
            sha256=sha256,
            input_name=input_name,
            n_features=n_features,
            probabilities_name=probabilities_name,
            manifest=manifest,
            sample=_sample(path / SAMPLE_FILE),
        )
        model.load_seconds = time.monotonic() - started
        log.info(
            "loaded %s %s from %s (sha256 %s…) in %.3f s",
            model.name,
            model.version,
            path,
            sha256[:12],
            model.load_seconds,
        )
        return model

    # -- signature --------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_ort(i) for i in self.session.get_inputs()]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_ort(o) for o in self.session.get_outputs()]

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    # -- inference --------------------------------------------------------------------
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities, shape [N, classes], for float32 rows of shape [N, features]."""
        if len(rows) == 1 and self._one_row is not None:
            probabilities = self._one_row.run(rows)
            if probabilities is not None:
                return probabilities
        (probabilities,) = self.session.run([self.probabilities_name], {self.input_name: rows})
        return probabilities

    def predict_label(self, rows: np.ndarray) -> list[str]:
        return self.labels_of(self.predict_proba(rows))

    def labels_of(self, probabilities: np.ndarray) -> list[str]:
        """The most probable label per row."""
        return [self.labels[i] for i in probabilities.argmax(axis=1).tolist()]

    def warmup(self) -> None:
        """One inference on the sample (or zeros), so the first request pays no set-up."""
        rows = np.asarray(self.sample or [[0.0] * self.n_features], dtype=np.float32)
        probabilities = self.predict_proba(rows)
        if probabilities.shape != (len(rows), len(self.labels)):
            raise ModelInvalidError(
                f"warm-up returned shape {probabilities.shape}, "
                f"expected {(len(rows), len(self.labels))}"
            )
        self._check_bound_row(rows[:1])

    def _check_bound_row(self, row: np.ndarray) -> None:
        """The bound one-row path must answer what session.run answers, or is not used."""
        if self._one_row is None:
            return
        (expected,) = self.session.run([self.probabilities_name], {self.input_name: row})
        try:
            bound = self._one_row.run(row)
        except Exception as exc:  # onnxruntime's errors are untyped
            bound, problem = None, str(exc)
        else:
            problem = "its answer differs from session.run"
        if bound is None or not np.array_equal(bound, expected):
            log.warning("one-row buffers not used: %s", problem)
            self._one_row = None


class _BoundRow:
    """One row in, its probabilities out, through buffers bound to the session once.

    For a small model most of `session.run` is its Python-side set-up: turning the feeds
    dict into tensors and the outputs back into arrays. Bound buffers skip that (half the
    time of a one-row inference with the iris model). One caller at a time: a second,
    concurrent one (INFERENCE_MODE=threadpool) is told to use `session.run`.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        n_features: int,
        output_name: str,
        n_classes: int,
    ) -> None:
        self._in = np.zeros((1, n_features), dtype=np.float32)
        self._out = np.zeros((1, n_classes), dtype=np.float32)
        self._binding = session.io_binding()
        self._binding.bind_cpu_input(input_name, self._in)  # by reference: no copy
        self._binding.bind_output(
            output_name, "cpu", 0, np.float32, list(self._out.shape), self._out.ctypes.data
        )
        self._session = session
        self._busy = threading.Lock()

    def run(self, row: np.ndarray) -> np.ndarray | None:
        if not self._busy.acquire(blocking=False):
            return None
        try:
            self._in[...] = row
            self._session.run_with_iobinding(self._binding)
            return self._out.copy()
        finally:
            self._busy.release()


def _signature(session: ort.InferenceSession, n_labels: int, path: Path) -> tuple[str, int, str]:
    """(input name, features per row, probabilities output) — or why we cannot serve it."""
    inputs = [TensorSpec.from_ort(i) for i in session.get_inputs()]
    if len(inputs) != 1 or inputs[0].datatype != "FP32" or len(inputs[0].shape) != 2:
        raise ModelInvalidError(
            f"{path}: expected one FP32 input of shape [N, features], got "
            f"{[(i.name, i.datatype, i.shape) for i in inputs]}"
        )
    n_features = inputs[0].shape[1]
    if n_features < 1:
        raise ModelInvalidError(f"{path}: the input's feature dimension must be fixed")
    probabilities = [
        o
        for o in (TensorSpec.from_ort(o) for o in session.get_outputs())
        if o.datatype == "FP32" and len(o.shape) == 2
    ]
    if not probabilities:
        raise ModelInvalidError(f"{path}: the model has no [N, classes] FP32 output")
    classes = probabilities[0].shape[1]
    if classes not in (-1, n_labels):
        raise ModelInvalidError(
            f"{path}: the model has {classes} classes but {LABEL_FILE} has {n_labels} labels"
        )
    return inputs[0].name, n_features, probabilities[0].name


def _read_json(path: Path, required: bool) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ModelMissingError(f"no {path.name} in {path.parent}") from None
        return None
    except (OSError, ValueError) as exc:
        raise ModelInvalidError(f"{path}: not readable JSON ({exc})") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_manifest(manifest: dict[str, Any], filename: str, sha256: str) -> None:
    """The bytes on disk must be the bytes the loader verified and recorded."""
    for entry in manifest.get("objects", []):
        if entry.get("name") == filename and entry.get("sha256") not in (None, sha256):
            raise ModelInvalidError(
                f"{filename}: sha256 {sha256} differs from the loader's manifest "
                f"({entry['sha256']}); the model directory was modified after loading"
            )


def _labels(raw: Any, path: Path) -> list[str]:
    """label.json maps class index -> name: {"0": "setosa", ...}, or is a plain list."""
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    if isinstance(raw, dict):
        try:
            by_index = {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            by_index = {}
        if by_index and sorted(by_index) == list(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    raise ModelInvalidError(f'{path}: expected {{"0": "name", "1": ...}} or ["name", ...]')


def _sample(path: Path) -> list[list[float]] | None:
    raw = _read_json(path, required=False)
    if raw is None:
        return None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, list) or not data:
        raise ModelInvalidError(f'{path}: expected {{"data": [[...], ...]}}')
    return data
