"""Request-scoped helpers shared by the routers: the model, the body, the inference call.

Plain functions: the hot routes call them directly; `async def` wrappers where used with
Depends, since FastAPI runs a plain `def` dependency in the threadpool (a thread hop).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from model_api.errors import (
    ApiError,
    BadRequestError,
    NotReadyError,
    UnsupportedMediaError,
    describe_errors,
)
from model_api.model import OnnxModel


def loaded_model(state: Any) -> OnnxModel:
    """The served model, from the app's state; 503 until it is loaded."""
    model: OnnxModel | None = state.model
    if model is None:
        raise NotReadyError("the model is not loaded yet")
    return model


async def model_dependency(request: Request) -> OnnxModel:
    return loaded_model(request.app.state)


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


def parse_json(body: bytes, example: str) -> Any:
    """orjson on the hot path; the standard library only to explain a failure, or for the
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


def infer(state: Any, model: OnnxModel, rows: np.ndarray) -> Awaitable[np.ndarray]:
    """Probabilities for `rows`, by INFERENCE_MODE, timed into the metrics. In batch mode
    the batcher's future itself (the batcher records the metrics): one coroutine fewer
    to create and resume per request."""
    if state.batcher is not None:
        return state.batcher.infer(model, rows)
    return _infer_alone(state, model, rows)


async def _infer_alone(state: Any, model: OnnxModel, rows: np.ndarray) -> np.ndarray:
    started = time.perf_counter()
    if state.inference_mode == "inline":
        probabilities = model.predict_proba(rows)
    else:
        probabilities = await run_in_threadpool(model.predict_proba, rows)
    seconds = time.perf_counter() - started
    state.metrics.record_call(len(rows))
    state.metrics.record_inference(seconds, len(rows))
    return probabilities
