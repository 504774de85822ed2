"""Loader settings, read from the environment (the same names in compose.yaml and k8s)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class LoaderSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # What to load: a prefix (gs://bucket/name/version/) or a single object.
    model_uri: str = Field(validation_alias="MODEL_URI")
    # Where to publish it: MODEL_DIR/current -> MODEL_DIR/versions/<id>/.
    model_dir: str = Field(default="/models", validation_alias="MODEL_DIR")
    # Recorded in the manifest; derived from the URI's last two segments when unset.
    model_name: str | None = Field(default=None, validation_alias="MODEL_NAME")
    model_version: str | None = Field(default=None, validation_alias="MODEL_VERSION")

    # Files the version must contain, or nothing is published (the API needs only the
    # model; labels, config and sample are optional).
    require_files: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("model.onnx",), validation_alias="LOADER_REQUIRE_FILES"
    )
    # How long to keep retrying while storage is unreachable (an emulator starting up).
    wait_seconds: float = Field(default=60.0, gt=0, validation_alias="LOADER_WAIT_SECONDS")
    # Overall deadline for the whole run.
    timeout_seconds: float = Field(default=600.0, gt=0, validation_alias="LOADER_TIMEOUT_SECONDS")
    # Read timeout of one storage request: no byte for this long is a stall, and the
    # range is retried from where it stopped.
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias="LOADER_REQUEST_TIMEOUT_SECONDS"
    )
    # Attempts per range (or request) on connection errors, stalls and 408/429/5xx.
    retries: int = Field(default=5, ge=1, le=100, validation_alias="LOADER_RETRIES")
    # Range requests in flight at once, over all objects (objects download in parallel).
    concurrency: int = Field(default=8, ge=1, le=64, validation_alias="LOADER_CONCURRENCY")
    # Objects larger than this are fetched as concurrent ranges of this size.
    slice_mib: int = Field(default=32, ge=1, le=1024, validation_alias="LOADER_SLICE_MIB")
    # One progress line every this many seconds while downloading.
    progress_seconds: float = Field(default=5.0, gt=0, validation_alias="LOADER_PROGRESS_SECONDS")
    # Optional pin: the sha256 (hex) that model.onnx must have, or nothing is published.
    model_sha256: str | None = Field(
        default=None, pattern="^[0-9a-fA-F]{64}$", validation_alias="MODEL_SHA256"
    )
    # A public key (PEM, ECDSA): the version must carry model.sig, an OpenSSF
    # model-signing signature made with its private key, covering exactly its files.
    verify_key: str | None = Field(default=None, validation_alias="MODEL_VERIFY_KEY")
    # true: refuse to run without MODEL_VERIFY_KEY, so that no model loads unverified.
    signature_required: bool = Field(default=False, validation_alias="MODEL_SIGNATURE_REQUIRED")
    # Kubernetes shows this file's content as the container's termination message.
    termination_log: str = Field(
        default="/dev/termination-log", validation_alias="LOADER_TERMINATION_LOG"
    )
    # gs:// only: use no credentials at all (public buckets).
    gcs_anonymous: bool = Field(default=False, validation_alias="LOADER_GCS_ANONYMOUS")
    gcs_project: str | None = Field(default=None, validation_alias="GOOGLE_CLOUD_PROJECT")

    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    log_format: str = Field(default="text", pattern="^(text|json)$", validation_alias="LOG_FORMAT")

    @field_validator("require_files", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("model_sha256", "verify_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _required_needs_a_key(self) -> LoaderSettings:
        if self.signature_required and self.verify_key is None:
            raise ValueError(
                "MODEL_SIGNATURE_REQUIRED=true needs MODEL_VERIFY_KEY (the signer's public key)"
            )
        return self

    @field_validator("model_uri")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if not parts.scheme or not (parts.netloc or parts.path):
            raise ValueError(f"{value!r} is not a URI like gs://bucket/prefix/ or file:///dir/")
        return value
