"""Shared test data and fixtures: paths, iris rows, the trained reference. What tests and
benchmarks share (ports, processes, stacks, keys) is the model_load_harness package."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from model_tools import train

ROOT = Path(__file__).resolve().parents[1]
MODEL_V1 = ROOT / "models" / "iris_svc" / "v1"
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.3, 3.3, 6.0, 2.5]


@pytest.fixture(scope="session")
def train_module() -> ModuleType:
    return train


@pytest.fixture(scope="session")
def iris_rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris().data.astype(np.float32)


@pytest.fixture(scope="session")
def sklearn_proba(train_module: ModuleType, iris_rows: np.ndarray) -> np.ndarray:
    """What the committed v1 must reproduce: a fresh fit's predict_proba on all rows."""
    model, _, _ = train_module.train()
    return train_module.predict_proba(model, iris_rows.astype(np.float64))
