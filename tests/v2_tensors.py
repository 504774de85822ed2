"""Open Inference Protocol (V2) JSON tensors <-> numpy, decoded strictly as a server must.

Independent of the API's own codec on purpose: tests hold requests built elsewhere (the
load test's) to what the protocol and the model's signature allow, then run them through
onnxruntime directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

# onnxruntime's type strings -> V2 datatypes -> numpy dtypes.
DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


class Rejected(ValueError):
    """What a V2 server answers with a 400."""


def _tensor_metadata(arg: Any) -> dict[str, Any]:
    shape = [d if isinstance(d, int) else -1 for d in arg.shape]
    return {"name": arg.name, "datatype": DATATYPES[arg.type], "shape": shape}


def model_metadata(session: ort.InferenceSession, name: str) -> dict[str, Any]:
    """The `GET /v2/models/{name}` body the model's signature implies."""
    return {
        "name": name,
        "versions": ["v1"],
        "platform": "onnxruntime_onnx",
        "inputs": [_tensor_metadata(i) for i in session.get_inputs()],
        "outputs": [_tensor_metadata(o) for o in session.get_outputs()],
    }


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    return [v for item in data for v in _flatten(item)]


def _check_value(value: Any, datatype: str, where: str) -> None:
    if datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype == "BYTES":
        ok = isinstance(value, str)
    elif isinstance(value, bool):
        ok = False
    elif datatype.startswith(("INT", "UINT")):
        info = np.iinfo(NUMPY_DTYPES[datatype])
        ok = isinstance(value, int) and info.min <= value <= info.max
    else:
        finfo = np.finfo(NUMPY_DTYPES[datatype])
        ok = isinstance(value, int | float) and math.isfinite(value) and abs(value) <= finfo.max
    if not ok:
        raise Rejected(f"{where}: {value!r} is not a valid {datatype} value")


def decode_inputs(body: Any, metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """A V2 JSON inference request -> the model's feeds; Rejected where a server says 400."""
    declared = {t["name"]: t for t in metadata["inputs"]}
    tensors = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(tensors, list):
        raise Rejected("no inputs list")
    feeds: dict[str, np.ndarray] = {}
    for tensor in tensors:
        name = tensor.get("name")
        if name not in declared or name in feeds:
            raise Rejected(f"input {name!r}: unknown or repeated")
        spec = declared[name]
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype != spec["datatype"]:
            raise Rejected(f"input {name!r}: datatype {datatype!r}, expected {spec['datatype']}")
        if (
            not isinstance(shape, list)
            or len(shape) != len(spec["shape"])
            or any(not isinstance(d, int) or d < 0 for d in shape)
            or any(want not in (-1, got) for got, want in zip(shape, spec["shape"], strict=True))
        ):
            raise Rejected(f"input {name!r}: shape {shape!r}, expected {spec['shape']}")
        data = _flatten(tensor.get("data"))
        if len(data) != math.prod(shape):
            raise Rejected(f"input {name!r}: {len(data)} values for shape {shape}")
        for value in data:
            _check_value(value, datatype, f"input {name!r}")
        feeds[name] = np.array(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    missing = sorted(set(declared) - set(feeds))
    if missing:
        raise Rejected(f"inputs {missing} missing")
    return feeds


def encode_outputs(
    names: Sequence[str], arrays: Sequence[np.ndarray], metadata: dict[str, Any]
) -> dict[str, Any]:
    """onnxruntime's outputs -> a V2 JSON inference response."""
    datatypes = {t["name"]: t["datatype"] for t in metadata["outputs"]}
    return {
        "model_name": metadata["name"],
        "outputs": [
            {
                "name": name,
                "datatype": datatypes[name],
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in zip(names, arrays, strict=True)
        ],
    }


def infer(session: ort.InferenceSession, body: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """Decode, run, encode: what a V2 server does with one JSON request."""
    feeds = decode_inputs(body, metadata)
    names = [o["name"] for o in metadata["outputs"]]
    return encode_outputs(names, session.run(names, feeds), metadata)
