"""What the container allows (CPUs, memory) and how the API uses it: worker processes,
ONNX Runtime threads, and whether the model fits at all.

The rule API_WORKERS=auto follows (docs/configuration.md, "Workers, threads and memory"):

- A model of LARGE_MODEL_BYTES or more is held once: one worker process, with as many
  intra-op threads as the container has CPUs. Each worker holds its own copy of the
  model, so copies of a large model cost more memory than the parallelism they buy.
- So is a compute-bound one (`compute_bound`, by the warm-up on one thread): one whose
  one inference takes HEAVY_SECONDS or more, or BATCHED_HEAVY_SECONDS or more when a
  batch runs BATCH_GAIN times faster per row than one row. ONNX Runtime's threads use
  the cores on batches the one worker stacks from all connections, where several
  workers would each stack fewer requests and hold a copy each (measured:
  docs/configuration.md).
- A small, fast model gets one worker per CPU, each with one intra-op thread: its
  request is mostly Python (HTTP, decoding), which only processes run in parallel.
- Either way no more workers than the memory limit holds.

Request bodies (MAX_BODY_BYTES=auto, `body_limit`): at least BODY_BYTES, and room for a
request of one row of every input in JSON, each value at its widest and pretty-printed
(on a line of its own, indented); at most MAX_AUTO_BODY_BYTES. An FP32 image of
[3, 224, 224] takes ~3 MB in JSON: a fixed 1 MiB would refuse any image model's JSON.

Memory per worker: WORKER_BYTES (Python, ONNX Runtime, the app) plus LOAD_FACTOR times
the model's files (ONNX Runtime holds the weights, and briefly more while it loads
them). A model that does not fit even in one worker is refused before it is loaded:
exit 3 with one line naming both figures and the settings to raise, rather than an
out-of-memory kill with no explanation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from model_api.errors import ModelTooLargeError
from model_api.signature import Signature

MiB = 1 << 20
# At or above this, a model is held once (one worker).
LARGE_MODEL_BYTES = 64 * MiB
# A model whose one inference on one thread takes this long is compute-bound (one worker).
HEAVY_SECONDS = 0.001
# So is a lighter one, from this long, if batching pays: a batch of BATCH_PROBE_ROWS rows
# runs at least BATCH_GAIN times faster per row than one row. Such a model reads all its
# weights on every call (an MLP larger than the CPU's cache), so rows stacked into one
# call cost far less than the same rows split between workers, each with a copy.
BATCHED_HEAVY_SECONDS = 0.00015
BATCH_GAIN = 2.0
BATCH_PROBE_ROWS = 8
# RSS of a worker serving a tiny model (measured: docs/configuration.md, "Workers, threads
# and memory").
WORKER_BYTES = 110 * MiB
# Measured: peak RSS growth while loading, per byte of model file.
LOAD_FACTOR = 1.35
# uvicorn's supervisor process, with API_WORKERS > 1.
SUPERVISOR_BYTES = 40 * MiB

# Request bodies with MAX_BODY_BYTES=auto: at least this, at most the second; per value,
# its widest JSON and PRETTY_BYTES (a newline and the indent of nested arrays). The cap
# bounds what parsing one body may take: ~16 times its size for compact JSON of short
# floats ("0.5,": a Python float and a list slot each), measured.
BODY_BYTES = 1 * MiB
PRETTY_BYTES = 17
MAX_AUTO_BODY_BYTES = 8 * MiB

CGROUP = Path("/sys/fs/cgroup")


def cpu_count(cgroup_root: Path = CGROUP) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota
    (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up — what a container limit allows."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus or 1, math.ceil(quota))
    return max(1, cpus or 1)


def _cgroup_quota(root: Path) -> float | None:
    try:  # cgroup v2: "max 100000" or "150000 100000"
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: quota -1 means unlimited
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def memory_limit(cgroup_root: Path = CGROUP) -> int | None:
    """The container's memory limit in bytes (cgroup v2 `memory.max`, v1
    `memory.limit_in_bytes`), or None if it has none below the machine's memory."""
    limit: int | None = None
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text != "max":
            try:
                limit = int(text)
            except ValueError:
                continue
        break
    physical = _physical_memory()
    if limit is None or (physical is not None and limit >= physical):
        return None
    return limit


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Plan:
    workers: int
    threads: int  # ONNX Runtime intra-op threads per worker
    model_bytes: int
    need_bytes: int
    limit_bytes: int | None

    def describe(self) -> str:
        limit = "none" if self.limit_bytes is None else f"{self.limit_bytes / MiB:.0f} MiB"
        return (
            f"{self.workers} worker(s) x {self.threads} ONNX Runtime thread(s) for a model of "
            f"{self.model_bytes / MiB:.1f} MiB; memory ~{self.need_bytes / MiB:.0f} MiB "
            f"of the limit ({limit})"
        )


def worker_bytes(model_bytes: int) -> int:
    return WORKER_BYTES + int(LOAD_FACTOR * model_bytes)


def batching_pays(gain: float | None) -> bool:
    """Whether a batch runs BATCH_GAIN times faster per row than one row (None: not
    measured)."""
    return gain is not None and gain >= BATCH_GAIN


def compute_bound(latency: float | None, gain: float | None = None) -> bool:
    """Whether a model is compute-bound, by the seconds of one inference on one thread
    and the per-row speed-up of a batch (None: not measured)."""
    if latency is None:
        return False
    return latency >= HEAVY_SECONDS or (latency >= BATCHED_HEAVY_SECONDS and batching_pays(gain))


def plan(
    model_bytes: int,
    cpus: int,
    limit: int | None,
    workers: int | None = None,
    threads: int | None = None,
    latency: float | None = None,
    gain: float | None = None,
) -> Plan:
    """Workers and threads for this model and container (None: auto), given the seconds
    of one inference on one thread and the per-row speed-up of a batch if known; raises
    ModelTooLargeError if the model does not fit the memory limit."""
    per_worker = worker_bytes(model_bytes)
    if workers is None:
        heavy = compute_bound(latency, gain)
        workers = 1 if model_bytes >= LARGE_MODEL_BYTES or heavy else cpus
        if limit is not None:
            while workers > 1 and _need(workers, per_worker) > limit:
                workers -= 1
    need = _need(workers, per_worker)
    if limit is not None and need > limit:
        raise ModelTooLargeError(
            f"the model's {model_bytes / MiB:.0f} MiB need ~{need / MiB:.0f} MiB with "
            f"{workers} worker(s) ({WORKER_BYTES / MiB:.0f} MiB each + {LOAD_FACTOR:g} x "
            f"the model), over the container's memory limit of {limit / MiB:.0f} MiB: raise "
            f"API_MEMORY_LIMIT (Compose) or the api container's resources.limits.memory "
            f"and the models emptyDir sizeLimit (Kubernetes)"
            + (", or lower API_WORKERS" if workers > 1 else "")
        )
    return Plan(workers, threads or max(1, cpus // workers), model_bytes, need, limit)


def _need(workers: int, per_worker: int) -> int:
    return workers * per_worker + (SUPERVISOR_BYTES if workers > 1 else 0)


def body_limit(signature: Signature) -> int:
    """MAX_BODY_BYTES=auto: BODY_BYTES, or more if one row of the model's inputs needs it in
    pretty-printed JSON; an input with an open dimension after the first, or of strings,
    adds nothing (its rows are as long as the client makes them)."""
    row = sum(
        (t.datatype.json_width + PRETTY_BYTES) * (t.row_values or 0)
        for t in signature.inputs
        if t.datatype.json_width
    )
    return max(BODY_BYTES, min(MAX_AUTO_BODY_BYTES, row))
