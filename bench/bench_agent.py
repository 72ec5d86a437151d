#!/usr/bin/env python3
"""Benchmark the agent's own cost: per-RPC overhead, start-up, memory, scaling with volumes, concurrency.

Prints medians and RATIOS against a floor, never asserts on time: a benchmark
is not a test. Needs root only for ``--lvm`` (loop devices, lvm2).

    python3 bench/bench_agent.py [--calls N] [--curve 10,100,1000,10000] [--concurrency 8] [--lvm] [--json OUT]

The floor of an RPC that runs no command is a bare gRPC server in the same
interpreter (``bare_grpc_server.py``: the CSI Identity stub answering an empty
ProbeResponse, no interceptor, no validation, no log); the same server is the
floor of start-up (exec to first answered Probe) and of memory (its VmRSS),
which is read for the agent with and without ``--metrics-address``. Everything lives in one ``basalt-bench-*`` workspace
(``bench_file_pool.Workspace``; with ``--lvm`` the VG of ``bench_lvm_pool``),
removed at the end, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent import futures
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if TYPE_CHECKING:  # mypy (scripts/lint.sh) sees the bench directory as the namespace package "bench"
    import bench.bench_lvm_pool as lp
    import bench.benchlib as bl
else:  # the bench directory is not a package: found through sys.path
    import bench_lvm_pool as lp
    import benchlib as bl

from basalt_agent.proto import csi_pb2, csi_pb2_grpc

DEFAULT_CALLS = 300
DEFAULT_CURVE = "10,100,1000,10000"
DEFAULT_CURVE_SAMPLES = 30
DEFAULT_CONCURRENCY = 8
FILL_SIZE = 4 * bl.MiB  # the volumes that fill the pool for the curve (one LVM extent)
FILL_THREADS = 4
STARTS = 5
MEMORY_READINGS = 3  # idle VmRSS of each side: the median of this many starts
IDLE = 1.0  # seconds after the first answered Probe at which VmRSS is read
BARE_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare_grpc_server.py")


# -- the floor: a bare gRPC server ------------------------------------------------------

class BareServer:
    """``bare_grpc_server.py`` as a child process; the same start and memory readings as Agent."""

    def __init__(self, workspace: bl.Workspace) -> None:
        self.home = workspace.mkdir("bare")
        self.socket = os.path.join(self.home, "bare.sock")
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.channel: Optional[grpc.Channel] = None
        self.identity: Any = None

    def start(self) -> float:
        """Start it; return the seconds from exec to its first answered Probe."""
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        started = bl.now()
        self.proc = subprocess.Popen([sys.executable, BARE_SERVER, self.socket], stdin=subprocess.DEVNULL)
        channel = grpc.insecure_channel("unix://" + self.socket, options=bl.CHANNEL_OPTIONS)
        identity = csi_pb2_grpc.IdentityStub(channel)
        while bl.now() - started < bl.START_TIMEOUT:
            if self.proc.poll() is not None:
                raise bl.BenchError(f"the bare server exited with {self.proc.returncode}")
            if os.path.exists(self.socket):
                try:
                    identity.Probe(csi_pb2.ProbeRequest(), timeout=2)
                    took = bl.now() - started
                    self.channel, self.identity = channel, identity
                    return took
                except grpc.RpcError:
                    pass
            time.sleep(0.001)
        raise bl.BenchError("the bare server never answered Probe")

    def memory(self) -> Dict[str, int]:
        assert self.proc is not None
        return _memory(self.proc.pid)

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


def _memory(pid: int) -> Dict[str, int]:
    found: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


# -- benchmark 1: RPCs that run no command -----------------------------------------------

def no_command_calls(agent: bl.Agent) -> Dict[str, Callable[[], Any]]:
    """Calls answered without any external command: a Probe, capability questions, a repeated create."""
    created = bl.create_volume(agent, bl.unique("bench-overhead"))
    name = bl.unique("bench-again")
    bl.create_volume(agent, name)
    again = csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[bl.mount_capability()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=bl.VOLUME_SIZE, limit_bytes=bl.VOLUME_SIZE))
    validate = csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=created.volume_id,
                                                         volume_capabilities=[bl.mount_capability()])
    return {
        "Probe": lambda: agent.identity.Probe(csi_pb2.ProbeRequest(), timeout=bl.RPC_TIMEOUT),
        "GetPluginCapabilities": lambda: agent.identity.GetPluginCapabilities(
            csi_pb2.GetPluginCapabilitiesRequest(), timeout=bl.RPC_TIMEOUT),
        "ControllerGetCapabilities": lambda: agent.controller.ControllerGetCapabilities(
            csi_pb2.ControllerGetCapabilitiesRequest(), timeout=bl.RPC_TIMEOUT),
        "ValidateVolumeCapabilities": lambda: agent.controller.ValidateVolumeCapabilities(
            validate, timeout=bl.RPC_TIMEOUT),
        "CreateVolume (exists)": lambda: agent.controller.CreateVolume(again, timeout=bl.RPC_TIMEOUT),
    }


def bench_overhead(agent: bl.Agent, bare: BareServer, calls: int) -> List[bl.Row]:
    """Each call *calls* times, alternating with a bare Probe, after 20 untimed warm-up calls of each."""
    def floor_call() -> Any:
        return bare.identity.Probe(csi_pb2.ProbeRequest(), timeout=bl.RPC_TIMEOUT)

    def measure(operation: str, call: Callable[[], Any]) -> bl.Row:
        basalt, floor = bl.Samples(), bl.Samples()
        for _ in range(20):
            call()
            floor_call()
        bl.interleave(calls, [lambda i: basalt.add(bl.timed(call)[0]),
                              lambda i: floor.add(bl.timed(floor_call)[0])])
        return bl.Row("1 no-command RPC", operation, basalt, "bare gRPC Probe", floor)

    return [measure(operation, call) for operation, call in no_command_calls(agent).items()]


# -- benchmark 2: start-up and memory ----------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on at this moment (for the agent's --metrics-address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serving_metrics(agent: bl.Agent) -> Callable[[], float]:
    """*agent* given ``--metrics-address``: its start, on a port free at that moment."""
    agent.args += ["--metrics-address", ""]

    def start() -> float:
        agent.args[-1] = f"127.0.0.1:{free_port()}"
        return agent.start()

    return start


def role_environment() -> Dict[str, str]:
    """The environment the agent role gives the agent's service (roles/agent/vars/main.yml)."""
    role_vars = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "roles", "agent", "vars", "main.yml")
    with open(role_vars, encoding="utf-8") as handle:
        return {str(k): str(v) for k, v in yaml.safe_load(handle)["basalt_agent_environment"].items()}


def idle_memory(start: Callable[[], Any], read: Callable[[], Dict[str, int]], stop: Callable[[], None]
                ) -> Dict[str, Any]:
    """VmRSS (KiB) IDLE seconds after start-up, over MEMORY_READINGS starts: each reading and the median."""
    readings = []
    for _ in range(MEMORY_READINGS):
        start()
        time.sleep(IDLE)
        readings.append(read())
        stop()
    return {"VmRSS": int(statistics.median(r["VmRSS"] for r in readings)), "readings": readings}


def bench_startup(workspace: bl.Workspace, pool_dir: str, bare: BareServer) -> Tuple[bl.Row, Dict[str, Any]]:
    agent = bl.Agent(workspace, "startup", pool_dir)
    with_metrics = bl.Agent(workspace, "startup-metrics", pool_dir)
    metrics_start = serving_metrics(with_metrics)
    installed = bl.Agent(workspace, "startup-installed", pool_dir)  # as the agent role runs it
    installed.env = role_environment()
    installed_start = serving_metrics(installed)
    basalt, floor = bl.Samples(), bl.Samples()
    for start, stop in ((agent.start, agent.stop), (metrics_start, with_metrics.stop),
                        (installed_start, installed.stop), (bare.start, bare.stop)):
        start()  # untimed warm-up of each: page cache, and the bytecode cache (see main)
        stop()
    for _ in range(STARTS):
        basalt.add(agent.start())
        agent.stop()
        floor.add(bare.start())
        bare.stop()
    memory = {
        "agent_kib": idle_memory(agent.start, agent.memory, agent.stop),
        "agent_metrics_kib": idle_memory(metrics_start, with_metrics.memory, with_metrics.stop),
        "agent_installed_metrics_kib": idle_memory(installed_start, installed.memory, installed.stop),
        "bare_kib": idle_memory(bare.start, bare.memory, bare.stop),
    }
    return bl.Row("2 start-up", "exec -> first Probe", basalt, "bare gRPC server", floor), memory


# -- benchmark 3: CreateVolume as the pool fills ------------------------------------------

def fill(agent: bl.Agent, count: int, label: str) -> float:
    """*count* small volumes through CreateVolume, FILL_THREADS at a time; return the seconds it took."""
    request = csi_pb2.CapacityRange(required_bytes=FILL_SIZE, limit_bytes=FILL_SIZE)

    def one(i: int) -> None:
        agent.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
            name=f"bench-fill-{label}-{i}", capacity_range=request, volume_capabilities=[bl.mount_capability()]),
            timeout=bl.RPC_TIMEOUT)

    start = bl.now()
    with futures.ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(one, range(count)))
    return bl.now() - start


def bench_curve(agent: bl.Agent, levels: Sequence[int], samples: int, label: str
                ) -> Tuple[List[bl.Row], Dict[str, Any]]:
    """At each fill level: *samples* CreateVolume (then an untimed DeleteVolume); ratio to the first level."""
    rows: List[bl.Row] = []
    filled = 0
    facts: Dict[str, Any] = {"fill_seconds": {}}
    first: Optional[bl.Samples] = None
    for level in levels:
        if level > filled:
            facts["fill_seconds"][str(level)] = fill(agent, level - filled, f"{label}-{filled}")
            filled = level
        creates = bl.Samples()
        for _ in range(samples):
            took, volume = bl.timed(lambda: bl.create_volume(agent, bl.unique("bench-curve")))
            creates.add(took)
            bl.delete_volume(agent, volume.volume_id)
        first = first or creates
        rows.append(bl.Row(f"3 curve ({label})", f"CreateVolume @ {level} volumes", creates,
                           f"CreateVolume @ {levels[0]} volumes", first))
        print(f"    {label} @ {level}: CreateVolume median {creates.median * 1000:.2f} ms", flush=True)
    return rows, facts


# -- benchmark 4: concurrent creates ------------------------------------------------------

def bench_concurrency(agent: bl.Agent, n: int, rounds: int, label: str) -> List[bl.Row]:
    """N CreateVolume one after another against N at once (distinct names); DeleteVolume untimed."""
    serial, parallel = bl.Samples(), bl.Samples()

    def batch(concurrent: bool) -> float:
        names = [bl.unique(f"bench-conc-{i}") for i in range(n)]
        with futures.ThreadPoolExecutor(n if concurrent else 1) as pool:
            took, made = bl.timed(lambda: list(pool.map(lambda name: bl.create_volume(agent, name), names)))
        for volume in made:
            bl.delete_volume(agent, volume.volume_id)
        return float(took)

    batch(True)  # warm-up
    bl.interleave(rounds, [lambda i: serial.add(batch(False)), lambda i: parallel.add(batch(True))])
    return [bl.Row(f"4 concurrency ({label})", f"{n} CreateVolume at once", parallel,
                   f"the same {n} one after another", serial)]


# -- main -----------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help=f"calls per RPC (default {DEFAULT_CALLS})")
    parser.add_argument("--curve", default=DEFAULT_CURVE, help=f"fill levels, file pool (default {DEFAULT_CURVE})")
    parser.add_argument("--curve-samples", type=int, default=DEFAULT_CURVE_SAMPLES)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="creates at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the concurrency benchmark")
    parser.add_argument("--lvm", action="store_true", help="also the lvm pool (loop activation): curve, concurrency")
    parser.add_argument("--lvm-curve", default="10,100", help="fill levels of the lvm pool (default 10,100)")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--tmpdir", help="where to make the workspace (default: the system temp dir)")
    args = parser.parse_args(argv)
    if args.lvm and os.geteuid() != 0:
        print("bench_agent: --lvm needs root (loop devices, lvm2)", file=sys.stderr)
        return 2
    curve = [int(x) for x in args.curve.split(",") if x]
    lvm_curve = [int(x) for x in args.lvm_curve.split(",") if x]

    signal.signal(signal.SIGTERM, bl._raise_interrupt)
    workspace = lp.LvmWorkspace(args.tmpdir)
    report: Dict[str, Any] = {"calls": args.calls}
    # The agent runs from its bytecode, as an installed package does: a source tree run with
    # PYTHONDONTWRITEBYTECODE would recompile every module at every start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = workspace.mkdir("pycache")

    def run() -> List[bl.Row]:
        rows: List[bl.Row] = []
        facts = bl.machine_facts(workspace)
        report["facts"] = facts
        print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
        pool_dir = workspace.mkdir("pool")
        bare = BareServer(workspace)
        workspace.agents.append(bare)  # type: ignore[arg-type]  # stopped with the agents

        print(f"[2] start-up: {STARTS} starts of the agent and of a bare gRPC server", flush=True)
        startup_row, report["memory"] = bench_startup(workspace, pool_dir, bare)

        agent = bl.Agent(workspace, "main", pool_dir)
        agent.start()
        bare.start()
        print(f"[1] RPCs that run no command, {args.calls} calls each", flush=True)
        rows += bench_overhead(agent, bare, args.calls)
        bare.stop()
        rows.append(startup_row)
        print(f"[4] concurrency (file): {args.concurrency} creates, {args.rounds} rounds", flush=True)
        rows += bench_concurrency(agent, args.concurrency, args.rounds, "file")
        if curve:
            print(f"[3] curve (file): {curve}", flush=True)
            curve_rows, report["curve_file"] = bench_curve(agent, curve, args.curve_samples, "file")
            rows += curve_rows
        agent.stop()

        if args.lvm:
            vg = workspace.make_vg(lp.DEFAULT_METADATA_SIZE)
            lvm_agent, lvm_metrics = lp.LvmAgent(workspace, "lvm", vg), lp.LvmAgent(workspace, "lvm-metrics", vg)
            lvm_installed = lp.LvmAgent(workspace, "lvm-installed", vg)
            lvm_installed.env = role_environment()
            for one in (lvm_agent, lvm_metrics, lvm_installed):
                one.args[one.args.index("--log-level") + 1] = "info"
            print("[2] idle memory of an lvm pool's agent with --metrics-address", flush=True)
            for key, one in (("lvm_agent_metrics_kib", lvm_metrics),
                             ("lvm_agent_installed_metrics_kib", lvm_installed)):
                start = serving_metrics(one)
                start()  # untimed warm-up: the bytecode cache
                one.stop()
                report["memory"][key] = idle_memory(start, one.memory, one.stop)
            lvm_agent.start()
            print(f"[4] concurrency (lvm, loop): {args.concurrency} creates, {args.rounds} rounds", flush=True)
            rows += bench_concurrency(lvm_agent, args.concurrency, args.rounds, "lvm loop")
            if lvm_curve:
                print(f"[3] curve (lvm, loop): {lvm_curve}", flush=True)
                curve_rows, report["curve_lvm"] = bench_curve(lvm_agent, lvm_curve, max(5, args.curve_samples // 3),
                                                              "lvm loop")
                rows += curve_rows
            lvm_agent.stop()

        print()
        print(bl.table(rows))
        print()
        for row in rows:
            if row.bench.startswith("1 "):
                print(f"{row.operation}: the agent's own part beyond bare gRPC "
                      f"{(row.basalt.median - row.floor.median) * 1000:.3f} ms")
        memory = report["memory"]
        bare_rss = memory["bare_kib"]["VmRSS"]
        print(f"idle memory ({IDLE:.0f} s after start-up, median of {MEMORY_READINGS} starts): "
              f"bare gRPC server VmRSS {bare_rss / 1024:.1f} MiB")
        for key, side in (("agent_kib", "agent (file pool)"),
                          ("agent_metrics_kib", "agent (file pool) --metrics-address"),
                          ("agent_installed_metrics_kib", "agent (file pool) --metrics-address, with the agent "
                           f"role's environment {role_environment()}"),
                          ("lvm_agent_metrics_kib", "agent (lvm pool) --metrics-address"),
                          ("lvm_agent_installed_metrics_kib", "agent (lvm pool) --metrics-address, with the agent "
                           f"role's environment {role_environment()}")):
            if key in memory:
                rss = memory[key]["VmRSS"]
                print(f"  {side}: VmRSS {rss / 1024:.1f} MiB ({rss / bare_rss:.2f}x the bare server, "
                      f"{(rss - bare_rss) / 1024:+.1f} MiB)")
        return rows

    return bl.run_reported("bench_agent", run, workspace, report, args.json, errors=(bl.BenchError, grpc.RpcError))


if __name__ == "__main__":
    sys.exit(main())
