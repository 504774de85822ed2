"""Request-scoped helpers shared by the routers: the model, the body, the inference call.

Plain functions: the hot routes call them directly; `async def` wrappers where used with
Depends, since FastAPI runs a plain `def` dependency in the threadpool (a thread hop).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from model_api.errors import (
    BadRequestError,
    InvalidInputError,
    NotReadyError,
    UnsupportedMediaError,
)
from model_api.model import OnnxModel


def loaded_model(request: Request) -> OnnxModel:
    model: OnnxModel | None = request.app.state.model
    if model is None:
        raise NotReadyError("the model is not loaded yet")
    return model


class DirectRoute(APIRoute):
    """For the hot endpoints: call `endpoint(request, **path_params)` directly, skipping
    FastAPI's dependency solving (it parses cookies, headers and the body for every
    request, which costs more than the inference). The endpoints read and check the body
    themselves; the decorator's arguments still describe the operation in OpenAPI."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handler


async def model_dependency(request: Request) -> OnnxModel:
    return loaded_model(request)


def json_body(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaError(
            f"Content-Type must be application/json, got {content_type or 'none'!r}"
        )


def no_content_encoding(request: Request) -> None:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
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


def float32_rows(data: Any, field: str) -> np.ndarray:
    """The model's input dtype. Finite doubles beyond float32's range would become
    infinities and a meaningless prediction: refuse them, naming the first one."""
    with np.errstate(over="ignore"):
        rows = np.asarray(data, dtype=np.float32)
    if not np.isfinite(rows).all():
        where = ".".join(str(int(i)) for i in np.argwhere(~np.isfinite(rows))[0])
        raise InvalidInputError(f"{field}.{where}: out of the model's float32 range (|x| < 3.4e38)")
    return rows


async def infer(request: Request, model: OnnxModel, rows: np.ndarray) -> np.ndarray:
    """Probabilities for `rows`, timed into the metrics; inline or in the threadpool."""
    state = request.app.state
    started = time.perf_counter()
    if state.inline_inference:
        probabilities = model.predict_proba(rows)
    else:
        probabilities = await run_in_threadpool(model.predict_proba, rows)
    state.metrics.inference.observe(time.perf_counter() - started)
    state.metrics.batch_size.observe(len(rows))
    return probabilities
