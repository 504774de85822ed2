"""API settings, read from the environment (the same names in compose.yaml and k8s)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where the loader published the model: MODEL_DIR/current, or MODEL_DIR itself when
    # it holds model.onnx directly (e.g. MODEL_DIR=models/iris_svc/v1 in development).
    model_dir: str = Field(default="/models", validation_alias="MODEL_DIR")

    host: str = Field(default="0.0.0.0", validation_alias="API_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="API_PORT")
    workers: int = Field(default=1, ge=1, le=64, validation_alias="API_WORKERS")
    # Idle keep-alive connections are closed after this many seconds.
    keep_alive_seconds: int = Field(default=5, ge=1, validation_alias="API_KEEP_ALIVE_SECONDS")

    # Rows per request; larger batches get 422 instead of tying up a worker.
    max_batch_size: int = Field(default=1024, ge=1, validation_alias="MAX_BATCH_SIZE")
    # ONNX Runtime threads per worker; 1 avoids oversubscribing small CPU limits.
    ort_threads: int = Field(default=1, ge=1, le=64, validation_alias="ORT_INTRA_OP_THREADS")

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: str = Field(default="text", pattern="^(text|json)$", validation_alias="LOG_FORMAT")
