"""Shared test helpers: paths, free ports, iris data, the models/ and loadtest/ scripts."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_V1 = ROOT / "models" / "iris_svc" / "v1"
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.3, 3.3, 6.0, 2.5]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def models_script(name: str) -> ModuleType:
    """Import models/<name>.py (models/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"models_{name}", ROOT / "models" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def loadtest_module(name: str) -> ModuleType:
    """Import loadtest/<name>.py (locust loads these by path; they are not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"loadtest_{name}", ROOT / "loadtest" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_module() -> ModuleType:
    return models_script("train")


@pytest.fixture(scope="session")
def iris_rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris().data.astype(np.float32)


@pytest.fixture(scope="session")
def sklearn_proba(train_module: ModuleType, iris_rows: np.ndarray) -> np.ndarray:
    """What the committed v1 must reproduce: a fresh fit's predict_proba on all rows."""
    model, _, _ = train_module.train()
    return train_module.predict_proba(model, iris_rows.astype(np.float64))
