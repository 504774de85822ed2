"""Pass/fail for a load-test run: what makes `make loadtest` exit non-zero.

A run fails when any request failed (a transport error, a non-2xx or a wrong answer),
when nothing was measured, when the p99 latency is above the bound, or when the
throughput is below the floor. A bound or floor of 0 switches that check off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunFigures:
    requests: int
    failures: int
    p99_ms: float
    rps: float


def breaches(run: RunFigures, p99_bound_ms: float, min_rps: float) -> list[str]:
    """One readable line per broken threshold; empty when the run held."""
    found: list[str] = []
    if run.requests == 0:
        return ["no request completed"]
    if run.failures:
        share = 100 * run.failures / run.requests
        found.append(f"{run.failures} of {run.requests} requests failed ({share:.2f}%)")
    if p99_bound_ms > 0 and run.p99_ms > p99_bound_ms:
        found.append(f"p99 {run.p99_ms:.0f} ms above the bound of {p99_bound_ms:g} ms")
    if min_rps > 0 and run.rps < min_rps:
        found.append(f"throughput {run.rps:.1f} req/s below the floor of {min_rps:g} req/s")
    return found
