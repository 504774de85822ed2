"""API settings, read from the environment (the same names in compose.yaml and k8s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where the loader published the model: MODEL_DIR/current, or MODEL_DIR itself when
    # it holds model.onnx directly (e.g. MODEL_DIR=models/iris_svc/v1 in development).
    model_dir: str = Field(default="/models", validation_alias="MODEL_DIR")
    # How long to wait for model.onnx to appear (answering /ready with 503 meanwhile)
    # before giving up with exit code 3. 0: the model must be there at start.
    model_wait_seconds: float = Field(default=0, ge=0, validation_alias="MODEL_WAIT_SECONDS")
    # The served model's name and version when neither the loader's manifest nor the
    # directory layout <name>/<version>/ says (then "model" and "1"). The loader reads
    # the same two names, and records them in its manifest.
    model_name: str | None = Field(default=None, min_length=1, validation_alias="MODEL_NAME")
    model_version: str | None = Field(default=None, min_length=1, validation_alias="MODEL_VERSION")

    # The labels of a version that carries none (no model-config.json labels, no
    # label.json): a label.json outside the model volume, as the seed kept it
    # (/workdir/config/label.json, baked into its image). Must exist when set.
    label_file: str | None = Field(default=None, min_length=1, validation_alias="LABEL_FILEPATH")

    host: str = Field(default="0.0.0.0", validation_alias="API_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="API_PORT")
    # Worker processes; "auto" (the default, None here): by the model and the container,
    # model_api.capacity.plan.
    workers: int | None = Field(default=None, ge=1, le=64, validation_alias="API_WORKERS")
    # Idle keep-alive connections are closed after this many seconds.
    keep_alive_seconds: int = Field(default=5, ge=1, validation_alias="API_KEEP_ALIVE_SECONDS")

    # The request line and headers: at most this many bytes and header lines, else 431
    # and closed (model_api.guard).
    max_head_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1 << 20, validation_alias="API_MAX_HEAD_BYTES"
    )
    max_headers: int = Field(default=100, ge=8, le=10_000, validation_alias="API_MAX_HEADERS")
    # Request headers must be complete this long after the connection opened (or after the
    # request's first byte on a keep-alive connection): else 408 and closed (slowloris).
    header_timeout_seconds: float = Field(
        default=10, gt=0, validation_alias="API_HEADER_TIMEOUT_SECONDS"
    )
    # The whole request body must have arrived this long after the headers: else 408.
    body_timeout_seconds: float = Field(
        default=30, gt=0, validation_alias="API_BODY_TIMEOUT_SECONDS"
    )
    # Open connections + running requests per worker; beyond it uvicorn answers 503
    # at once instead of queueing without bound. 0: no limit.
    limit_concurrency: int = Field(default=1024, ge=0, validation_alias="API_LIMIT_CONCURRENCY")
    # On SIGTERM: /ready answers 503 but the server keeps serving this long, then closes
    # its listener and finishes in-flight requests. 0: close at once (uvicorn's default).
    drain_seconds: float = Field(default=3, ge=0, validation_alias="API_DRAIN_SECONDS")

    # Rows per request; larger batches get 422 (400 on V2) instead of tying up a worker.
    # Also the most rows one model call stacks from several requests, unless the model's
    # config (model-config.json, batching.max_batch_size) says otherwise.
    max_batch_size: int = Field(default=1024, ge=1, validation_alias="MAX_BATCH_SIZE")
    # Request bodies larger than this get 413 before they are read whole. "auto" (None
    # here): 1 MiB, or room for one row of the model's inputs in JSON
    # (model_api.capacity.body_limit).
    max_body_bytes: int | None = Field(default=None, ge=1024, validation_alias="MAX_BODY_BYTES")
    # ONNX Runtime intra-op threads per worker; "auto" (None here): the CPUs divided by
    # the workers (model_api.capacity). A model's config may set its own.
    ort_threads: int | None = Field(
        default=None, ge=1, le=256, validation_alias="ORT_INTRA_OP_THREADS"
    )
    # Where inference runs: loop (on the event loop: no hand-off, for models of well under
    # a millisecond), thread (in a thread of its own, so the loop keeps serving while a
    # call runs), auto (by the model's warm-up: model_api.dataplane.runs_in_thread).
    inference_mode: str = Field(
        default="auto", pattern="^(auto|loop|thread)$", validation_alias="INFERENCE_MODE"
    )
    # In thread mode: calls that may run at once on the model's one session.
    inference_threads: int = Field(default=1, ge=1, le=64, validation_alias="INFERENCE_THREADS")

    # One line per request (model_api.access, INFO). Off: metrics still count every request;
    # at thousands of requests per second the lines cost ~a third of the request's time.
    access_log: bool = Field(default=True, validation_alias="API_ACCESS_LOG")
    # The hot operations' fast path: a whole, plain request to them in one read is served
    # by the guard without uvicorn's request cycle (model_api.guard). Off: all through it.
    fast_path: bool = Field(default=True, validation_alias="API_FAST_PATH")

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: str = Field(default="text", pattern="^(text|json)$", validation_alias="LOG_FORMAT")

    @field_validator("workers", "ort_threads", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto", "0"):
            return None
        return None if value == 0 else value

    @field_validator("label_file")
    @classmethod
    def _existing(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"{value}: no such file")
        return value

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _auto_bytes(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value
