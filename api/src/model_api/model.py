"""The served model: an ONNX Runtime session, its signature, and what the loader and the
model's optional files say about it. Knows nothing of HTTP.

A version directory needs only `model.onnx`. Beside it, all optional:
`manifest.json` (written by the loader: name, version, source, checksums, signature),
`model-config.json` (model_api.model_config), `label.json` (class names, the older
form), `sample.json` ({"data": [[...]]}, the seed's /predict/test input).

`OnnxModel.load(dir)` or raise a `ModelError`; `warmup()` before serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_api.capacity import BATCH_PROBE_ROWS, HEAVY_SECONDS
from model_api.errors import ModelInvalidError, ModelMissingError
from model_api.model_config import ModelConfig
from model_api.signature import Signature

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
LABEL_FILE = "label.json"
MANIFEST_FILE = "manifest.json"
SAMPLE_FILE = "sample.json"
# A directory named like a version (v1, 2, 2024-11-30, v1.2.0) under one named like the
# model: <name>/<version>/, the layout of the bucket and of models/.
VERSION_DIR = re.compile(r"v?\d+([._-][0-9A-Za-z]+)*")
# Warm-up: each request runs this many times; the fastest run is the model's latency.
WARMUP_RUNS = 3
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def resolve_model_dir(model_dir: str | Path) -> Path:
    """MODEL_DIR/current when the loader published there, else MODEL_DIR itself."""
    base = Path(model_dir)
    current = base / "current"
    return current.resolve() if current.exists() else base


def model_size(model_dir: str | Path) -> int:
    """Bytes of the model's files (model.onnx and any external data beside it)."""
    path = resolve_model_dir(model_dir)
    if not (path / MODEL_FILE).is_file():
        raise ModelMissingError(f"no {MODEL_FILE} in {path} (did the loader run?)")
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@dataclass(frozen=True)
class Identity:
    """Which model and version these are: the loader's manifest says so, else the
    directory layout <name>/<version>/, else the settings (MODEL_NAME, MODEL_VERSION)."""

    name: str
    version: str

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("version", self.version)):
            if "/" in value or value in (".", ".."):
                raise ModelInvalidError(
                    f"model {what} {value!r} cannot be served: it is one segment of the "
                    "path /v2/models/{name}/versions/{version} (no '/')"
                )

    @classmethod
    def of(cls, path: Path, manifest: dict[str, Any], name: str, version: str) -> Identity:
        if manifest.get("model_name") and manifest.get("model_version"):
            return cls(str(manifest["model_name"]), str(manifest["model_version"]))
        if VERSION_DIR.fullmatch(path.name) and path.parent.name:
            return cls(path.parent.name, path.name)
        return cls(name, version)


@dataclass
class OnnxModel:
    path: Path
    session: ort.InferenceSession
    signature: Signature
    identity: Identity
    sha256: str
    config: ModelConfig
    manifest: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    sample: list[list[float]] | None = None
    threads: int = 1
    load_seconds: float = 0.0
    # Seconds of one warm-up inference (the fastest run): how heavy the model is.
    latency: float = 0.0
    # How many times faster per row a batch of BATCH_PROBE_ROWS times the first warm-up
    # request runs than that request: whether batching pays. None: not measured (a model
    # that cannot batch, or one heavy enough by its latency alone).
    batch_gain: float | None = None
    # False when the warm-up showed that requests must not be stacked into one call,
    # though the signature leaves the first dimension open: two different requests in
    # one call got other answers than each alone (the first dimension is no batch of
    # independent rows: a sequence, a softmax over it), or a batch failed (an operator
    # fixes it).
    stacks: bool = True

    @property
    def batches(self) -> bool:
        """Whether the first dimension is a batch of independent rows: requests may be
        stacked along it, and a request's rows count against MAX_BATCH_SIZE."""
        return self.signature.batchable and self.stacks

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def version(self) -> str:
        return self.identity.version

    @property
    def verified_signature(self) -> dict[str, Any] | None:
        """The signature the loader verified before publishing (its manifest's record:
        signer, digest of the signature file, format...), or None if it verified none."""
        signature = self.manifest.get("signature")
        return signature if isinstance(signature, dict) else None

    @property
    def signer(self) -> str | None:
        """Who signed the model: the key's fingerprint (or certificate subject)."""
        signature = self.verified_signature
        return None if signature is None else str(signature.get("signer"))

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        threads: int = 1,
        name: str | None = None,
        version: str | None = None,
        label_file: str | Path | None = None,
    ) -> OnnxModel:
        """Open the model in `model_dir` with `threads` intra-op threads (unless its
        config sets them); `name`/`version` if neither manifest nor layout says;
        `label_file`'s labels if the version carries none (LABEL_FILEPATH)."""
        started = time.monotonic()
        path = resolve_model_dir(model_dir)
        model_file = path / MODEL_FILE
        if not model_file.is_file():
            raise ModelMissingError(f"no {MODEL_FILE} in {path} (did the loader run?)")
        manifest = _read_json(path / MANIFEST_FILE) or {}
        sha256 = _sha256(model_file)
        _check_manifest(manifest, MODEL_FILE, sha256)
        config = ModelConfig.read(path)
        threads = config.onnxruntime.intra_op_threads or threads
        session = create_session(model_file, config, threads)
        signature = Signature.from_session(session, str(model_file))
        model = cls(
            path=path,
            session=session,
            signature=signature,
            identity=Identity.of(path, manifest, name or "model", version or "1"),
            sha256=sha256,
            config=config,
            manifest=manifest,
            labels=(
                config.labels
                or _labels(path / LABEL_FILE)
                or (_labels(Path(label_file)) if label_file else None)
            ),
            sample=_sample(path / SAMPLE_FILE),
            threads=threads,
        )
        if signature.hidden_outputs:
            log.warning(
                "outputs %s are not tensors and are not served", list(signature.hidden_outputs)
            )
        model.load_seconds = time.monotonic() - started
        log.info(
            "loaded %s %s from %s (sha256 %s…, %d intra-op threads) in %.3f s",
            model.name,
            model.version,
            path,
            sha256[:12],
            threads,
            model.load_seconds,
        )
        return model

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """One onnxruntime call: the named outputs for these inputs (ZipMaps as arrays)."""
        results = self.session.run(list(outputs), inputs)
        if self.signature.zipmaps:
            return [r if isinstance(r, np.ndarray) else zipmap_rows(r) for r in results]
        return results  # type: ignore[no-any-return]

    def warmup(self, requests: Sequence[dict[str, np.ndarray]]) -> None:
        """Run each warm-up request a few times (the first run pays set-up costs), and
        keep the fastest run of the first as the model's latency; then, for a batchable
        model, whether stacked requests get their own answers (stacks), and if they do and
        the model is lighter than HEAVY_SECONDS, the time of a batch of the first
        (batch_gain)."""
        names = [t.name for t in self.signature.outputs]
        timings: list[float] = []
        for i, inputs in enumerate(requests):
            for _ in range(WARMUP_RUNS):
                try:
                    seconds = self._timed(inputs, names)
                except Exception as exc:  # onnxruntime's errors are untyped
                    raise ModelInvalidError(
                        f"{self.path}: warm-up request {i} failed: {exc}"
                    ) from exc
                if i == 0:
                    timings.append(seconds)
        self.latency = min(timings) if timings else 0.0
        if requests and self.signature.zipmaps:
            self._learn_classes(requests[0])
        if requests and self.signature.batchable:
            self.stacks = self._stacks_alike(requests[0], names)
        if requests and self.batches and 0 < self.latency < HEAVY_SECONDS:
            self.batch_gain = self._batch_gain(requests[0], names)
        log.info(
            "warmed up: %d request(s); one inference takes %.3f ms%s",
            len(requests),
            self.latency * 1000,
            ""
            if self.batch_gain is None
            else f", {BATCH_PROBE_ROWS} at once {self.batch_gain:.1f}x faster per request",
        )

    def _learn_classes(self, inputs: dict[str, np.ndarray]) -> None:
        """The number of classes of each ZipMap output, from one run; and their keys as
        the model's labels if it has none and they say more than the column's index (a
        classifier trained on strings, or on ids other than 0, 1, ...)."""
        zipmaps = self.signature.zipmaps
        maps = self.session.run(list(zipmaps), inputs)
        keys = {
            name: list(rows[0]) if rows else [] for name, rows in zip(zipmaps, maps, strict=True)
        }
        self.signature = self.signature.with_classes({n: len(k) for n, k in keys.items()})
        names = [k for ks in keys.values() for k in ks]
        if self.labels is None and len(keys) == 1 and names != list(range(len(names))):
            self.labels = [str(k) for k in names]
            log.info("labels: the classes of %r", zipmaps[0])

    def _timed(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> float:
        started = time.perf_counter()
        self.run(inputs, names)
        return time.perf_counter() - started

    def _stacks_alike(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> bool:
        """Whether `inputs` and a different request (each value changed: +1, not, a
        suffix), stacked in one call in either order, get the answers each gets alone
        (floats within rounding). If the model refuses the other request, two copies of
        `inputs` are stacked instead."""
        requests = [inputs, _other_request(inputs)]
        try:
            answers = [self.run(r, names) for r in requests]
        except Exception:  # onnxruntime's errors are untyped: e.g. an id beyond a vocabulary
            answers = [self.run(inputs, names)] * 2
            requests = [inputs, inputs]
        rows = next(iter(inputs.values())).shape[0]
        for first, second in ((0, 1), (1, 0)):
            batch = {n: np.concatenate([requests[first][n], requests[second][n]]) for n in inputs}
            try:
                stacked = self.run(batch, names)
            except Exception as exc:  # onnxruntime's errors are untyped
                why = f"it failed on 2 requests in one call ({first_line(exc)})"
                return self._not_stacked(why)
            for i, (name, out) in enumerate(zip(names, stacked, strict=True)):
                if out.ndim == 0 or out.shape[0] != 2 * rows:
                    why = f"{name!r} has {out.shape[:1]} rows for 2 requests of {rows}"
                    return self._not_stacked(why)
                if not (
                    _alike(out[:rows], answers[first][i]) and _alike(out[rows:], answers[second][i])
                ):
                    why = f"2 requests in one call got other {name!r} than each alone"
                    return self._not_stacked(why)
        return True

    def _not_stacked(self, why: str) -> bool:
        log.warning(
            "the model's signature leaves the first dimension open, but it is no batch of "
            "independent rows: %s; requests are not stacked",
            why,
        )
        return False

    def _batch_gain(self, inputs: dict[str, np.ndarray], names: Sequence[str]) -> float | None:
        """How many times faster per request BATCH_PROBE_ROWS copies of `inputs` run in
        one call than `inputs` alone; None if the model refuses the batch (then it does not
        stack requests)."""
        batch = {name: np.concatenate([x] * BATCH_PROBE_ROWS) for name, x in inputs.items()}
        try:
            seconds = min(self._timed(batch, names) for _ in range(WARMUP_RUNS))
        except Exception as exc:  # onnxruntime's errors are untyped
            self.stacks = False
            log.warning(
                "the model's signature leaves the batch open, but it failed on %d warm-up "
                "requests in one call: requests are not stacked (%s)",
                BATCH_PROBE_ROWS,
                first_line(exc),
            )
            return None
        return self.latency * BATCH_PROBE_ROWS / seconds if seconds > 0 else None

    def zeros(self) -> dict[str, np.ndarray]:
        """A request of zeros (empty strings): one row, open dimensions of size 1."""
        return {
            spec.name: np.zeros(
                [d if d >= 0 else 1 for d in spec.shape],
                dtype=spec.datatype.dtype if spec.datatype.kind != "S" else np.str_,
            ).astype(spec.datatype.dtype)
            for spec in self.signature.inputs
        }


def _other_request(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A request of the same shapes as `inputs` with every value changed."""
    other = {}
    for name, x in inputs.items():
        if x.dtype.kind == "b":
            other[name] = ~x
        elif x.dtype.kind in "OSU":
            other[name] = np.array([f"{v}_" for v in x.ravel()], dtype=x.dtype).reshape(x.shape)
        else:
            other[name] = (x + 1).astype(x.dtype)
    return other


def _alike(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal answers: exactly, or for floats within what the kernels a batch takes may
    round differently."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if got.dtype.kind == "f":
        tolerance = 1e-2 if got.dtype.itemsize < 4 else 1e-4
        return bool(np.allclose(got, want, rtol=tolerance, atol=tolerance, equal_nan=True))
    return bool(np.array_equal(got, want))


def zipmap_rows(maps: Sequence[dict[Any, float]]) -> np.ndarray:
    """A ZipMap's output (per row, a map of class -> probability) as FP32 [rows, classes],
    in the maps' key order."""
    if not maps:
        return np.zeros((0, 0), dtype=np.float32)
    return np.array([list(m.values()) for m in maps], dtype=np.float32)


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def create_session(
    model_file: Path, config: ModelConfig, threads: int, available: list[str] | None = None
) -> ort.InferenceSession:
    options = session_options(config, threads)
    providers, skipped = config.onnxruntime.providers(
        ort.get_available_providers() if available is None else available
    )
    if skipped:
        log.warning(
            "execution providers %s are not in this onnxruntime build (%s); using %s",
            skipped,
            ort.__version__,
            [name for name, _ in providers],
        )
    try:
        return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelInvalidError(f"{model_file}: ONNX Runtime cannot load it: {exc}") from exc


def session_options(config: ModelConfig, threads: int) -> ort.SessionOptions:
    settings = config.onnxruntime
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = settings.inter_op_threads or 1
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if settings.inter_op_threads > 1
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = _OPTIMIZATION[settings.graph_optimization_level]
    options.add_session_config_entry(SPINNING, "1")
    options.add_session_config_entry(SPINNING_STOP, "1")
    return options


# The intra-op threads spin while a call runs, between its operators (a thread that
# sleeps there must be woken for the next one, tens of microseconds on a VM, several
# times a call), and sleep once it returns: between a server's calls the cores belong to
# the event loop reading and answering requests. ONNX Runtime's own default keeps them
# spinning after a call too; never spinning makes a 1-2 ms call ~10% slower.
SPINNING = "session.intra_op.allow_spinning"
SPINNING_STOP = "session.force_spinning_stop"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
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


def _labels(path: Path) -> list[str] | None:
    """label.json maps class index -> name: {"0": "setosa", ...}, or is a plain list."""
    raw = _read_json(path)
    if raw is None:
        return None
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
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
    raw = _read_json(path)
    if raw is None:
        return None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, list) or not data:
        raise ModelInvalidError(f'{path}: expected {{"data": [[...], ...]}}')
    return data
