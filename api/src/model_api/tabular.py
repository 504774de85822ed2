"""How the seed's contract (`POST /predict {"data": [[...], ...]}`) maps onto a model.

The seed served an iris classifier: rows of features in, class probabilities out, and
labels for /predict/label. It serves any model of that shape:

- one input, of a floating-point datatype, two-dimensional [N, features], the number of
  features fixed by the model;
- the answer is one output's rows: with labels, the output of shape [N, classes] that
  matches them (preferring one whose name says "prob"); without, the first
  floating-point output (a regressor's [N, 1] or [N] predictions);
- or, for a model with no such [N, k] output but several [N] floating-point outputs of
  one datatype (scikit-learn exported with `zipmap="columns"`: one output per class),
  those outputs side by side, in the model's order, as the rows' columns.

Any other model is served over the Open Inference Protocol only; the seed's routes say
so (404, naming the V2 route).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_api.errors import ModelInvalidError
from model_api.model import OnnxModel
from model_api.signature import TensorSpec


@dataclass(frozen=True)
class Tabular:
    input: TensorSpec
    output: TensorSpec  # the answer's rows; or its first column, when `columns`
    features: int
    labels: list[str] | None  # when the answer holds their probabilities
    columns: tuple[TensorSpec, ...] = ()  # [N] outputs whose values, side by side, are rows

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs to ask the model for."""
        return tuple(c.name for c in self.columns) or (self.output.name,)

    def rows(self, arrays: list[np.ndarray]) -> np.ndarray:
        """The answer's rows, from the model's arrays for `outputs`."""
        return np.stack(arrays, axis=1) if self.columns else arrays[0]


def tabular(model: OnnxModel) -> Tabular | str:
    """The model's tabular view, or why it has none. Raises ModelInvalidError when the
    model's labels and its class probabilities disagree (a broken version)."""
    inputs = model.signature.inputs
    if len(inputs) != 1:
        return f"it takes {len(inputs)} inputs ({', '.join(t.describe() for t in inputs)})"
    (spec,) = inputs
    if spec.datatype.kind != "f" or len(spec.shape) != 2 or spec.shape[1] < 1:
        return f"its input is {spec.describe()}, not rows of a fixed number of floats"
    floats = [
        o for o in model.signature.outputs if o.datatype.kind == "f" and len(o.shape) in (1, 2)
    ]
    if not floats:
        return "it has no floating-point output of one row per input row"
    labels = model.labels
    columns = tuple(o for o in floats if len(o.shape) == 1)
    if (
        len(columns) == len(floats) >= 2
        and len({c.datatype for c in columns}) == 1
        and len({c.shape[0] for c in columns}) == 1
    ):
        if labels is not None and len(labels) != len(columns):
            raise ModelInvalidError(
                f"{model.path}: the model has {len(columns)} class outputs "
                f"({', '.join(c.name for c in columns)}) but its labels are {len(labels)}"
            )
        return Tabular(spec, columns[0], spec.shape[1], labels, columns)
    floats.sort(key=lambda o: ("prob" not in o.name.lower(), -len(o.shape)))
    if labels is not None:
        matching = [o for o in floats if len(o.shape) == 2 and o.shape[1] in (-1, len(labels))]
        if not matching:
            classes = [o.shape[1] for o in floats if len(o.shape) == 2]
            raise ModelInvalidError(
                f"{model.path}: the model's outputs have {classes or 'no'} classes but its "
                f"labels are {len(labels)}"
            )
        return Tabular(spec, matching[0], spec.shape[1], labels)
    return Tabular(spec, floats[0], spec.shape[1], None)
