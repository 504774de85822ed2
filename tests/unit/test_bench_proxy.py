"""bench_proxy's reading of its runs: each door against the direct one, round by round."""

from __future__ import annotations

from model_load_bench.bench_proxy import RELAY, RELAY_CONFIG, Run, Scenario, table, verdicts


def _run(rps: float, p99: float, machine: float) -> Run:
    return Run(rps, 1.0, p99, 0, {"api-1": 0.5, "proxy": 0.4, RELAY: 0.3, "machine": machine})


def _scenarios() -> list[Scenario]:
    path, load = "in the network", "saturation"
    proxy = Scenario(path, "proxy", load, runs=[_run(5_000, 12, 2.0), _run(4_000, 14, 2.0)])
    direct = Scenario(path, "direct", load, runs=[_run(10_000, 10, 2.0), _run(10_000, 10, 2.0)])
    relay = Scenario(path, RELAY, load, runs=[_run(7_000, 11, 2.0), _run(6_000, 11, 2.0)])
    return [proxy, direct, relay]


def test_each_door_is_read_against_the_direct_runs_of_its_own_rounds() -> None:
    lines = verdicts(_scenarios())
    assert len(lines) == 2
    proxy, relay = lines
    # ratios 50% and 40%: median 45%; p99 +2 and +4: +3; CPU 400-200 and 500-200 µs: 250
    assert "through the proxy 45% of the direct req/s" in proxy
    assert "p99 +3.00 ms" in proxy and "costs the machine 250 µs" in proxy
    assert "through the tcp relay 65% of the direct req/s" in relay


def test_a_load_without_a_relay_run_gets_the_proxy_verdict_only() -> None:
    proxy, direct, _ = _scenarios()
    assert [line.split(":")[0] for line in verdicts([proxy, direct])] == [
        "- in the network, 1 row, saturation"
    ]


def test_the_relay_row_shows_the_relay_s_own_cpu() -> None:
    rows = table(_scenarios(), ["api-1"])
    relay = next(r for r in rows if f"| {RELAY} |" in r)
    proxy = next(r for r in rows if "| saturation | proxy |" in r)
    assert "| 0.30 |" in relay and "| 0.40 |" in proxy


def test_the_relay_only_relays_bytes_to_the_replicas_it_finds_by_dns() -> None:
    assert "mode tcp" in RELAY_CONFIG
    assert "server-template api 16 api:8000 resolvers docker" in RELAY_CONFIG
    assert "mode http" not in RELAY_CONFIG
