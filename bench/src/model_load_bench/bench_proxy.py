"""What the proxy costs: the API replicas through it and reached directly, side by side,
from inside the Compose network and from the host.

    uv run python -m model_load_bench.bench_proxy           # or: make bench-proxy (needs wrk, root)

Starts its own compose project (own name, free host ports) with compose.debug.yaml, so
each of the API_REPLICAS (2) replicas of API_CPUS (1) also has a port of its own. wrk
drives POST /predict (one row) over keep-alive connections, 2 threads x 16 connections:

  through the proxy   both threads to the proxy;
  direct              one thread per replica (wrk's setup() gives each thread a replica's
                      address): the same replicas and connections, no proxy between;
  tcp relay           (in the network, at saturation) a second HAProxy of the same image
                      beside it, finding the same replicas the same way, that relays
                      bytes (mode tcp: no HTTP parsing, no per-request balancing or
                      retries): the least any proxy's hop costs on this machine, what
                      the HTTP proxy's figures are to be read against.

From the host, to the ports published on 127.0.0.1 (Docker's userland proxy, docker-proxy,
relays them); in the network, the same wrk binary inside the network namespace of an idle
container on the Compose network (`nsenter --net`, as root): what a service next to the
API sees. Three loads each: saturation (wrk as fast as it can: req/s, and the p99 at that
load), paced (each connection waits between requests, ~--paced-rps in all: the latency a
moderate load sees), both with one row per request, and saturation with --batch-rows (32)
rows, where the API does more per request and the proxy's share is smaller. --rounds times
(5), every scenario in turn, proxy and direct back to back; figures are medians, ratios
and differences the median of each round's pair. CPU (cores) over each run from the
cgroups: each replica, the proxy; from /proc: docker-proxy, wrk, and the whole machine
(kernel networking included, which no cgroup is charged for), so the proxy's hop can be
priced in CPU per request. Prints a table and writes it to bench/results/proxy.md
with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from model_load_bench.container_cpu import cpu_seconds, cpu_usage_file
from model_load_harness import ROOT
from model_load_harness.compose import Stack
from model_load_harness.machine import describe_machine, docker_version, tool_version
from model_load_harness.ports import free_port
from model_load_harness.waiting import wait_until

RESULTS = ROOT / "bench" / "results" / "proxy.md"
PROJECT = "modelload-bench-proxy"
RELAY = "tcp relay"

# The floor: HAProxy relaying TCP to the same replicas, found through the same DNS.
RELAY_CONFIG = """
global
    nbthread 1
    maxconn 2048
defaults
    mode tcp
    timeout connect 250ms
    timeout client 30s
    timeout server 30s
resolvers docker
    nameserver embedded 127.0.0.11:53
    hold valid 1s
listen relay
    bind :8000
    balance roundrobin
    server-template api 16 api:8000 resolvers docker init-addr none check inter 500ms
"""

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local rows = {}
for i = 1, tonumber(os.getenv("BENCH_ROWS") or "1") do rows[i] = "[5.1, 3.5, 1.4, 0.2]" end
wrk.body = '{"data": [' .. table.concat(rows, ", ") .. ']}'
local targets, pace = os.getenv("BENCH_TARGETS") or "", tonumber(os.getenv("BENCH_DELAY_MS"))
local list, n = {}, 0
for t in string.gmatch(targets, "[^,]+") do table.insert(list, t) end
function setup(thread)
  if #list > 0 then  -- direct: thread i to replica i
    local host, port = list[n % #list + 1]:match("([^:]+):(%d+)")
    thread.addr = wrk.lookup(host, port)[1]
    n = n + 1
  end
end
if pace and pace > 0 then
  function delay() return pace end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: dict[str, float]  # cores over the run: replica names, "proxy", "docker-proxy",
    # "wrk", and "machine" (all CPUs busy, kernel included: /proc/stat)


@dataclass
class Scenario:
    path: str  # "in the network" | "from the host"
    door: str  # "proxy" | "direct" | RELAY
    load: str  # "saturation" | "paced"
    rows: int = 1
    runs: list[Run] = field(default_factory=list)

    def median(self, pick: str) -> float:
        return statistics.median(getattr(r, pick) for r in self.runs)

    def median_cpu(self, who: str) -> float:
        return statistics.median(r.cpu.get(who, 0.0) for r in self.runs)


class Bench:
    """The stack with compose.debug.yaml (a port per replica) and an idle helper container
    on its network, whose network namespace wrk enters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.stack = Stack(
            args.project,
            env={"PROXY_STATS_HOST_PORT": str(free_port())},
            overrides=[ROOT / "compose.debug.yaml"],
        )
        self.helper = f"{args.project}-wrk-netns"
        self.relay = f"{args.project}-tcp-relay"
        self.relay_config = Path(tempfile.mkdtemp(prefix="bench-proxy-")) / "relay.cfg"

    def up(self) -> None:
        self.stack.up()
        wait_until(
            lambda: len(self.stack.routed()) >= 2, "the proxy routing to both replicas", 60, 0.5
        )
        replicas = self.stack.replicas()
        proxy = self.stack.inspect("proxy")
        network = next(iter(proxy["NetworkSettings"]["Networks"]))
        self.cpu_files = {
            **{c["Name"].lstrip("/"): cpu_usage_file(c["Id"]) for c in replicas},
            "proxy": cpu_usage_file(proxy["Id"]),
        }
        self.relay_config.write_text(RELAY_CONFIG)
        self.relay_config.chmod(0o644)
        subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", self.relay, "--network", network,
             "--cpus", "1", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges",
             "-v", f"{self.relay_config}:/relay.cfg:ro", "--entrypoint", "haproxy",
             proxy["Config"]["Image"], "-db", "-f", "/relay.cfg"],
            check=True, capture_output=True,
        )  # fmt: skip
        relay = json.loads(subprocess.check_output(["docker", "inspect", self.relay], text=True))[0]
        self.cpu_files[RELAY] = cpu_usage_file(relay["Id"])
        self.in_network = {
            "proxy": f"{_ip(proxy)}:8000",
            "direct": ",".join(f"{_ip(c)}:8000" for c in replicas),
            RELAY: f"{_ip(relay)}:8000",
        }
        self.from_host = {
            "proxy": f"127.0.0.1:{self.stack.api_port}",
            "direct": ",".join(
                f"127.0.0.1:{c['NetworkSettings']['Ports']['8000/tcp'][0]['HostPort']}"
                for c in replicas
            ),
        }
        subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", self.helper, "--network", network,
             "--entrypoint", "sleep", replicas[0]["Config"]["Image"], "infinity"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.helper_pid = int(
            subprocess.check_output(
                ["docker", "inspect", "--format", "{{.State.Pid}}", self.helper], text=True
            )
        )
        # The relay's resolver fills its slots within a second or two; the host reaches
        # the Compose network's addresses directly.
        wait_until(
            lambda: _answers(f"http://{self.in_network[RELAY]}/ready"),
            "the tcp relay routing to the replicas", 60, 0.5,
        )  # fmt: skip

    def down(self) -> None:
        for container in (self.helper, self.relay):
            subprocess.run(["docker", "rm", "--force", container], capture_output=True)
        shutil.rmtree(self.relay_config.parent, ignore_errors=True)
        self.stack.down()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: containers (cgroups), docker-proxy (/proc), wrk (children)."""
        out = {name: cpu_seconds(path) or 0.0 for name, path in self.cpu_files.items()}
        out["docker-proxy"] = sum(_proc_cpu_seconds(p) for p in _pids_named("docker-proxy"))
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["wrk"] = usage.ru_utime + usage.ru_stime
        out["machine"] = _busy_cpu_seconds()
        return out

    def run(self, scenario: Scenario, args: argparse.Namespace, seconds: float) -> Run:
        addresses = self.in_network if scenario.path == "in the network" else self.from_host
        target = addresses[scenario.door]
        url = f"http://{target.split(',')[0]}/predict"
        env = {
            **os.environ,
            "BENCH_TARGETS": target if scenario.door == "direct" else "",
            "BENCH_ROWS": str(scenario.rows),
            "BENCH_DELAY_MS": str(round(args.connections * 1000 / args.paced_rps))
            if scenario.load == "paced"
            else "0",
        }
        prefix = ["nsenter", f"--net=/proc/{self.helper_pid}/ns/net"]
        command = [
            *(prefix if scenario.path == "in the network" else []),
            "wrk", "-t2", f"-c{args.connections}", f"-d{seconds:g}s", "-s", args.lua, url,
        ]  # fmt: skip
        before, started = self.cpu(), time.monotonic()
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        elapsed, after = time.monotonic() - started, self.cpu()
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        r = json.loads(line.removeprefix("RESULT "))
        return Run(
            r["requests"] / (r["duration_us"] / 1e6),
            r["p50_us"] / 1000,
            r["p99_us"] / 1000,
            r["errors"],
            {k: (after[k] - before[k]) / elapsed for k in after},
        )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _ip(container: dict) -> str:
    return next(iter(container["NetworkSettings"]["Networks"].values()))["IPAddress"]


def _busy_cpu_seconds() -> float:
    """CPU seconds all CPUs spent on anything but idling, since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _pids_named(name: str) -> list[int]:
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(scenarios: list[Scenario], replicas: list[str]) -> list[str]:
    lines = [
        "| measured | rows | load | door | req/s | p50 ms | p99 ms | CPU per replica "
        "| proxy | docker-proxy | wrk | machine | machine µs/request | errors |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        per_replica = " / ".join(f"{s.median_cpu(r):.2f}" for r in replicas)
        per_request = statistics.median(r.cpu["machine"] / r.rps * 1e6 for r in s.runs)
        lines.append(
            f"| {s.path} | {s.rows} | {s.load} | {s.door} | {s.median('rps'):,.0f} | "
            f"{s.median('p50_ms'):.2f} | {s.median('p99_ms'):.2f} | {per_replica} | "
            f"{s.median_cpu(s.door if s.door == RELAY else 'proxy'):.2f} | "
            f"{s.median_cpu('docker-proxy'):.2f} | "
            f"{s.median_cpu('wrk'):.2f} | {s.median_cpu('machine'):.2f} | {per_request:.0f} | "
            f"{sum(r.errors for r in s.runs)} |"
        )
    return lines


def verdicts(scenarios: list[Scenario]) -> list[str]:
    """Per path and load: through the proxy vs direct, as the median of each round's pair."""
    out = []
    by = {(s.path, s.rows, s.load, s.door): s for s in scenarios}
    for path, rows, load in dict.fromkeys((s.path, s.rows, s.load) for s in scenarios):
        direct = by[(path, rows, load, "direct")]
        for door, name in (("proxy", "the proxy"), (RELAY, "the tcp relay")):
            if (path, rows, load, door) not in by:
                continue
            pairs = list(zip(by[(path, rows, load, door)].runs, direct.runs, strict=True))
            ratio = statistics.median(p.rps / d.rps for p, d in pairs)
            p50 = statistics.median(p.p50_ms - d.p50_ms for p, d in pairs)
            p99 = statistics.median(p.p99_ms - d.p99_ms for p, d in pairs)
            cost = statistics.median(
                p.cpu["machine"] / p.rps * 1e6 - d.cpu["machine"] / d.rps * 1e6 for p, d in pairs
            )
            out.append(
                f"- {path}, {rows} row{'s' if rows > 1 else ''}, {load}: through {name} "
                f"{ratio:.0%} of the direct req/s, p50 {p50:+.2f} ms, p99 {p99:+.2f} ms; its "
                f"hop costs the machine {cost:.0f} µs of CPU per request"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6, help="per run (6)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--paced-rps", type=float, default=1000, help="the paced load (1000)")
    parser.add_argument(
        "--batch-rows", type=int, default=32, help="rows per request of the batch runs (32)"
    )
    parser.add_argument("--project", default=PROJECT)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench-proxy: needs root (nsenter into the Compose network)", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(LUA)
    args.lua = lua.name

    scenarios = [
        Scenario(path, door, load, rows)
        for path in ("in the network", "from the host")
        for rows, load in [(1, "saturation"), (1, "paced"), (args.batch_rows, "saturation")]
        for door in ("proxy", "direct", RELAY)
        if door != RELAY or (path == "in the network" and load == "saturation")
    ]
    stack = Bench(args)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    try:
        stack.up()
        for scenario in scenarios:  # warm-up: each once, discarded
            stack.run(scenario, args, 2)
        for i in range(args.rounds):
            for scenario in scenarios:
                scenario.runs.append(stack.run(scenario, args, args.seconds))
            print(f"round {i + 1}/{args.rounds} done", flush=True)
        replicas = [name for name in stack.cpu_files if name not in ("proxy", RELAY)]
    finally:
        stack.down()
        os.unlink(lua.name)
    load_after = os.getloadavg()
    where = describe_machine(docker_version(), tool_version("wrk", "-v").split(" Copyright")[0])

    lines = [
        "# The proxy's cost: the API replicas through HAProxy and reached directly",
        "",
        f"`make bench-proxy` ({started_at:%Y-%m-%d %H:%M} UTC): 2 replicas of 1 CPU "
        f"(API_WORKERS=auto: one worker each), POST /predict with 1 row (and "
        f"{args.batch_rows}), wrk 2 threads x {args.connections} keep-alive connections, "
        f"{args.seconds:g} s per run, {args.rounds} rounds (medians); paced: "
        f"~{args.paced_rps:g} req/s in all. CPU in cores over each run: per container from "
        "its cgroup, docker-proxy and wrk from /proc, *machine*: all CPUs busy (kernel "
        "networking included, which no container is charged for).",
        "",
        *table(scenarios, replicas),
        "",
        *verdicts(scenarios),
        "",
        f"Machine: {where}. Shared with other work: load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. wrk, the proxy, "
        "docker-proxy and the replicas share its CPUs: through the proxy, the proxy's CPU "
        "comes out of what the replicas could use.",
        "",
        "How to read it: *in the network* is what a service next to the API sees, the "
        "proxy's own cost; *from the host* adds Docker's userland proxy (docker-proxy), "
        "which relays every published port, to both doors. Per-replica CPU shows how the "
        "load spreads; capacity with more CPUs is per-replica capacity x replicas "
        '(docs/performance.md, "Sizing").',
    ]
    print("\n".join(lines))
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
