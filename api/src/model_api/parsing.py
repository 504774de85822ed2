"""JSON request bodies into schemas: fast for a good body, precise about a bad one."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from model_api.errors import ApiError, BadRequestError, describe_errors


def parse_json(body: bytes, example: str) -> Any:
    """orjson first; the standard library only to explain a failure, or for the
    NaN/Infinity literals it accepts (validation then refuses them with a field name)."""
    if not body.strip():
        raise BadRequestError(f"empty request body; send JSON like {example}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise BadRequestError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BadRequestError(f"malformed JSON: {exc}") from None


Body = TypeVar("Body", bound=BaseModel)


def parse_body(schema: type[Body], body: bytes, example: str, error: type[ApiError]) -> Body:
    """The body as `schema`, in one pydantic-core pass over the bytes. Only a body that
    fails it takes the slower way, to be explained in the words of the standard parsers
    (malformed JSON, its literals) and of the schema (the field at fault), as `error`."""
    try:
        return schema.model_validate_json(body)
    except ValidationError:
        pass
    payload = parse_json(body, example)
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise error(describe_errors(exc.errors())) from None
