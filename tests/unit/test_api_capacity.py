"""model_api.capacity: CPUs and memory the container allows, and the workers/threads rule."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from model_api.capacity import (
    BODY_BYTES,
    LARGE_MODEL_BYTES,
    MAX_AUTO_BODY_BYTES,
    MiB,
    body_limit,
    compute_bound,
    cpu_count,
    memory_limit,
    plan,
    worker_bytes,
)
from model_api.config import ApiSettings
from model_api.dataplane import runs_in_thread
from model_api.datatypes import DATATYPES
from model_api.errors import ModelTooLargeError
from model_api.signature import Signature, TensorSpec


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


def inputs(*specs: tuple[str, tuple[int, ...]]) -> Signature:
    tensors = tuple(TensorSpec(f"x{i}", DATATYPES[t], shape) for i, (t, shape) in enumerate(specs))
    return Signature(tensors, ())


def request_json(signature: Signature, values: dict[str, float], indent: int | None) -> int:
    """Bytes of a V2 JSON request of one row of every input, each value its datatype's
    widest, nested as the shape (json.dumps, as Python clients send it)."""
    tensors = []
    for t in signature.inputs:
        shape = [1 if d == -1 else d for d in t.shape]
        data = np.full(shape, values[t.datatype.name], dtype=t.datatype.dtype)
        tensors.append({"name": t.name, "shape": shape, "datatype": t.datatype.name,
                        "data": data.tolist()})  # fmt: skip
    return len(json.dumps({"id": "request-1", "inputs": tensors}, indent=indent))


WIDEST = {
    "FP32": float(np.float32(-1.1754944e-38)),  # float32's smallest normal, as a double
    "FP64": -2.2250738585072014e-308,
    "INT64": float(np.iinfo(np.int64).min),
    "UINT8": 255,
}


def test_one_row_of_an_image_model_fits_in_json_even_pretty_printed() -> None:
    """[3, 224, 224] FP32: ~4 MB as compact JSON of its widest floats, more indented; a
    fixed 1 MiB refused every JSON request of such a model. Indented by 2 (as
    json.dumps(indent=2) and most pretty-printers do), each value is on a line of its own."""
    for datatype in ("FP32", "FP64", "UINT8"):
        signature = inputs((datatype, (-1, 3, 224, 224)))
        limit = body_limit(signature)
        assert request_json(signature, WIDEST, indent=None) <= limit
        assert request_json(signature, WIDEST, indent=2) <= limit
    assert body_limit(inputs(("FP32", (-1, 3, 224, 224)))) > 4 * MiB


def test_models_of_small_rows_keep_the_one_mib_default() -> None:
    assert body_limit(inputs(("FP32", (-1, 4)))) == BODY_BYTES  # iris
    assert body_limit(inputs(("INT64", (-1, -1)), ("INT64", (-1, -1)))) == BODY_BYTES  # text
    assert body_limit(inputs(("BYTES", (-1, 1)))) == BODY_BYTES
    assert body_limit(inputs(("UINT8", (-1, 3, 32, 32)))) == BODY_BYTES


def test_every_input_counts_and_a_fixed_first_dimension_is_all_one_row() -> None:
    one = body_limit(inputs(("FP32", (-1, 3, 128, 128))))
    assert one > BODY_BYTES
    assert body_limit(inputs(("FP32", (1, 3, 128, 128)))) == one
    assert body_limit(inputs(("FP32", (3, 128, 128)))) == one
    assert body_limit(inputs(("FP32", (-1, 3, 128, 128)), ("FP32", (-1, 3, 128, 128)))) == 2 * one
    assert body_limit(inputs(("FP32", (-1, 3, 128, 128)), ("INT64", (-1, -1)))) == one
    assert body_limit(inputs(("FP32", (-1, 3, 512, 512)))) == MAX_AUTO_BODY_BYTES


def test_max_body_bytes_is_auto_unless_set() -> None:
    assert ApiSettings().max_body_bytes is None
    assert ApiSettings(MAX_BODY_BYTES="auto").max_body_bytes is None
    assert ApiSettings(MAX_BODY_BYTES="65536").max_body_bytes == 65536
    with pytest.raises(ValueError, match="greater than or equal to 1024"):
        ApiSettings(MAX_BODY_BYTES="0")
