"""The data plane: the served model, its batcher, and inference over the Open Inference
Protocol, independent of HTTP (KServe's and MLServer's dataplanes have the same place).

The REST routes (model_api.routes) are adapters over it: the seed's /predict family
through the model's tabular view (model_api.tabular), V2 through `infer_v2`, which
decodes the request against the model's signature, runs it through the batcher, and
encodes the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from model_api import __version__
from model_api.batching import Arrays, Batcher
from model_api.capacity import batching_pays
from model_api.codec import InferenceRequest, decode, decode_inputs, encode
from model_api.config import ApiSettings
from model_api.errors import (
    BadRequestError,
    ModelInvalidError,
    ModelMissingError,
    NotFoundError,
    NotReadyError,
    describe_errors,
)
from model_api.metrics import Metrics
from model_api.model import OnnxModel, first_line
from model_api.schemas import V2RequestInput
from model_api.tabular import Tabular, tabular

log = logging.getLogger(__name__)

SERVER_NAME = "model-load-api"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification"]
# A model whose one inference takes this long runs its calls in a thread of their own
# (INFERENCE_MODE=auto): below it, the hand-off (tens of microseconds) and the GIL's
# back and forth cost more than the loop gains by going on with HTTP meanwhile.
THREAD_LATENCY_SECONDS = 0.0005
# So does a lighter one, from this long, if batching pays (capacity.batching_pays): its
# calls hold many rows, and the loop reads and answers requests while one runs.
BATCHED_THREAD_SECONDS = 0.00005


def runs_in_thread(model: OnnxModel) -> bool:
    """INFERENCE_MODE=auto: whether the model's calls run in a thread of their own."""
    latency = model.latency
    return latency >= THREAD_LATENCY_SECONDS or (
        latency >= BATCHED_THREAD_SECONDS and batching_pays(model.batch_gain)
    )


def load_model(settings: ApiSettings, threads: int) -> OnnxModel:
    """Load and warm up, waiting up to MODEL_WAIT_SECONDS for the model to appear."""
    deadline = time.monotonic() + settings.model_wait_seconds
    while True:
        try:
            model = OnnxModel.load(
                settings.model_dir,
                threads,
                settings.model_name,
                settings.model_version,
                settings.label_file,
            )
            break
        except ModelMissingError as exc:
            if time.monotonic() >= deadline:
                raise
            log.info("waiting for the model: %s", exc)
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    prepare(model)
    return model


def prepare(model: OnnxModel) -> None:
    """Warm the model up, and check what its files say against it (after the warm-up,
    which learns how many classes a ZipMap output has)."""
    model.warmup(warmup_requests(model))
    view = tabular(model)  # raises if its labels and classes disagree
    if model.sample is not None and isinstance(view, Tabular):
        _check_sample(model, view)


def _check_sample(model: OnnxModel, view: Tabular) -> None:
    """sample.json's rows are what GET /predict/test sends: a model they do not fit is a
    broken version, not a client's mistake to answer with 400 later."""
    try:
        rows = np.asarray(model.sample, dtype=view.input.datatype.dtype)
        problem = view.input.shape_problem(rows.shape)
        if problem is not None:
            raise ValueError(problem)
        model.run({view.input.name: rows}, view.outputs)
    except Exception as exc:  # numpy's and onnxruntime's errors alike: the file is at fault
        raise ModelInvalidError(
            f"{model.path}/sample.json does not fit the model: {first_line(exc)}"
        ) from exc


def warmup_requests(model: OnnxModel) -> list[dict[str, np.ndarray]]:
    """The model config's warm-up requests, or one of zeros."""
    if model.config.warmup is None:
        return [model.zeros()]
    requests = []
    for i, raw in enumerate(model.config.warmup):
        try:
            tensors = [V2RequestInput.model_validate(t) for t in raw.inputs]
            requests.append(decode_inputs(tensors, b"", model.signature))
        except ValidationError as exc:
            problem = describe_errors(exc.errors())
            raise ModelInvalidError(
                f"{model.path}: model-config.json warmup.{i}: {problem}"
            ) from None
        except BadRequestError as exc:
            raise ModelInvalidError(f"{model.path}: model-config.json warmup.{i}: {exc}") from None
    return requests


@dataclass(slots=True)
class V2Inference:
    model: OnnxModel
    request: InferenceRequest
    request_id: str
    outputs: asyncio.Future[Arrays]

    def response(self, arrays: Arrays) -> tuple[bytes, bytes | None]:
        """The response body (and its Inference-Header-Content-Length when some outputs
        are binary)."""
        model, request = self.model, self.request
        return encode(
            model.name,
            model.version,
            request.id if request.id is not None else self.request_id,
            request.outputs,
            arrays,
            model.labels,
        )


class DataPlane:
    def __init__(self, settings: ApiSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: OnnxModel | None = None
        self.batcher: Batcher | None = None
        self.tabular: Tabular | str = "the model is not loaded"

    def serve(self, model: OnnxModel) -> None:
        """Start serving a loaded, warmed-up model."""
        batching = model.config.batching
        mode = self.settings.inference_mode
        in_thread = mode == "thread" or (mode == "auto" and runs_in_thread(model))
        self.batcher = Batcher(
            model,
            max_rows=(
                self.settings.max_batch_size
                if batching.max_batch_size is None
                else batching.max_batch_size
            ),
            max_delay=batching.max_queue_delay_ms / 1000,
            threads=(self.settings.inference_threads if in_thread else 0),
            metrics=self.metrics,
        )
        self.tabular = tabular(model)
        self.model = model
        log.info(
            "serving %s %s: batching %s (up to %d rows, waiting up to %g ms), inference %s",
            model.name,
            model.version,
            "on" if self.batcher.stacking else "off",
            self.batcher.max_rows,
            batching.max_queue_delay_ms,
            f"in {self.settings.inference_threads} thread(s) of its own"
            if in_thread
            else "on the event loop",
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model = None

    # -- which model --------------------------------------------------------------------
    def loaded(self) -> OnnxModel:
        """The served model; 503 until it is loaded."""
        model = self.model
        if model is None:
            raise NotReadyError("the model is not loaded yet")
        return model

    def named(self, name: str, version: str | None = None) -> OnnxModel:
        """The served model if the path names it (and its version): else 404."""
        model = self.loaded()
        if name != model.name:
            raise NotFoundError(f"model {name!r} not found; this server serves {model.name!r}")
        if version is not None and version != model.version:
            raise NotFoundError(
                f"model {model.name!r} has no version {version!r}; it serves {model.version!r}"
            )
        return model

    # -- inference -----------------------------------------------------------------------
    def infer(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...], rows: int | None
    ) -> asyncio.Future[Arrays]:
        """The outputs for one request (a future: awaiting it is the only coroutine)."""
        batcher = self.batcher
        if batcher is None:
            raise NotReadyError("the model is not loaded yet")
        return batcher.infer(inputs, outputs, rows)

    def infer_v2(
        self,
        model: OnnxModel,
        body: bytes,
        header_length: str | None,
        request_id: str,
    ) -> V2Inference:
        """A V2 inference request, decoded against the model's signature and under way."""
        max_rows = self.settings.max_batch_size if model.batches else None
        request = decode(body, header_length, model.signature, max_rows)
        outputs = self.infer(request.inputs, request.output_names, request.rows)
        return V2Inference(model, request, request_id, outputs)

    # -- metadata ------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, model: OnnxModel) -> dict[str, Any]:
        """The protocol's model metadata: the real signature, plus provenance."""
        parameters: dict[str, Any] = {"sha256": model.sha256}
        if model.manifest.get("source_uri"):
            parameters["source_uri"] = model.manifest["source_uri"]
        signature = model.verified_signature
        if signature is not None:
            parameters["signer"] = model.signer
            parameters["signature_digest"] = str(signature.get("digest"))
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": PLATFORM,
            **model.signature.metadata(),
            "parameters": parameters,
        }
