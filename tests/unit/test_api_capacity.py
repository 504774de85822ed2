"""model_api.capacity: CPUs and memory the container allows, and the workers/threads rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from model_api.capacity import (
    LARGE_MODEL_BYTES,
    MiB,
    compute_bound,
    cpu_count,
    memory_limit,
    plan,
    worker_bytes,
)
from model_api.config import ApiSettings
from model_api.dataplane import runs_in_thread
from model_api.errors import ModelTooLargeError


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


def test_memory_limit_v2_v1_and_none(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{512 * MiB}\n")
    assert memory_limit(tmp_path) == 512 * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{256 * MiB}\n")
    assert memory_limit(tmp_path) == 256 * MiB
    # cgroup v1 says "no limit" with a number near 2**63: above the machine's memory.
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory_limit(tmp_path) is None
    assert memory_limit(tmp_path / "none") is None


@pytest.mark.parametrize("value", ["auto", "", "0"])
def test_auto_means_none_for_the_plan(value: str) -> None:
    settings = ApiSettings(API_WORKERS=value, ORT_INTRA_OP_THREADS=value)  # type: ignore[call-arg]
    assert settings.workers is None and settings.ort_threads is None
    assert ApiSettings(API_WORKERS="3").workers == 3  # type: ignore[call-arg]


def test_a_small_model_gets_a_worker_per_cpu_with_one_thread() -> None:
    chosen = plan(model_bytes=2 * MiB, cpus=4, limit=None)
    assert (chosen.workers, chosen.threads) == (4, 1)


def test_a_large_model_is_held_once_with_every_cpu_as_threads() -> None:
    for cpus in (1, 2, 8, 64):
        chosen = plan(model_bytes=LARGE_MODEL_BYTES, cpus=cpus, limit=None)
        assert (chosen.workers, chosen.threads) == (1, cpus)


def test_workers_shrink_to_what_the_memory_limit_holds() -> None:
    model = 40 * MiB
    limit = 2 * worker_bytes(model) + 100 * MiB  # room for two, not four
    chosen = plan(model_bytes=model, cpus=4, limit=limit)
    assert chosen.workers == 2 and chosen.need_bytes <= limit
    assert chosen.threads == 2


def test_given_settings_win_over_auto() -> None:
    chosen = plan(model_bytes=LARGE_MODEL_BYTES * 2, cpus=4, limit=None, workers=2, threads=1)
    assert (chosen.workers, chosen.threads) == (2, 1)


def test_a_model_too_large_for_the_limit_is_refused_in_one_line() -> None:
    with pytest.raises(ModelTooLargeError) as caught:
        plan(model_bytes=400 * MiB, cpus=2, limit=512 * MiB)
    message = str(caught.value)
    assert "\n" not in message
    assert "400 MiB" in message and "512 MiB" in message  # both figures
    assert "API_MEMORY_LIMIT" in message and "resources.limits.memory" in message
    assert "sizeLimit" in message
    # Several workers asked for: lowering them is a way out, and the line says so.
    with pytest.raises(ModelTooLargeError, match="lower API_WORKERS"):
        plan(model_bytes=20 * MiB, cpus=2, limit=200 * MiB, workers=4)


def test_a_compute_bound_model_is_held_once_too() -> None:
    """One inference of a millisecond or more on one thread (measured at start): one
    worker whose threads use the cores, whatever its size."""
    small = 20 * MiB
    assert plan(model_bytes=small, cpus=4, limit=None, latency=0.0002).workers == 4
    heavy = plan(model_bytes=small, cpus=4, limit=None, latency=0.0018)
    assert (heavy.workers, heavy.threads) == (1, 4)
    # API_WORKERS given: it wins.
    assert plan(model_bytes=small, cpus=4, limit=None, workers=3, latency=0.0018).workers == 3


def test_a_lighter_model_is_held_once_when_batching_pays() -> None:
    """From a fraction of a millisecond, a model that runs a batch several times faster
    per row than one row (it streams its weights on every call) is served by one worker
    stacking all connections' requests; one that gains nothing from batches, or is light,
    by a worker per CPU. Measured on 2 CPUs (docs/configuration.md): an MLP of 0.2 ms,
    8 rows 5x faster per row, served 11.2k rows/s by one worker, 10.4k by two; one of
    0.09 ms, 12.4k by one, 16.9k by two."""
    small = 20 * MiB
    batched = plan(model_bytes=small, cpus=2, limit=None, latency=0.0002, gain=5.0)
    assert (batched.workers, batched.threads) == (1, 2)
    assert plan(model_bytes=small, cpus=2, limit=None, latency=0.0006, gain=1.0).workers == 2
    assert plan(model_bytes=small, cpus=2, limit=None, latency=0.00009, gain=5.0).workers == 2
    assert plan(model_bytes=small, cpus=2, limit=None, latency=0.0002, gain=None).workers == 2
    assert compute_bound(0.0018) and not compute_bound(None, 5.0)


@pytest.mark.parametrize(
    ("latency", "gain", "in_thread"),
    [
        (0.0006, None, True),  # heavy: the loop serves HTTP meanwhile
        (0.0002, 5.0, True),  # light, but its calls hold many rows
        (0.0002, 1.0, False),
        (0.00001, 7.0, False),  # iris: the hand-off would cost more than the call
    ],
)
def test_where_calls_run_by_default(latency: float, gain: float | None, in_thread: bool) -> None:
    model = SimpleNamespace(latency=latency, batch_gain=gain)
    assert runs_in_thread(model) is in_thread  # type: ignore[arg-type]
