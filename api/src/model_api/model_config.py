"""The optional model config: `model-config.json` beside `model.onnx`.

Everything in it is optional, and so is the file: without it the server derives what it
needs from the model itself. docs: docs/models.md.

    {
      "labels": ["setosa", "versicolor", "virginica"],
      "batching": {"max_batch_size": 64, "max_queue_delay_ms": 0},
      "onnxruntime": {
        "intra_op_threads": 0,
        "inter_op_threads": 0,
        "graph_optimization_level": "all",
        "execution_providers": ["CPUExecutionProvider"]
      },
      "warmup": [{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                              "data": [5.1, 3.5, 1.4, 0.2]}]}]
    }

- labels: class names, index by index, for /predict/label, /label and /metadata (the
  older `label.json`, {"0": "setosa", ...} or a list, is read when this has none).
- batching.max_batch_size: the most rows one model call may stack from several
  requests; 0 turns cross-request batching off. Only models whose every input and
  output leaves the first dimension open are ever batched. Default: MAX_BATCH_SIZE.
- batching.max_queue_delay_ms: how long a request may wait for others to fill a batch
  (Triton's dynamic batcher's max_queue_delay). 0: never waits; requests that arrive
  while the model is busy are still stacked.
- onnxruntime: session options. intra_op_threads 0 means the server's choice (the
  CPUs per worker: API_WORKERS=auto), inter_op_threads 0 means 1 (sequential
  execution). execution_providers in order of preference, by name or as
  {"name": ..., "options": {...}}; those this onnxruntime build lacks are skipped with
  a warning (the CUDA provider needs onnxruntime-gpu and a GPU); the CPU provider is
  always the last resort.
- warmup: requests in the protocol's JSON form (inputs only) run before the server
  reports ready. Default: one request of zeros (empty strings), one row, open
  dimensions of size 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_api.errors import ModelInvalidError, describe_errors

CONFIG_FILE = "model-config.json"
CPU_PROVIDER = "CPUExecutionProvider"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(_Strict):
    max_batch_size: int | None = Field(default=None, ge=0)
    max_queue_delay_ms: float = Field(default=0, ge=0, le=10_000)


class Provider(_Strict):
    name: str
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class OnnxRuntime(_Strict):
    intra_op_threads: int = Field(default=0, ge=0, le=256)
    inter_op_threads: int = Field(default=0, ge=0, le=256)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_providers: list[str | Provider] = Field(default_factory=lambda: [CPU_PROVIDER])

    def providers(self, available: list[str]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
        """(the providers to ask for, with their options; the names skipped because
        this build lacks them). The CPU provider is always among the first."""
        chosen: list[tuple[str, dict[str, Any]]] = []
        skipped = []
        for entry in self.execution_providers:
            name, options = (entry, {}) if isinstance(entry, str) else (entry.name, entry.options)
            if name not in available:
                skipped.append(name)
            elif all(name != c for c, _ in chosen):
                chosen.append((name, dict(options)))
        if all(name != CPU_PROVIDER for name, _ in chosen):
            chosen.append((CPU_PROVIDER, {}))
        return chosen, skipped


class WarmupRequest(_Strict):
    inputs: list[dict[str, Any]] = Field(min_length=1)


class ModelConfig(_Strict):
    labels: list[str] | None = Field(default=None, min_length=1)
    batching: Batching = Field(default_factory=Batching)
    onnxruntime: OnnxRuntime = Field(default_factory=OnnxRuntime)
    warmup: list[WarmupRequest] | None = Field(default=None, min_length=1)

    @classmethod
    def read(cls, directory: Path) -> ModelConfig:
        """The directory's model-config.json, or the defaults if there is none."""
        path = directory / CONFIG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise ModelInvalidError(f"{path}: cannot read it ({exc})") from exc
        try:
            return cls.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise ModelInvalidError(f"{path}: not valid JSON ({exc})") from None
        except ValidationError as exc:
            raise ModelInvalidError(f"{path}: {describe_errors(exc.errors())}") from None
