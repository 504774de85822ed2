"""model_api.datatypes: every protocol datatype, as JSON and as binary data, both ways."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from model_api.datatypes import (
    BY_ONNX,
    DATATYPES,
    DataError,
    datatype_of,
    from_binary,
    from_json,
    to_binary,
    to_json,
)

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True, False, False],
    "UINT8": [0, 1, 2, 127, 200, 255],
    "UINT16": [0, 1, 2, 300, 40000, 65535],
    "UINT32": [0, 1, 2, 70000, 3_000_000_000, 4_294_967_295],
    "UINT64": [0, 1, 2, 2**40, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 2, 127],
    "INT16": [-32768, -1, 0, 1, 300, 32767],
    "INT32": [-(2**31), -1, 0, 1, 70000, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 1, 2**40, 2**63 - 1],
    "FP16": [-65504.0, -1.5, 0.0, 0.5, 1.0, 65504.0],
    "FP32": [-3.4e38, -1.25, 0.0, 0.1, 5.1, 3.4e38],
    "FP64": [-1e308, -1.25, 0.0, 0.1, 5.1, 1e308],
    "BYTES": ["", "a", "héllo", "x" * 300, "0", "日本"],
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_json_and_binary_round_trip_every_datatype(name: str) -> None:
    datatype = DATATYPES[name]
    values = from_json(SAMPLES[name], datatype, [2, 3])
    assert values.shape == (2, 3) and datatype_of(values) is datatype
    nested = from_json([SAMPLES[name][:3], SAMPLES[name][3:]], datatype, [2, 3])
    assert nested.tolist() == values.tolist()
    again = from_binary(to_binary(values), datatype, [2, 3])
    assert again.tolist() == values.tolist() and datatype_of(again) is datatype
    expected = [float(np.float16(v)) if name == "FP16" else v for v in SAMPLES[name]]
    if name == "FP32":
        expected = np.array(SAMPLES[name], dtype=np.float32).tolist()
    assert to_json(values) == expected


def test_binary_layout_is_the_protocols() -> None:
    assert to_binary(np.array([1, 2], dtype=np.int32)) == struct.pack("<ii", 1, 2)
    assert to_binary(np.array([True, False])) == b"\x01\x00"
    assert to_binary(np.array(["ab", ""], dtype=object)) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    big_endian = np.array([1.5], dtype=">f8")
    assert to_binary(big_endian) == struct.pack("<d", 1.5)


def test_every_onnx_tensor_type_maps_to_its_datatype() -> None:
    assert BY_ONNX["tensor(float)"].name == "FP32"
    assert BY_ONNX["tensor(string)"].name == "BYTES"
    assert BY_ONNX["tensor(float16)"].name == "FP16"
    assert len(BY_ONNX) == len(DATATYPES) == 13


@pytest.mark.parametrize(
    ("data", "name", "shape", "message"),
    [
        ([1.5], "INT32", [1], "INT32 values must be integers"),
        ([1, True], "FP32", [2], "must be numbers, got true/false"),
        ([1.5, True], "FP64", [2], "must be numbers, got true/false"),
        ([[1, 2], [3, False]], "INT64", [2, 2], "must be numbers, got true/false"),
        ([1, 0], "BOOL", [2], "BOOL values must be true or false"),
        ([256], "UINT8", [1], "out of the range of UINT8 (0..255)"),
        ([-1], "UINT32", [1], "out of the range of UINT32"),
        ([2**64], "UINT64", [1], "out of the range of UINT64"),
        ([0, 2**63], "INT64", [2], "out of the range of INT64"),
        ([70000.0], "FP16", [1], "FP16 values must be finite numbers within |x| <= 6.55e+04"),
        (["a"], "FP32", [1], "FP32 values must be numbers"),
        ([1], "BYTES", [1], "BYTES values must be strings"),
        (["\ud800"], "BYTES", [1], "BYTES values must be text: a string holds a lone surrogate"),
        ([["a"], ["b", "c"]], "BYTES", [2, 1], "BYTES values must be strings (in lists nested"),
        ([[1, 2], [3]], "FP32", [3], "nested lists of different lengths"),
        ([1, 2, 3], "FP32", [2, 2], "3 values do not fill shape [2, 2] (4 values)"),
        ([[1, 2, 3, 4]], "FP32", [2, 2], "nested as [1, 4], but the shape is [2, 2]"),
    ],
)
def test_json_values_outside_the_datatype_are_refused(
    data: list[Any], name: str, shape: list[int], message: str
) -> None:
    with pytest.raises(DataError) as caught:
        from_json(data, DATATYPES[name], shape)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "name", "shape", "message"),
    [
        (b"\x00" * 7, "FP32", [2], "7 bytes of binary data, but shape [2] of FP32 takes 8"),
        (b"\x02", "BOOL", [1], "BOOL binary data must be bytes 0 or 1"),
        (b"\x05\x00\x00\x00ab", "BYTES", [1], "claims 5 bytes"),
        (b"\x01\x00\x00\x00abcd", "BYTES", [2], "ends after 1 of 2 elements"),
        # A shape declared huge is refused by the data's size, before room is made for it.
        (b"\x01\x00\x00\x00a", "BYTES", [2**40, 1], "5 bytes of BYTES binary data cannot hold"),
        (b"\x01\x00\x00\x00ab", "BYTES", [1], "1 bytes left after 1 BYTES elements"),
        (b"\x01\x00\x00\x00\xff", "BYTES", [1], "not UTF-8 text"),
    ],
)
def test_binary_data_that_does_not_fit_is_refused(
    raw: bytes, name: str, shape: list[int], message: str
) -> None:
    with pytest.raises(DataError) as caught:
        from_binary(raw, DATATYPES[name], shape)
    assert message in str(caught.value)


def test_binary_floats_may_hold_nan_json_cannot() -> None:
    """NaN is a valid float value (an imputer's input); JSON has no way to write it."""
    raw = np.array([np.nan, 1.0], dtype="<f4").tobytes()
    assert np.isnan(from_binary(raw, DATATYPES["FP32"], [2])[0])
    with pytest.raises(DataError, match="must be finite numbers"):
        from_json([float("nan"), 1.0], DATATYPES["FP32"], [2])


def test_empty_tensors() -> None:
    assert from_json([], DATATYPES["FP32"], [0, 4]).shape == (0, 4)
    assert from_binary(b"", DATATYPES["BYTES"], [0]).shape == (0,)


@pytest.mark.parametrize("name", ["FP16", "FP32", "FP64"])
def test_few_and_many_float_values_read_alike(name: str) -> None:
    """A few flat numbers take a shorter path than many: both give the same tensor."""
    values = [0, 1.5, -2, 65504.0, 1e-3, 3]
    few = from_json(values, DATATYPES[name], [2, 3])
    many = from_json(values * 20, DATATYPES[name], [40, 3])
    assert few.dtype == many.dtype == DATATYPES[name].dtype
    np.testing.assert_array_equal(np.tile(few, (20, 1)), many)
    wide = [2**70, -(2**70), 1, 2]  # beyond 64 bits, within every float type but FP16
    if name != "FP16":
        np.testing.assert_array_equal(
            from_json(wide, DATATYPES[name], [4]), from_json(wide * 20, DATATYPES[name], [80])[:4]
        )
    beyond = [[1.0, 1e39]] if name != "FP64" else []  # finite in float64, not in the type
    beyond += [[1, 70000]] if name == "FP16" else []  # integers, beyond FP16's 65504
    for bad in ([1.0, float("inf")], [1.0, 2**1024], [2**1024, 1], *beyond):
        for reps in (1, 40):
            with pytest.raises(DataError, match="must be finite numbers within"):
                from_json(bad * reps, DATATYPES[name], [2 * reps])
