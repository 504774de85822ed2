"""A model's signature: its inputs and outputs, by name, with datatype and shape.

Read from the ONNX Runtime session. A dimension the model leaves open (a symbolic name
such as "batch", or none) is -1, as the Open Inference Protocol reports it.

Outputs that are not tensors cannot travel over the protocol as they are. One kind is
served as a tensor: the ZipMap that ends scikit-learn's classifiers exported with their
defaults (the seed's own iris model has one), a sequence of one map per row, class ->
probability, is FP32 [rows, classes], the classes in the maps' key order (what
`list(probabilities[i].values())` gives); the warm-up learns how many classes. Any other
is left out and named in `hidden_outputs`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model_api.datatypes import BY_ONNX, DATATYPES, UNSUPPORTED, DataType
from model_api.errors import ModelInvalidError

# ONNX Runtime's types of a ZipMap's output (its keys: class ids, or class names).
ZIPMAP_TYPES = frozenset({"seq(map(int64,tensor(float)))", "seq(map(string,tensor(float)))"})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: DataType
    shape: tuple[int, ...]  # -1: dynamic
    # The model's names of the open dimensions ("batch", "seq"), None where it gives none;
    # empty if not known. Tensors that name a dimension alike must agree on its size.
    dims: tuple[str | None, ...] = ()
    # The model gives this output as a ZipMap (a map per row), served as their values.
    zipmap: bool = False

    @classmethod
    def from_ort(cls, arg: Any) -> TensorSpec | None:
        """From an onnxruntime NodeArg; None if it is not a tensor the protocol can carry."""
        if arg.type in ZIPMAP_TYPES:
            return cls(arg.name, DATATYPES["FP32"], (-1, -1), zipmap=True)
        datatype = BY_ONNX.get(arg.type)
        if datatype is None:
            return None
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape or ())
        dims = tuple(d if isinstance(d, str) and d else None for d in arg.shape or ())
        return cls(arg.name, datatype, shape, dims)

    def metadata(self) -> dict[str, Any]:
        """As the protocol's model metadata lists it."""
        return {"name": self.name, "datatype": self.datatype.name, "shape": list(self.shape)}

    def describe(self) -> str:
        return f"{self.name!r} ({self.datatype.name} {list(self.shape)})"

    @property
    def row_values(self) -> int | None:
        """Values in one row of this input (all of it if its first dimension is fixed), or
        None if a dimension after the first is open."""
        rest = self.shape[1:] if self.shape and self.shape[0] == -1 else self.shape
        return None if -1 in rest else math.prod(rest)

    def shape_problem(self, shape: Sequence[int]) -> str | None:
        """Why a tensor of `shape` cannot be this input, or None if it can."""
        if len(shape) == len(self.shape):
            for want, got in zip(self.shape, shape):  # noqa: B905 (lengths just compared)
                if want != got and want != -1:
                    break
            else:
                return None
        return f"the model takes {list(self.shape)} (-1: any size), got {list(shape)}"


@dataclass(frozen=True)  # not slots: cached_property keeps its value in __dict__
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    hidden_outputs: tuple[str, ...] = ()

    @classmethod
    def from_session(cls, session: Any, where: str) -> Signature:
        inputs = []
        for arg in session.get_inputs():
            spec = TensorSpec.from_ort(arg)
            if spec is None:
                raise ModelInvalidError(f"{where}: input {arg.name!r} is {_unservable(arg.type)}")
            inputs.append(spec)
        outputs, hidden = [], []
        for arg in session.get_outputs():
            spec = TensorSpec.from_ort(arg)
            if spec is None:
                hidden.append(arg.name)
            else:
                outputs.append(spec)
        if not outputs:
            raise ModelInvalidError(
                f"{where}: no output is a tensor the protocol can carry "
                f"({', '.join(f'{o.name}: {o.type}' for o in session.get_outputs())})"
            )
        return cls(tuple(inputs), tuple(outputs), tuple(hidden))

    @functools.cached_property
    def batchable(self) -> bool:
        """Whether requests can be stacked along the first dimension, as far as the
        signature tells: every input and output has one, and the model leaves it open;
        the inputs do not give it different names (queries [Q, 4] and documents [D, 4]
        are no batch of rows), nor a name they give another of their dimensions ([N, N]),
        and no output starts with such a name ([N, M] -> [M, N]). The warm-up then checks
        that stacked requests get their answers alone (OnnxModel.stacks)."""
        if not self.inputs or not all(
            t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs)
        ):
            return False
        first = {t.dims[0] for t in self.inputs if t.dims and t.dims[0]}
        others = {d for t in self.inputs for d in t.dims[1:] if d}
        return (
            len(first) <= 1
            and not first & others
            and not any(t.dims and t.dims[0] in others for t in self.outputs)
        )

    @functools.cached_property
    def shares_dims(self) -> bool:
        """Whether the inputs name a dimension alike (more than once)."""
        names = [d for t in self.inputs for d in t.dims if d]
        return len(names) != len(set(names))

    def dims_problem(self, shapes: dict[str, tuple[int, ...]]) -> str | None:
        """Why inputs of these shapes disagree on a dimension the model names alike
        (ids and their mask of [batch, seq]), or None."""
        seen: dict[str, tuple[str, int]] = {}
        for t in self.inputs:
            for dim, size in zip(t.dims, shapes[t.name]):  # noqa: B905 (shapes checked)
                if dim is None:
                    continue
                first = seen.setdefault(dim, (t.name, size))
                if first[1] != size:
                    return (
                        f"{first[0]!r} and {t.name!r} share the model's dimension {dim!r}, "
                        f"but are {first[1]} and {size} long in it"
                    )
        return None

    @functools.cached_property
    def zipmaps(self) -> tuple[str, ...]:
        """The outputs the model gives as ZipMaps (served as FP32 [rows, classes])."""
        return tuple(t.name for t in self.outputs if t.zipmap)

    def with_classes(self, classes: dict[str, int]) -> Signature:
        """This signature with the number of classes of its ZipMap outputs, by name."""
        outputs = tuple(
            dataclasses.replace(t, shape=(-1, classes[t.name])) if t.name in classes else t
            for t in self.outputs
        )
        return Signature(self.inputs, outputs, self.hidden_outputs)

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def input(self, name: str) -> TensorSpec | None:
        return self._inputs.get(name)

    def output(self, name: str) -> TensorSpec | None:
        return self._outputs.get(name)

    @functools.cached_property
    def _inputs(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.inputs}

    @functools.cached_property
    def _outputs(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.outputs}

    def metadata(self) -> dict[str, Any]:
        return {
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }


def _unservable(onnx_type: str) -> str:
    why = UNSUPPORTED.get(onnx_type, "not a tensor of a datatype the protocol can carry")
    return f"{onnx_type}: {why}"
