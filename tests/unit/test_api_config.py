"""model_api.config: the worker default follows the container's CPU limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_api.config import ApiSettings, cpu_count


def test_cgroup_v2_quota_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_count(tmp_path) == min(2, cpu_count(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cpu_count(tmp_path) == 1


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_count(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_count(tmp_path) == cpu_count(tmp_path / "none") >= 1


@pytest.mark.parametrize("value", ["auto", ""])
def test_auto_workers(value: str) -> None:
    assert ApiSettings(API_WORKERS=value).workers == cpu_count()  # type: ignore[call-arg]
    assert ApiSettings(API_WORKERS="3").workers == 3  # type: ignore[call-arg]
