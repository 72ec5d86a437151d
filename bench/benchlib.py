"""What the benchmarks share: the workspace and its clean-up, the agent they run, samples, CSI calls, the report.

Imported by bench_file_pool, bench_lvm_pool and bench_iscsi (the bench
directory is on sys.path when they run).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import grpc

from basalt_agent.launcher import AgentFailed, AgentProcess
from basalt_agent.proto import csi_pb2, csi_pb2_grpc

MiB = 1 << 20
VOLUME_SIZE = 64 * MiB
RPC_TIMEOUT = 120.0
START_TIMEOUT = 60.0
NODE_ID = "bench-node"
# Reconnect quickly: the default 1 s back-off after a refused connect would swamp start-up times.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 5),
    ("grpc.min_reconnect_backoff_ms", 5),
    ("grpc.max_reconnect_backoff_ms", 50),
]

Clock = Callable[[], float]
now: Clock = time.perf_counter


# -- small helpers -------------------------------------------------------------

class BenchError(Exception):
    pass


def run(argv: Sequence[str]) -> str:
    """Run a command; return its stdout; raise with its stderr when it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def timed(action: Callable[[], Any]) -> Tuple[float, Any]:
    """Seconds *action* took, and what it returned."""
    start = now()
    value = action()
    return now() - start, value


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fs_type(path: str) -> str:
    """The type of the filesystem holding *path* (``stat -f`` would say ext2/ext3 for ext4); of a stack of
    mounts on one point (the VM tier's ext4 /tmp over its tmpfs) findmnt lists the visible one last."""
    return run(["findmnt", "--noheadings", "--output", "FSTYPE", "--target", path]).split()[-1]


@dataclass
class Samples:
    """Seconds per sample; reported in milliseconds."""

    values: List[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def summary(self) -> Dict[str, Any]:
        ms = sorted(v * 1000.0 for v in self.values)
        if not ms:
            return {"n": 0}
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        return {"n": len(ms), "median_ms": statistics.median(ms), "min_ms": ms[0], "p90_ms": p90,
                "max_ms": ms[-1], "samples_ms": [round(v, 3) for v in self.values_ms()]}

    def values_ms(self) -> List[float]:
        return [v * 1000.0 for v in self.values]


@dataclass
class Row:
    bench: str
    operation: str
    basalt: Samples
    floor_name: str
    floor: Samples

    @property
    def ratio(self) -> float:
        floor = self.floor.median
        return self.basalt.median / floor if floor > 0 else float("nan")

    def to_json(self) -> Dict[str, Any]:
        return {"bench": self.bench, "operation": self.operation, "basalt": self.basalt.summary(),
                "floor_name": self.floor_name, "floor": self.floor.summary(), "ratio": self.ratio}


# -- the workspace: everything created, and its clean-up ------------------------

class Workspace:
    """A fresh directory that holds everything this run makes; ``cleanup`` undoes all of it."""

    def __init__(self, base: Optional[str]) -> None:
        self.root = os.path.realpath(tempfile.mkdtemp(prefix="basalt-bench-", dir=base))
        self.agents: List[Agent] = []

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def mkdir(self, *parts: str) -> str:
        path = self.path(*parts)
        os.makedirs(path, exist_ok=True)
        return path

    def _inside(self, path: str) -> bool:
        return path.startswith(self.root + "/")

    def my_mounts(self) -> List[str]:
        """Mount points under the workspace (only this run mounts there), deepest first."""
        found = []
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                point = line.split()[4].replace("\\040", " ")
                if self._inside(point):
                    found.append(point)
        return sorted(found, key=lambda p: (p.count("/"), len(p)), reverse=True)

    def my_loop_devices(self) -> List[str]:
        """Loop devices backed by files of this workspace: ``losetup -j`` of each image file here,
        plus any whose backing file here was already deleted."""
        devices: List[str] = []
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                if not name.endswith(".img") or not os.path.isfile(path):
                    continue
                for line in run(["losetup", "-j", path]).splitlines():
                    if line.strip():
                        devices.append(line.split(":", 1)[0])
        listing = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]).strip()
        for entry in json.loads(listing).get("loopdevices", []) if listing else []:
            backing = (entry.get("back-file") or "").removesuffix(" (deleted)")
            if self._inside(backing):
                devices.append(entry["name"])
        return sorted(set(devices))

    def stop_agents(self) -> List[str]:
        """Stop this run's agents, newest first, each once; return what failed."""
        problems: List[str] = []
        while self.agents:
            agent = self.agents.pop()
            try:
                agent.stop()
            except Exception as error:
                problems.append(f"stopping agent {agent.name}: {error}")
        return problems

    def release(self, loop_devices: Callable[[], List[str]]) -> None:
        """Unmount everything under the workspace and detach *loop_devices*.

        Stacked mounts and a pool filesystem that holds attached images need a few passes.
        """
        for _ in range(8):
            if not self.my_mounts() and not loop_devices():
                break
            for point in self.my_mounts():
                subprocess.run(["umount", point], capture_output=True, check=False)
            for device in loop_devices():
                subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
            time.sleep(0.1)

    def cleanup(self) -> List[str]:
        """Stop agents, unmount, detach, remove; return what could not be undone."""
        problems = self.stop_agents()
        self.release(self.my_loop_devices)
        leftovers = self.my_mounts()
        if leftovers:
            # Never remove files under a live mount.
            problems.append(f"still mounted, left {self.root} in place: {', '.join(leftovers)}")
        else:
            loops = self.my_loop_devices()
            if loops:
                problems.append(f"loop devices still attached: {', '.join(loops)}")
            shutil.rmtree(self.root, ignore_errors=True)
            if os.path.exists(self.root):
                problems.append(f"could not remove {self.root}")
        return problems


# -- the agent ------------------------------------------------------------------

class Agent:
    """One agent (basalt_agent.launcher) serving a file pool on a socket of the workspace."""

    def __init__(self, workspace: Workspace, name: str, pool_dir: str) -> None:
        self.name = name
        self.home = workspace.mkdir("agents", name)
        self.socket = os.path.join(self.home, "csi.sock")
        #: the agent's arguments after --endpoint
        self.args = ["--node-id", NODE_ID, "--pool", "file:" + pool_dir,
                     "--state-dir", os.path.join(self.home, "state")]
        self.log_path = os.path.join(self.home, "agent.log")
        #: variables added to the agent's environment
        self.env: Dict[str, str] = {}
        self.process: Optional[AgentProcess] = None
        self.channel: Optional[grpc.Channel] = None
        self.identity: Any = None
        self.controller: Any = None
        self.node: Any = None
        workspace.agents.append(self)

    @property
    def argv(self) -> List[str]:
        return AgentProcess(self.socket, self.args, log_path=self.log_path).argv

    @property
    def pid(self) -> int:
        if self.process is None or self.process.proc is None:
            raise BenchError(f"agent {self.name} is not running")
        return self.process.proc.pid

    def start(self) -> float:
        """Start the agent; return the seconds from exec to its first successful Probe."""
        if self.process is not None:
            raise BenchError(f"agent {self.name} is already running")
        self.process = AgentProcess(self.socket, self.args, log_path=self.log_path,
                                    env={**os.environ, **self.env} if self.env else None)
        self.process.start()
        try:
            ready = self.process.wait_ready(START_TIMEOUT, poll=0.001)
        except AgentFailed as failure:
            raise BenchError(f"agent {self.name}: {failure}") from None
        self.channel = grpc.insecure_channel("unix://" + self.socket, options=CHANNEL_OPTIONS)
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        return ready

    def stop(self) -> None:
        """SIGTERM and wait (it finishes in-flight calls and removes its socket); SIGKILL if it hangs."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        process, self.process = self.process, None
        if process is not None:
            process.stop(timeout=45)

    def memory(self) -> Dict[str, int]:
        """VmRSS and VmHWM of the agent, in KiB, from /proc/PID/status."""
        found: Dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
        return found


# -- CSI request builders ---------------------------------------------------------

def mount_capability() -> Any:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def create_volume(agent: Agent, name: str, snapshot_id: str = "") -> Any:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=VOLUME_SIZE, limit_bytes=VOLUME_SIZE),
        volume_capabilities=[mount_capability()],
    )
    if snapshot_id:
        request.volume_content_source.snapshot.snapshot_id = snapshot_id
    return agent.controller.CreateVolume(request, timeout=RPC_TIMEOUT).volume


def delete_volume(agent: Agent, volume_id: str) -> None:
    agent.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)


def stage(agent: Agent, volume_id: str, staging: str) -> None:
    agent.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume_id, staging_target_path=staging, volume_capability=mount_capability()), timeout=RPC_TIMEOUT)


def publish(agent: Agent, volume_id: str, staging: str, target: str) -> None:
    agent.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, staging_target_path=staging, target_path=target,
        volume_capability=mount_capability()), timeout=RPC_TIMEOUT)


def unpublish(agent: Agent, volume_id: str, target: str) -> None:
    agent.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
                                   timeout=RPC_TIMEOUT)


def unstage(agent: Agent, volume_id: str, staging: str) -> None:
    agent.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
                                 timeout=RPC_TIMEOUT)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def interleave(rounds: int, variants: Sequence[Callable[[int], None]]) -> None:
    """Run each variant *rounds* times, rotating which goes first so drift hits all alike."""
    for i in range(rounds):
        shift = i % len(variants)
        for variant in list(variants[shift:]) + list(variants[:shift]):
            variant(i)


# -- report --------------------------------------------------------------------------------

def machine_facts(workspace: Workspace) -> Dict[str, Any]:
    import google.protobuf

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "workspace": workspace.root,
        "workspace_fs": fs_type(workspace.root),
        "volume_size_mib": VOLUME_SIZE // MiB,
        "loadavg_at_start": os.getloadavg()[0],
    }


def table(rows: List[Row]) -> str:
    header = ["benchmark", "operation", "basalt ms", "floor", "floor ms", "ratio"]
    lines = [[r.bench, r.operation, f"{r.basalt.median * 1000:.2f}", r.floor_name,
              f"{r.floor.median * 1000:.2f}", f"{r.ratio:.1f}x"] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    right = {2, 4, 5}

    def fmt(cells: List[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(header), rule, *[fmt(line) for line in lines]])


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_reported(name: str, body: Callable[[], List[Row]], workspace: Workspace, report: Dict[str, Any],
                 json_path: Optional[str], errors: Tuple[Type[BaseException], ...]) -> int:
    """Run a benchmark's body, then the tail every benchmark shares; returns the exit status.

    ``body`` does the measuring and printing, stores the machine facts in
    ``report["facts"]`` and returns the rows.  On success the 1-minute load
    average and the rows go into ``report``; an interruption gives status 130,
    one of ``errors`` is printed as ``<name>: <error>`` and gives status 1.  The
    workspace is always cleaned up with SIGINT and SIGTERM held off, each
    clean-up problem is printed and makes the status at least 1.  The report is
    written to ``json_path`` when it is given and the body got to its results.
    """
    status = 0
    problems: List[str] = []
    try:
        rows = body()
        facts = report["facts"]
        report["loadavg_at_end"] = os.getloadavg()[0]
        print(f"1-minute load average: {facts['loadavg_at_start']:.2f} at the start, "
              f"{report['loadavg_at_end']:.2f} at the end (on {facts['cores']} cores)")
        report["results"] = [row.to_json() for row in rows]
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        status = 130
    except errors as error:
        # str() is the message; an exception without one (a bare StopIteration) shows as its repr
        print(f"{name}: {str(error) or repr(error)}", file=sys.stderr)
        status = 1
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            problems = workspace.cleanup()
        finally:
            signal.signal(signal.SIGINT, previous)
        for problem in problems:
            print(f"clean-up: {problem}", file=sys.stderr)
        if problems:
            status = status or 1
    if json_path and "results" in report:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        print(f"wrote {json_path}")
    return status
