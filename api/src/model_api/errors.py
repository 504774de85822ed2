"""The API's exceptions, and the one handler that turns them into JSON errors.

    ModelError                     the model cannot be served (startup: exit 3)
    ├── ModelMissingError          no model.onnx
    ├── ModelInvalidError          unreadable, corrupt, refused by ONNX Runtime, a bad
    │                              model-config.json, a failing warm-up
    └── ModelTooLargeError         will not fit in the container's memory limit
    ApiError (500)                 raised by routes; rendered as {"error": "..."}
    ├── BadRequestError (400)      malformed JSON; any bad input on the V2 protocol;
    │                              an input the model itself refused (ONNX Runtime)
    ├── NotFoundError (404)        no such model / version, no sample, no labels, a seed
    │                              route the model's signature does not fit
    ├── PayloadTooLargeError (413) body over MAX_BODY_BYTES
    ├── UnsupportedMediaError (415)
    ├── InvalidInputError (422)    well-formed JSON the model cannot take (seed routes)
    └── NotReadyError (503)        the model is not loaded (yet)

FastAPI's RequestValidationError and pydantic's ValidationError are translated to
InvalidInputError / BadRequestError with the offending field named, so no client input
produces a 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from starlette.exceptions import HTTPException

from model_api.schemas import FLOAT32_MAX


class ModelError(Exception):
    """The model directory cannot be served. Not an HTTP error: the process exits."""


class ModelMissingError(ModelError):
    pass


class ModelInvalidError(ModelError):
    pass


class ModelTooLargeError(ModelError):
    pass


class ApiError(Exception):
    status_code = 500
    # The request's body was not read to the end: the connection cannot be reused.
    close_connection = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ApiError):
    status_code = 400


class NotFoundError(ApiError):
    status_code = 404


class RequestTimeoutError(ApiError):
    status_code = 408
    close_connection = True


class PayloadTooLargeError(ApiError):
    status_code = 413
    close_connection = True  # the rest of the body is not read


class UnsupportedMediaError(ApiError):
    status_code = 415


class InvalidInputError(ApiError):
    status_code = 422


class NotReadyError(ApiError):
    status_code = 503


def translate_inference_error(exc: Exception) -> ApiError:
    """An error onnxruntime raised while running a request that passed every check of
    the signature: an argument it refused (an index out of range, a value the graph
    cannot take) is the request's fault (400); anything else is ours (500)."""
    if isinstance(exc, ApiError):
        return exc
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ort_errors.InvalidArgument):
        return BadRequestError(f"the model refused the input: {message}")
    return ApiError(f"inference failed: {message}")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type")
    value = error.get("input")
    huge_int = isinstance(value, int) and not isinstance(value, bool)
    if kind in ("float_type", "finite_number") and huge_int:
        return "must be a finite number, got an integer too large for a float"
    if kind == "float_type":
        return f"must be a number, got {type(value).__name__}"
    if kind == "finite_number":
        return f"must be a finite number, got {value}"
    context = error.get("ctx") or {}
    bound = context.get("le", context.get("ge"))
    if kind in ("less_than_equal", "greater_than_equal") and abs(bound or 0) == FLOAT32_MAX:
        return f"out of the model's float32 range (|x| <= 3.4e38), got {value}"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def describe_errors(errors: Sequence[Any]) -> str:
    """pydantic errors as one line: `field: problem; field: problem` (the first five)."""
    problems = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {_message(e)}" for e in errors[:5])
    if len(errors) > 5:
        problems += f"; and {len(errors) - 5} more"
    return problems


def translate_validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            return BadRequestError(f"malformed JSON: {detail}")
    if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errors):
        return BadRequestError(
            'empty request body; send JSON like {"data": [[5.1, 3.5, 1.4, 0.2]]}'
        )
    return InvalidInputError(describe_errors(errors))


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"connection": "close"} if exc.close_connection else None
    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _api_error(request, translate_validation_error(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """The router's own answers (404 unknown path, 405 with Allow) in the same form as
    every other error: tritonclient reads "error"."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
