"""Request-scoped lookups shared by the routers."""

from __future__ import annotations

from fastapi import Request

from model_api.errors import NotReadyError, UnsupportedMediaError
from model_api.model import OnnxModel


def loaded_model(request: Request) -> OnnxModel:
    model: OnnxModel | None = request.app.state.model
    if model is None:
        raise NotReadyError("the model is not loaded yet")
    return model


def json_body(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )
