"""The Open Inference Protocol's (V2) inference requests and responses, in JSON and with
the binary tensor data extension, to and from numpy arrays checked against the model's
signature. No HTTP here: the REST routes hand over the body and the one header the
extension uses (Inference-Header-Content-Length), and send what comes back.

A request is refused (`BadRequestError`, naming the field) when an input is unknown,
missing, given twice, of another datatype, of a shape the model does not take, or its
data does not fill its shape; when inputs disagree on the batch size, or a batch is over
MAX_BATCH_SIZE rows; when an output it asks for is not one of the model's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

from model_api.datatypes import (
    DATATYPES,
    DataError,
    datatype_of,
    from_binary,
    from_json,
    to_binary,
    to_json,
)
from model_api.errors import BadRequestError
from model_api.parsing import parse_body
from model_api.schemas import V2InferRequest, V2RequestInput, V2RequestOutput
from model_api.signature import Signature

V2_EXAMPLE = '{"inputs": [{"name": ..., "shape": ..., "datatype": ..., "data": ...}]}'
BINARY = b"application/octet-stream"


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool
    # Triton's classification extension: the top `classes` of each row, as BYTES
    # "value:index:label" (no label part if the model has no labels for them). 0: off.
    classes: int = 0


@dataclass(slots=True)
class InferenceRequest:
    inputs: dict[str, np.ndarray]
    outputs: Sequence[RequestedOutput]
    id: str | None = None
    rows: int | None = None  # the batch size, for a batchable model

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)


def split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary data) of a body, by Inference-Header-Content-Length."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 1 <= n <= len(body):
        raise BadRequestError(
            f"Inference-Header-Content-Length {header_length!r} must be an integer "
            f"between 1 and the body's {len(body)} bytes: the length of its JSON header"
        )
    return body[:n], body[n:]


class Tensor(NamedTuple):
    """An input tensor as the request gives it (the fields of V2RequestInput)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None
    data: list[Any] | None


class Output(NamedTuple):
    """A requested output as the request gives it (the fields of V2RequestOutput)."""

    name: str
    parameters: dict[str, Any] | None


class Header(NamedTuple):
    """The JSON header of an inference request (the fields of V2InferRequest)."""

    id: str | None
    parameters: dict[str, Any] | None
    inputs: Sequence[Tensor | V2RequestInput]
    outputs: Sequence[Output | V2RequestOutput] | None


def decode(
    body: bytes, header_length: str | None, signature: Signature, max_rows: int | None
) -> InferenceRequest:
    """A V2 request, checked against the signature; `max_rows`: the most rows a request
    may hold, or None if the model's first dimension is no batch of rows (it does not
    stack requests: OnnxModel.batches)."""
    header, binary = split(body, header_length)
    request = _header(header)
    # No true/false anywhere in the JSON: no bool can hide among numbers (saves a look
    # at every value of a large tensor).
    literals = b"true" in header or b"false" in header
    inputs = decode_inputs(request.inputs, binary, signature, literals)
    default_binary = (request.parameters or {}).get("binary_data_output") is True
    return InferenceRequest(
        inputs=inputs,
        outputs=_outputs(request.outputs, signature, default_binary),
        id=request.id,
        rows=None if max_rows is None else _rows(inputs, max_rows),
    )


def _header(header: bytes) -> Header:
    """The request's JSON header: read with orjson and checked field by field in the
    usual case; anything unusual goes to the schema (V2InferRequest), which accepts what
    it may and words the error otherwise."""
    try:
        raw = orjson.loads(header)
        tensors = [_tensor(t) for t in raw["inputs"]]
        outputs = raw.get("outputs")
        wanted = None if outputs is None else [_output(o) for o in outputs]
        id_ = raw.get("id")
        parameters = raw.get("parameters")
        if tensors and (id_ is None or type(id_) is str) and _optional_dict(parameters):
            return Header(id_, parameters, tensors, wanted)
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError):
        pass
    request = parse_body(V2InferRequest, header, V2_EXAMPLE, BadRequestError)
    return Header(request.id, request.parameters, request.inputs, request.outputs)


def _tensor(raw: dict[str, Any]) -> Tensor:
    name, shape, datatype = raw["name"], raw["shape"], raw["datatype"]
    parameters, data = raw.get("parameters"), raw.get("data")
    if (
        type(name) is str
        and type(datatype) is str
        and type(shape) is list
        and all(type(d) is int and d >= 0 for d in shape)
        and _optional_dict(parameters)
        and (data is None or type(data) is list)
    ):
        return Tensor(name, shape, datatype, parameters, data)
    raise ValueError  # the schema explains it


def _output(raw: dict[str, Any]) -> Output:
    name, parameters = raw["name"], raw.get("parameters")
    if type(name) is str and _optional_dict(parameters):
        return Output(name, parameters)
    raise ValueError


def _optional_dict(value: Any) -> bool:
    return value is None or (type(value) is dict and all(type(k) is str for k in value))


def decode_inputs(
    tensors: Sequence[Tensor | V2RequestInput],
    binary: bytes,
    signature: Signature,
    bools: bool = True,
) -> dict[str, np.ndarray]:
    """The request's tensors as arrays, each checked against the model's input
    (`bools`: whether JSON data may hold true/false)."""
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        spec = signature.input(tensor.name)
        if spec is None:
            names = [t.name for t in signature.inputs]
            raise BadRequestError(
                f"inputs.{i}.name: unknown input {tensor.name!r}; the model takes {names}"
            )
        where = f"inputs.{i} ({tensor.name!r})"
        if tensor.name in inputs:
            raise BadRequestError(f"{where}: given twice")
        if tensor.datatype != spec.datatype.name:
            known = "" if tensor.datatype in DATATYPES else " (not a protocol datatype)"
            raise BadRequestError(
                f"{where}.datatype: the model takes {spec.datatype.name}, "
                f"got {tensor.datatype!r}{known}"
            )
        problem = spec.shape_problem(tensor.shape)
        if problem is not None:
            raise BadRequestError(f"{where}.shape: {problem}")
        try:
            if tensor.data is not None:
                if tensor.parameters and "binary_data_size" in tensor.parameters:
                    raise BadRequestError(f"{where}: data or parameters.binary_data_size, not both")
                inputs[tensor.name] = from_json(tensor.data, spec.datatype, tensor.shape, bools)
                continue
            size = (tensor.parameters or {}).get("binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequestError(f"{where}: needs data, or parameters.binary_data_size")
            if offset + size > len(binary):
                raise BadRequestError(
                    f"{where}.parameters.binary_data_size: {size} bytes, but only "
                    f"{len(binary) - offset} are left after the JSON header"
                )
            raw = binary[offset : offset + size]
            offset += size
            inputs[tensor.name] = from_binary(raw, spec.datatype, tensor.shape)
        except DataError as exc:
            raise BadRequestError(f"{where}.data: {exc}") from None
    if len(inputs) != len(signature.inputs):  # each one known, none twice: some missing
        missing = [t.describe() for t in signature.inputs if t.name not in inputs]
        raise BadRequestError(f"inputs: missing {', '.join(missing)}")
    if offset != len(binary):
        raise BadRequestError(
            f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size"
        )
    if signature.shares_dims:
        problem = signature.dims_problem({name: array.shape for name, array in inputs.items()})
        if problem is not None:
            raise BadRequestError(f"inputs: {problem}")
    return inputs


def _rows(inputs: dict[str, np.ndarray], limit: int) -> int:
    arrays = iter(inputs.values())
    rows = next(arrays).shape[0]
    if any(array.shape[0] != rows for array in arrays):
        sizes = {name: array.shape[0] for name, array in inputs.items()}
        raise BadRequestError(f"inputs: the first dimension is the batch, and it differs: {sizes}")
    if rows < 1:
        raise BadRequestError("inputs: the batch (first dimension) must have at least 1 row")
    if rows > limit:
        raise BadRequestError(f"inputs: {rows} rows exceed MAX_BATCH_SIZE={limit}")
    return rows


def _outputs(
    requested: Sequence[Output | V2RequestOutput] | None,
    signature: Signature,
    default_binary: bool,
) -> Sequence[RequestedOutput]:
    if not requested:
        return _every_output(signature.output_names, default_binary)
    wanted = []
    for i, out in enumerate(requested):
        spec = signature.output(out.name)
        if spec is None:
            names = [t.name for t in signature.outputs]
            raise BadRequestError(
                f"outputs.{i}.name: unknown output {out.name!r}; the model has {names}"
            )
        parameters = out.parameters or {}
        binary = parameters.get("binary_data", default_binary) is True
        classes = parameters.get("classification", 0)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise BadRequestError(
                f"outputs.{i}.parameters.classification: must be a positive integer, "
                f"got {classes!r}"
            )
        # A batch's one value per row ([N]) is no row of scores either.
        if classes and (
            spec.datatype.kind not in "fiu" or len(spec.shape) < 1 + signature.batchable
        ):
            raise BadRequestError(
                f"outputs.{i}.parameters.classification: {spec.describe()} holds no class scores"
            )
        wanted.append(RequestedOutput(out.name, binary, classes))
    return wanted


@functools.cache
def _every_output(names: tuple[str, ...], binary: bool) -> tuple[RequestedOutput, ...]:
    """What a request that names no outputs gets: all of them."""
    return tuple(RequestedOutput(name, binary) for name in names)


def encode(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Sequence[RequestedOutput],
    arrays: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
) -> tuple[bytes, bytes | None]:
    """(body, Inference-Header-Content-Length or None if all JSON) of a response."""
    tensors: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for wanted, array in zip(outputs, arrays, strict=True):
        if wanted.classes:
            array = classify(array, wanted.classes, labels)
        tensor: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatype_of(array).name,
            "shape": list(array.shape),
        }
        if wanted.binary:
            buffers.append(to_binary(array))
            tensor["parameters"] = {"binary_data_size": len(buffers[-1])}
        else:
            tensor["data"] = to_json(array)
        tensors.append(tensor)
    head = orjson.dumps(
        {
            "model_name": model_name,
            "model_version": model_version,
            "id": request_id,
            "outputs": tensors,
        }
    )
    if not buffers:
        return head, None
    return b"".join([head, *buffers]), b"%d" % len(head)


def classify(scores: np.ndarray, k: int, labels: Sequence[str] | None) -> np.ndarray:
    """The top k classes of each row (of the last dimension), best first, as
    "value:index:label" strings; without the label part unless there is one per class."""
    classes = scores.shape[-1]
    k = min(k, classes)
    named = labels is not None and len(labels) == classes
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(scores, order, axis=-1)
    texts = [
        f"{float(value)}:{index}:{labels[index]}" if named else f"{float(value)}:{index}"  # type: ignore[index]
        for value, index in zip(top.reshape(-1).tolist(), order.reshape(-1).tolist(), strict=True)
    ]
    result = np.empty(len(texts), dtype=object)
    result[:] = texts
    return result.reshape(top.shape)
