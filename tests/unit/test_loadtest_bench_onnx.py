"""model_load_bench.bench_onnx: the plain loop measures every configuration it is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_load_bench import bench_onnx as bench
from model_tools import zoo
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def small_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    path.write_bytes(zoo.serialize(zoo.mlp_bench(hidden=16)))
    return path


def test_every_configuration_gets_its_figures(small_mlp: Path) -> None:
    configs = [bench.Config(t, b) for t in (1, 2) for b in (1, 4)]
    figures = bench.measure(small_mlp, configs, rounds=2, seconds=0.05, warmup=2)
    assert list(figures) == configs
    for config, f in figures.items():
        assert f.ms_per_run > 0 and f.rows_per_s > 0, config
    table = bench.table(small_mlp, figures)
    assert "| 2 | 4 |" in table and table.count("\n| ") == 1 + len(configs)


def test_models_without_one_fp32_feature_input_are_refused() -> None:
    session = bench.session_for(ROOT / "models" / "text_classifier" / "v1" / "model.onnx", 1)
    with pytest.raises(SystemExit, match="needs one FP32 input"):
        bench.feeds_for(session, 1)
