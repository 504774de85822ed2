"""Loader settings, read from the environment (the same names in compose.yaml and k8s)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
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

    # Files the version must contain, or nothing is published (the API needs both).
    require_files: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("model.onnx", "label.json"), validation_alias="LOADER_REQUIRE_FILES"
    )
    # How long to keep retrying while storage is unreachable (an emulator starting up).
    wait_seconds: float = Field(default=60.0, gt=0, validation_alias="LOADER_WAIT_SECONDS")
    # Overall deadline for the whole run.
    timeout_seconds: float = Field(default=600.0, gt=0, validation_alias="LOADER_TIMEOUT_SECONDS")
    # Per-request (connect, read) timeout towards storage.
    request_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias="LOADER_REQUEST_TIMEOUT_SECONDS"
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

    @field_validator("model_uri")
    @classmethod
    def _has_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if not parts.scheme or not (parts.netloc or parts.path):
            raise ValueError(f"{value!r} is not a URI like gs://bucket/prefix/ or file:///dir/")
        return value
