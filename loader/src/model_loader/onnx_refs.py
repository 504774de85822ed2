"""The files an ONNX model keeps its weights in, read from `model.onnx` itself.

A model saved with external data (every model over protobuf's 2 GB, and many smaller
ones) holds only its graph in `model.onnx`; each large tensor names the file its bytes
are in (`TensorProto.external_data`, key "location"), relative to `model.onnx`. A
version without those files cannot be loaded: the loader refuses to publish it, rather
than leave the API to fail on it.

The loader carries no ONNX library: this walks the protobuf wire format over the few
messages that can hold tensors (onnx.proto3: ModelProto, GraphProto, NodeProto,
AttributeProto, FunctionProto, SparseTensorProto, TensorProto), skipping every other
field by its length. It reads a memory map, so a 2 GB model costs no 2 GB of memory,
and only the fields it descends into, not the bytes of the tensors.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

# Field numbers of onnx.proto3 that lead to tensors, per message, and the message each holds.
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "graph", 11: "tensor", 22: "sparse", 23: "sparse"}
_FUNCTION = {7: "node"}
_SPARSE = {1: "tensor", 2: "tensor"}
_MESSAGES = {
    "graph": _GRAPH,
    "node": _NODE,
    "attribute": _ATTRIBUTE,
    "function": _FUNCTION,
    "sparse": _SPARSE,
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto {key = 1, value = 2}
_LENGTH_DELIMITED = 2
# Subgraphs nest (an If inside a Loop's body...): deeper than this is no real model.
_MAX_DEPTH = 64


class NotOnnx(ValueError):
    """The bytes are not a protobuf the walk can follow."""


def external_files(path: Path) -> set[str]:
    """The files `path` (a model.onnx) names for its tensors' bytes, as written (relative
    to its directory). Raises NotOnnx if the file is not a readable protobuf."""
    found: set[str] = set()
    problem = None
    with open(path, "rb") as fh:
        if path.stat().st_size == 0:
            return found
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                _walk(memoryview(data), _MODEL, found, 0)
            except NotOnnx as exc:  # raised below: its traceback holds views of the map
                problem = str(exc)
    if problem is not None:
        raise NotOnnx(problem)
    return found


def _walk(data: memoryview, fields: dict[int, str], found: set[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise NotOnnx("nested too deep")
    for number, value in _fields(data):
        kind = fields.get(number)
        if kind is None or not isinstance(value, memoryview):
            continue
        if kind == "tensor":
            _tensor(value, found)
        else:
            _walk(value, _MESSAGES[kind], found, depth + 1)


def _tensor(data: memoryview, found: set[str]) -> None:
    for number, value in _fields(data):
        if number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = {n: bytes(v) for n, v in _fields(value) if isinstance(v, memoryview)}
            if entry.get(1) == b"location" and 2 in entry:
                try:
                    found.add(entry[2].decode())
                except UnicodeDecodeError as exc:
                    raise NotOnnx("a location that is not UTF-8") from exc


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """(field number, value) of one message, in order: the bytes of a length-delimited
    field, the integer of a varint, 0 for a fixed-size one."""
    at, end = 0, len(data)
    while at < end:
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == _LENGTH_DELIMITED:
            size, at = _varint(data, at)
            if at + size > end:
                raise NotOnnx("a field runs past its message")
            yield number, data[at : at + size]
            at += size
        elif wire in (1, 5):  # 64- and 32-bit
            at += 8 if wire == 1 else 4
            yield number, 0
        else:
            raise NotOnnx(f"wire type {wire}")
    if at != end:
        raise NotOnnx("a field runs past its message")


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise NotOnnx("a truncated number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
