"""Content-Type and Content-Encoding checks shared by the routes."""

from __future__ import annotations

from model_api.errors import UnsupportedMediaError


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def json_body(content_type: str) -> None:
    kind = media_type(content_type)
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )


def no_content_encoding(content_encoding: str) -> None:
    encoding = content_encoding.strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaError(f"Content-Encoding {encoding!r} is not supported")
