"""Tensor datatypes: the Open Inference Protocol's names, ONNX's, numpy's, and how a
tensor's values travel as JSON or as binary data (the protocol's binary extension).

JSON data is row-major, flat or nested. Binary data is the tensor's values in
little-endian byte order, one after the other; BOOL one byte each; BYTES each element
as a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class DataError(ValueError):
    """Values that do not fit a tensor's datatype or shape (the message says why)."""


@dataclass(frozen=True)
class DataType:
    name: str  # the protocol's: FP32, INT64, BYTES...
    onnx: str  # onnxruntime's NodeArg.type: tensor(float), tensor(int64), tensor(string)...
    dtype: np.dtype[Any]  # little-endian; object for BYTES
    kind: str  # "f" float, "i" signed, "u" unsigned, "b" bool, "S" bytes

    @property
    def itemsize(self) -> int:
        """Bytes per value in binary data (BYTES: variable)."""
        return 0 if self.kind == "S" else self.dtype.itemsize

    @property
    def json_width(self) -> int:
        """The most bytes one value takes in a request's JSON, with its separator ", "
        (0 for BYTES: a string is as long as the client makes it)."""
        if self.kind == "f":
            return len("-2.2250738585072014e-308, ")
        if self.kind in "iu":
            info = np.iinfo(self.dtype)
            return len(str(info.min if self.kind == "i" else info.max)) + 2
        return len("false, ") if self.kind == "b" else 0


def _numeric(name: str, onnx: str, dtype: str) -> DataType:
    d = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    return DataType(name, f"tensor({onnx})", d, d.kind)


DATATYPES: dict[str, DataType] = {
    t.name: t
    for t in (
        _numeric("BOOL", "bool", "bool"),
        _numeric("UINT8", "uint8", "uint8"),
        _numeric("UINT16", "uint16", "uint16"),
        _numeric("UINT32", "uint32", "uint32"),
        _numeric("UINT64", "uint64", "uint64"),
        _numeric("INT8", "int8", "int8"),
        _numeric("INT16", "int16", "int16"),
        _numeric("INT32", "int32", "int32"),
        _numeric("INT64", "int64", "int64"),
        _numeric("FP16", "float16", "float16"),
        _numeric("FP32", "float", "float32"),
        _numeric("FP64", "double", "float64"),
        DataType("BYTES", "tensor(string)", np.dtype(object), "S"),
    )
}
BY_ONNX: dict[str, DataType] = {t.onnx: t for t in DATATYPES.values()}
# numpy dtype -> DataType, for what onnxruntime returns (its strings come as objects).
BY_NUMPY: dict[np.dtype[Any], DataType] = {
    **{t.dtype.newbyteorder("="): t for t in DATATYPES.values() if t.kind != "S"},
    np.dtype(object): DATATYPES["BYTES"],
}
# ONNX tensor types a model may declare that cannot be served, and why.
UNSUPPORTED = {
    "tensor(bfloat16)": "BF16 has no numpy type that onnxruntime's Python API accepts",
}


def datatype_of(array: np.ndarray) -> DataType:
    found = BY_NUMPY.get(array.dtype)  # native byte order: the usual case
    if found is not None:
        return found
    if array.dtype.kind in "US":
        return DATATYPES["BYTES"]
    try:
        return BY_NUMPY[array.dtype.newbyteorder("=")]
    except KeyError:
        raise DataError(f"no protocol datatype for numpy {array.dtype}") from None


# -- JSON --------------------------------------------------------------------------------


def from_json(
    data: Sequence[Any], datatype: DataType, shape: Sequence[int], bools: bool = True
) -> np.ndarray:
    """A tensor of `shape` from its JSON data (flat or nested, row-major): every value
    must be of the datatype's kind (numbers for numeric types, integers for integer
    types, true/false for BOOL, strings for BYTES) and within its range. `bools=False`
    says the data holds no true/false (the JSON has none), so numbers need no look for
    them."""
    count = math.prod(shape)
    if datatype.kind == "f" and len(data) == count <= SMALL:
        values = _small_floats(data, datatype)
        if values is not None:
            return values.reshape(shape)
    if datatype.kind == "S":
        values = _strings(data)
    else:
        try:
            values = np.asarray(data)
        except (ValueError, OverflowError):  # ragged nesting; an int beyond 64 bits
            raise DataError(
                "nested lists of different lengths, or an integer out of range"
            ) from None
        if (
            bools
            and datatype.kind != "b"
            and values.dtype.kind in "iuf"
            and _has_bool(data, values.ndim)
        ):
            raise DataError(f"{datatype.name} values must be numbers, got true/false")
        if datatype.kind in "iu" and values.dtype.kind in "fO":
            exact = _exact_integers(data, datatype)
            values = values if exact is None else exact
        elif datatype.kind == "f" and values.dtype.kind == "O":
            values = _wide_integers(values)
        values = _cast_numbers(values, datatype)
    if values.size != count:
        raise DataError(f"{values.size} values do not fill shape {list(shape)} ({count} values)")
    if values.ndim > 1 and list(values.shape) != list(shape):
        raise DataError(f"nested as {list(values.shape)}, but the shape is {list(shape)}")
    return values.reshape(shape)


def _small_floats(data: Sequence[Any], datatype: DataType) -> np.ndarray | None:
    """A few flat numbers for a float tensor, checked in one pass (the usual small
    request); None for anything else, which the general path reads or refuses."""
    limit = _FLOAT_MAX[datatype.name]
    for v in data:
        kind = type(v)
        if (kind is not float and kind is not int) or not -limit <= v <= limit:  # NaN fails
            return None
    return np.array(data, dtype=datatype.dtype)


def _has_bool(data: Sequence[Any], depth: int) -> bool:
    """Whether true/false hides among numbers (numpy reads them as 1 and 0)."""
    flat: Any = data
    for _ in range(depth - 1):
        flat = itertools.chain.from_iterable(flat)
    return bool in map(type, flat)


def _exact_integers(data: Sequence[Any], datatype: DataType) -> np.ndarray | None:
    """Integers numpy does not read as one integer type (one beyond int64 among others
    becomes a float, or an object): exactly, if they are all integers, else None."""
    try:
        exact = np.array(data, dtype=object)
    except ValueError:
        return None
    if not all(type(v) is int for v in exact.flat):
        return None
    info = np.iinfo(datatype.dtype)
    if any(v < info.min or v > info.max for v in exact.flat):
        raise DataError(f"a value is out of the range of {datatype.name} ({info.min}..{info.max})")
    return exact.astype(datatype.dtype)


def _wide_integers(values: np.ndarray) -> np.ndarray:
    """Numbers numpy keeps as objects (an integer beyond 64 bits among them) as floats,
    for a float tensor; anything else unchanged (refused below as not numbers)."""
    flat = values.ravel().tolist()
    if not all(type(v) is int or type(v) is float for v in flat):
        return values
    try:
        return np.array(flat, dtype=np.float64).reshape(values.shape)
    except OverflowError:  # beyond any float: refused below as not finite
        return np.full(values.shape, np.inf)


# Tensors of at most this many values are checked value by value in Python.
SMALL = 64
_FLOAT_MAX = {name: float(np.finfo(DATATYPES[name].dtype).max) for name in ("FP16", "FP32", "FP64")}


def _not_finite(datatype: DataType, limit: float) -> str:
    return f"{datatype.name} values must be finite numbers within |x| <= {limit:.4g}"


def _cast_numbers(values: np.ndarray, datatype: DataType) -> np.ndarray:
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(datatype.dtype)
    if datatype.kind == "b":
        if kind != "b":
            raise DataError("BOOL values must be true or false")
        return values
    if kind == "b":
        raise DataError(f"{datatype.name} values must be numbers, got true/false")
    if kind not in "iuf":
        raise DataError(f"{datatype.name} values must be numbers")
    if datatype.kind == "f":
        limit = _FLOAT_MAX[datatype.name]
        if values.size <= SMALL:  # numpy's per-call cost is most of it: check in Python
            if not all(-limit <= v <= limit for v in values.ravel().tolist()):  # NaN fails
                raise DataError(_not_finite(datatype, limit))
            return values.astype(datatype.dtype)
        # NaN (min and max carry it: both comparisons fail), infinity, or beyond the
        # type's range (integers too: FP16 ends at 65504).
        if not (-limit <= values.min() and values.max() <= limit):
            raise DataError(_not_finite(datatype, limit))
        return values.astype(datatype.dtype)
    if kind == "f":
        raise DataError(f"{datatype.name} values must be integers")
    if values.dtype != datatype.dtype:  # numpy read int64 (or uint64): check the range
        info = np.iinfo(datatype.dtype)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise DataError(
                f"a value is out of the range of {datatype.name} ({info.min}..{info.max})"
            )
    return values.astype(datatype.dtype, copy=False)


def _strings(data: Sequence[Any]) -> np.ndarray:
    try:
        values = np.array(data, dtype=object)
        flat = values.reshape(-1)
    except (ValueError, RuntimeError):  # numpy: ragged, or nested more than 32 deep
        flat = np.array([None])
    if not all(type(v) is str for v in flat):
        raise DataError("BYTES values must be strings (in lists nested evenly)")
    try:
        "".join(flat).encode()
    except UnicodeEncodeError:  # JSON may escape a lone surrogate, which is no text
        raise DataError("BYTES values must be text: a string holds a lone surrogate") from None
    return values


def to_json(array: np.ndarray) -> list[Any]:
    """The tensor's values, flat (row-major), as JSON-ready Python values."""
    flat = array if array.ndim == 1 else array.reshape(-1)
    if array.dtype.kind in "OSU":
        return [_text(v) for v in flat.tolist()]
    return flat.tolist()  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# -- binary ------------------------------------------------------------------------------


def from_binary(raw: bytes | memoryview, datatype: DataType, shape: Sequence[int]) -> np.ndarray:
    """A tensor of `shape` from its binary data, which must be exactly that many values."""
    count = math.prod(shape)
    if datatype.kind == "S":
        return _bytes_elements(raw, count).reshape(shape)
    expected = count * datatype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{len(raw)} bytes of binary data, but shape {list(shape)} of {datatype.name} "
            f"takes {expected} ({datatype.itemsize} per value)"
        )
    if datatype.kind == "b" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise DataError("BOOL binary data must be bytes 0 or 1")
    return np.frombuffer(raw, dtype=datatype.dtype).reshape(shape)


def _bytes_elements(raw: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(raw)
    if 4 * count > len(view):  # before making room for them: a shape costs nothing to send
        raise DataError(
            f"{len(view)} bytes of BYTES binary data cannot hold {count} elements (4 bytes "
            "of length each, at least)"
        )
    values = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise DataError(f"BYTES binary data ends after {i} of {count} elements")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise DataError(f"BYTES element {i} claims {length} bytes; the data ends sooner")
        values[i] = _utf8(bytes(view[offset : offset + length]), i)
        offset += length
    if offset != len(view):
        raise DataError(f"{len(view) - offset} bytes left after {count} BYTES elements")
    return values


def _utf8(value: bytes, index: int) -> str:
    # onnxruntime's string tensors hold text: an element that is not UTF-8 cannot reach it.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"BYTES element {index} is not UTF-8 text") from None


def to_binary(array: np.ndarray) -> bytes:
    """The tensor's values as binary data (little-endian; BYTES length-prefixed)."""
    if array.dtype.kind in "OSU":
        parts = []
        for value in array.reshape(-1).tolist():
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(struct.pack("<I", len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()
