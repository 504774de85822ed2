"""API settings, read from the environment (the same names in compose.yaml and k8s)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def cpu_count(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota
    (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up — what a container limit allows."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus or 1, math.ceil(quota))
    return max(1, cpus or 1)


def _cgroup_quota(root: Path) -> float | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: quota -1 means unlimited
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Where the loader published the model: MODEL_DIR/current, or MODEL_DIR itself when
    # it holds model.onnx directly (e.g. MODEL_DIR=models/iris_svc/v1 in development).
    model_dir: str = Field(default="/models", validation_alias="MODEL_DIR")
    # How long to wait for model.onnx to appear (answering /ready with 503 meanwhile)
    # before giving up with exit code 3. 0: the model must be there at start.
    model_wait_seconds: float = Field(default=0, ge=0, validation_alias="MODEL_WAIT_SECONDS")

    host: str = Field(default="0.0.0.0", validation_alias="API_HOST")
    port: int = Field(default=8000, ge=1, le=65535, validation_alias="API_PORT")
    # Worker processes; "auto" (the default): the CPUs the container may use.
    workers: int = Field(default_factory=cpu_count, ge=1, le=64, validation_alias="API_WORKERS")
    # Idle keep-alive connections are closed after this many seconds.
    keep_alive_seconds: int = Field(default=5, ge=1, validation_alias="API_KEEP_ALIVE_SECONDS")

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
    max_batch_size: int = Field(default=1024, ge=1, validation_alias="MAX_BATCH_SIZE")
    # Request bodies larger than this get 413 before they are read whole.
    max_body_bytes: int = Field(default=1 << 20, ge=1024, validation_alias="MAX_BODY_BYTES")
    # ONNX Runtime threads per worker; 1 avoids oversubscribing small CPU limits.
    ort_threads: int = Field(default=1, ge=1, le=64, validation_alias="ORT_INTRA_OP_THREADS")
    # batch: on the event loop, the requests waiting in one loop turn share one inference
    # (model_api.batching); inline: on the event loop, one inference per request; threadpool:
    # in the threadpool (keeps the loop responsive for models that take milliseconds).
    inference_mode: str = Field(
        default="batch",
        pattern="^(batch|inline|threadpool)$",
        validation_alias="INFERENCE_MODE",
    )

    # One line per request (model_api.access, INFO). Off: metrics still count every request;
    # at thousands of requests per second the lines cost ~a third of the request's time.
    access_log: bool = Field(default=True, validation_alias="API_ACCESS_LOG")

    # The hot routes (POST /predict, V2 infer, ...) answered from the HTTP protocol without
    # an ASGI cycle (model_api.protocol): ~25% more requests per second for a small
    # model. false: every request goes through ASGI.
    direct_hot_path: bool = Field(default=True, validation_alias="API_DIRECT_HOT_PATH")

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: str = Field(default="text", pattern="^(text|json)$", validation_alias="LOG_FORMAT")

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return cpu_count()
        return value
