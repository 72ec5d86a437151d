#!/usr/bin/env python3
"""Benchmark the Basalt agent's file pool against the floor of the raw commands it runs.

Prints RATIOS (agent over gRPC / the same work done by hand), never asserts on
time: a benchmark is not a test. Needs root, loop devices and mounts.

    python3 bench/bench_file_pool.py [--rounds N] [--json OUT]

Everything it makes lives under one fresh temporary directory: the agents'
pools, sockets and state, its raw images, its loop devices (found through
``losetup -j FILE`` of its own files) and its mounts (mount points under that
directory). All of it is removed at the end, also on Ctrl-C, SIGTERM or an
error. Nothing else is touched.
"""

from __future__ import annotations

import argparse
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
XFS_IMAGE_SIZE = 512 * MiB
SNAPSHOT_DATA = 16 * MiB  # random bytes written into the snapshot source volume
STARTS = 5
RPC_TIMEOUT = 120.0
START_TIMEOUT = 60.0
NODE_ID = "bench-node"
MKFS_EXT4 = ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1"]
COPY_METHOD_KEY = "basalt.dev/copy-method"
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
    """The type of the filesystem holding *path* (``stat -f`` would say ext2/ext3 for ext4)."""
    return run(["findmnt", "--noheadings", "--output", "FSTYPE", "--target", path]).strip()


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
        self.process = AgentProcess(self.socket, self.args, log_path=self.log_path)
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


# -- benchmark 1: CreateVolume + DeleteVolume ---------------------------------------

def bench_create_delete(agent: Agent, workspace: Workspace, rounds: int) -> List[Row]:
    raw_dir = workspace.mkdir("raw", "create")
    g_create, g_delete, g_pair = Samples(), Samples(), Samples()
    s_create, s_delete, s_pair = Samples(), Samples(), Samples()
    p_create, p_delete, p_pair = Samples(), Samples(), Samples()

    def grpc_round(i: int) -> None:
        took_c, volume = timed(lambda: create_volume(agent, f"bench-cd-{i}-{uuid.uuid4().hex[:8]}"))
        took_d, _ = timed(lambda: delete_volume(agent, volume.volume_id))
        g_create.add(took_c)
        g_delete.add(took_d)
        g_pair.add(took_c + took_d)

    def subprocess_round(i: int) -> None:
        image = os.path.join(raw_dir, f"sub-{i}.img")
        took_c, _ = timed(lambda: run(["truncate", "-s", str(VOLUME_SIZE), image]))
        took_d, _ = timed(lambda: run(["rm", image]))
        s_create.add(took_c)
        s_delete.add(took_d)
        s_pair.add(took_c + took_d)

    def inprocess_round(i: int) -> None:
        image = os.path.join(raw_dir, f"inproc-{i}.img")

        def make() -> None:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, VOLUME_SIZE)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(raw_dir)

        def remove() -> None:
            os.unlink(image)
            fsync_dir(raw_dir)

        took_c, _ = timed(make)
        took_d, _ = timed(remove)
        p_create.add(took_c)
        p_delete.add(took_d)
        p_pair.add(took_c + took_d)

    interleave(rounds, [grpc_round, subprocess_round, inprocess_round])
    name = "1 create/delete 64 MiB"
    sub = "truncate -s / rm (subprocess)"
    inproc = "open+ftruncate+fsync / unlink+fsync dir"
    return [
        Row(name, "CreateVolume", g_create, sub, s_create),
        Row(name, "DeleteVolume", g_delete, sub, s_delete),
        Row(name, "Create+Delete", g_pair, sub, s_pair),
        Row(name, "CreateVolume", g_create, inproc, p_create),
        Row(name, "DeleteVolume", g_delete, inproc, p_delete),
        Row(name, "Create+Delete", g_pair, inproc, p_pair),
    ]


def interleave(rounds: int, variants: Sequence[Callable[[int], None]]) -> None:
    """Run each variant *rounds* times, rotating which goes first so drift hits all alike."""
    for i in range(rounds):
        shift = i % len(variants)
        for variant in list(variants[shift:]) + list(variants[:shift]):
            variant(i)


# -- benchmark 2: stage + publish + unpublish + unstage -------------------------------

NODE_STEPS = ("NodeStage", "NodePublish", "NodeUnpublish", "NodeUnstage")
RAW_STEPS = {
    "NodeStage": "losetup --find --show + mkfs.ext4 + mount",
    "NodePublish": "mount --bind",
    "NodeUnpublish": "umount TARGET",
    "NodeUnstage": "umount STAGE + losetup -d",
}


def bench_node(agent: Agent, workspace: Workspace, rounds: int) -> List[Row]:
    mnt = workspace.mkdir("mnt", "node")
    raw_dir = workspace.mkdir("raw", "node")
    basalt: Dict[str, Samples] = {step: Samples() for step in NODE_STEPS}
    floor: Dict[str, Samples] = {step: Samples() for step in NODE_STEPS}
    basalt_total, floor_total = Samples(), Samples()

    def grpc_round(i: int) -> None:
        volume = create_volume(agent, f"bench-node-{i}-{uuid.uuid4().hex[:8]}")
        staging = os.path.join(mnt, f"g-stage-{i}")
        target = os.path.join(mnt, f"g-target-{i}")
        os.mkdir(staging)  # the CO creates the staging directory; the plugin creates the target
        vid = volume.volume_id
        took = {
            "NodeStage": timed(lambda: stage(agent, vid, staging))[0],
            "NodePublish": timed(lambda: publish(agent, vid, staging, target))[0],
            "NodeUnpublish": timed(lambda: unpublish(agent, vid, target))[0],
            "NodeUnstage": timed(lambda: unstage(agent, vid, staging))[0],
        }
        delete_volume(agent, vid)
        os.rmdir(staging)
        for step, seconds in took.items():
            basalt[step].add(seconds)
        basalt_total.add(sum(took.values()))

    def raw_round(i: int) -> None:
        image = os.path.join(raw_dir, f"node-{i}.img")
        staging = os.path.join(mnt, f"r-stage-{i}")
        target = os.path.join(mnt, f"r-target-{i}")
        run(["truncate", "-s", str(VOLUME_SIZE), image])
        os.mkdir(staging)
        os.mkdir(target)
        took: Dict[str, float] = {}
        start = now()
        device = run(["losetup", "--find", "--show", image]).strip()
        run([*MKFS_EXT4, device])
        run(["mount", device, staging])
        took["NodeStage"] = now() - start
        took["NodePublish"] = timed(lambda: run(["mount", "--bind", staging, target]))[0]
        took["NodeUnpublish"] = timed(lambda: run(["umount", target]))[0]
        start = now()
        run(["umount", staging])
        run(["losetup", "-d", device])
        took["NodeUnstage"] = now() - start
        os.rmdir(target)
        os.rmdir(staging)
        os.unlink(image)
        for step, seconds in took.items():
            floor[step].add(seconds)
        floor_total.add(sum(took.values()))

    interleave(rounds, [grpc_round, raw_round])
    name = "2 node stage..unstage ext4"
    rows = [Row(name, step, basalt[step], RAW_STEPS[step], floor[step]) for step in NODE_STEPS]
    rows.append(Row(name, "all four", basalt_total, "the 7 commands", floor_total))
    return rows


# -- benchmark 3: snapshot + volume from snapshot vs cp ---------------------------------

def prepare_source(agent: Agent, workspace: Workspace, pool_dir: str, label: str) -> Tuple[str, str]:
    """A 64 MiB volume holding ext4 and 16 MiB of random data; return its id and image path."""
    volume = create_volume(agent, unique(f"bench-src-{label}"))
    mnt = workspace.mkdir("mnt", f"src-{label}")
    staging = os.path.join(mnt, "stage")
    target = os.path.join(mnt, "target")
    os.mkdir(staging)
    stage(agent, volume.volume_id, staging)
    publish(agent, volume.volume_id, staging, target)
    with open(os.path.join(target, "data.bin"), "wb") as handle:
        for _ in range(SNAPSHOT_DATA // MiB):
            handle.write(os.urandom(MiB))
        handle.flush()
        os.fsync(handle.fileno())
    unpublish(agent, volume.volume_id, target)
    unstage(agent, volume.volume_id, staging)
    image = os.path.join(pool_dir, "volumes", volume.volume_id + ".img")
    if not os.path.isfile(image):
        raise BenchError(f"expected the volume image at {image}")
    return volume.volume_id, image


def bench_snapshot(agent: Agent, workspace: Workspace, pool_dir: str, raw_dir: str, label: str,
                   rounds: int) -> Tuple[List[Row], Dict[str, Any]]:
    source_id, source_image = prepare_source(agent, workspace, pool_dir, label)
    os.makedirs(raw_dir, exist_ok=True)
    probe = os.path.join(raw_dir, "reflink-probe.img")
    reflink = subprocess.run(["cp", "--reflink=always", source_image, probe], capture_output=True,
                             check=False).returncode == 0
    if os.path.exists(probe):
        os.unlink(probe)
    g_snap, g_vol, g_pair = Samples(), Samples(), Samples()
    c_snap, c_vol, c_pair, cs_pair = Samples(), Samples(), Samples(), Samples()
    methods: Dict[str, int] = {}
    cp = ["cp", "--reflink=auto", "--sparse=always"]

    def grpc_round(i: int) -> None:
        name = f"bench-snap-{label}-{i}-{uuid.uuid4().hex[:8]}"
        request = csi_pb2.CreateSnapshotRequest(source_volume_id=source_id, name=name)
        took_s, response = timed(lambda: agent.controller.CreateSnapshot(request, timeout=RPC_TIMEOUT))
        snapshot_id = response.snapshot.snapshot_id
        took_v, volume = timed(lambda: create_volume(agent, name + "-vol", snapshot_id))
        method = volume.volume_context.get(COPY_METHOD_KEY, "?")
        methods[method] = methods.get(method, 0) + 1
        delete_volume(agent, volume.volume_id)
        agent.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=RPC_TIMEOUT)
        g_snap.add(took_s)
        g_vol.add(took_v)
        g_pair.add(took_s + took_v)

    def raw_round(i: int) -> None:
        snap = os.path.join(raw_dir, f"snap-{i}.img")
        copy = os.path.join(raw_dir, f"vol-{i}.img")
        took_s = timed(lambda: run([*cp, source_image, snap]))[0]
        sync_s = timed(lambda: run(["sync", snap]))[0]
        took_v = timed(lambda: run([*cp, snap, copy]))[0]
        sync_v = timed(lambda: run(["sync", copy]))[0]
        os.unlink(copy)
        os.unlink(snap)
        c_snap.add(took_s)
        c_vol.add(took_v)
        c_pair.add(took_s + took_v)
        cs_pair.add(took_s + sync_s + took_v + sync_v)

    interleave(rounds, [grpc_round, raw_round])
    delete_volume(agent, source_id)
    name = f"3 snapshot+clone on {label}"
    one = "cp --reflink=auto --sparse=always"
    rows = [
        Row(name, "CreateSnapshot", g_snap, one, c_snap),
        Row(name, "CreateVolume(from snap)", g_vol, one, c_vol),
        Row(name, "both", g_pair, "2 x cp", c_pair),
        Row(name, "both", g_pair, "2 x (cp + sync FILE)", cs_pair),
    ]
    return rows, {"pool_dir": pool_dir, "pool_fs": fs_type(pool_dir), "agent_copy_methods": methods,
                  "cp_reflink_always_works": reflink}


def make_xfs_pool(workspace: Workspace) -> str:
    """A sparse 512 MiB image with xfs (reflink=1), loop-mounted in the workspace; return the mount."""
    image = workspace.path("xfs-pool.img")
    mount_point = workspace.mkdir("xfs")
    run(["truncate", "-s", str(XFS_IMAGE_SIZE), image])
    run(["mkfs.xfs", "-q", "-m", "reflink=1", image])
    device = run(["losetup", "--find", "--show", image]).strip()
    run(["mount", "-t", "xfs", device, mount_point])
    return mount_point


# -- benchmark 4: start-up and memory ----------------------------------------------------

def bench_startup(workspace: Workspace, pool_dir: str) -> Tuple[Row, Dict[str, Any]]:
    agent = Agent(workspace, "startup", pool_dir)
    floor_argv = [sys.executable, "-c", "import grpc"]
    basalt, floor = Samples(), Samples()
    # One untimed warm-up of each, so both are measured with a warm page cache.
    agent.start()
    agent.stop()
    run(floor_argv)
    for _ in range(STARTS):
        basalt.add(agent.start())
        agent.stop()
        floor.add(timed(lambda: run(floor_argv))[0])
    row = Row("4 start-up", "exec -> first Probe", basalt, "python3 -c 'import grpc'", floor)
    status = run([sys.executable, "-c", "import grpc; print(open('/proc/self/status').read())"])
    rss = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
    return row, {"starts": STARTS, "floor_rss_kib": rss[0] if rss else 0}


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30, help="rounds per benchmark (default 30)")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--tmpdir", help="where to make the workspace (default: the system temp dir)")
    parser.add_argument("--skip-xfs", action="store_true", help="do not build the xfs pool for benchmark 3")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        print("bench_file_pool: needs root (loop devices and mounts)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _raise_interrupt)
    workspace = Workspace(args.tmpdir)
    report: Dict[str, Any] = {"rounds": args.rounds}

    def run() -> List[Row]:
        rows: List[Row] = []
        facts = machine_facts(workspace)
        report["facts"] = facts
        print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
        pool_dir = workspace.mkdir("pool")

        print(f"[4] start-up: {STARTS} starts of the agent and of python3 -c 'import grpc'", flush=True)
        startup_row, startup = bench_startup(workspace, pool_dir)
        report["startup"] = startup

        agent = Agent(workspace, "main", pool_dir)
        agent.start()
        time.sleep(1.0)
        memory: Dict[str, Any] = {"after_start_kib": agent.memory()}

        print(f"[1] CreateVolume + DeleteVolume, {args.rounds} rounds", flush=True)
        rows += bench_create_delete(agent, workspace, args.rounds)
        print(f"[2] NodeStage..NodeUnstage, {args.rounds} rounds", flush=True)
        rows += bench_node(agent, workspace, args.rounds)
        print(f"[3] snapshot + clone on the default pool ({fs_type(pool_dir)}), {args.rounds} rounds", flush=True)
        snap_rows, report["snapshot_default"] = bench_snapshot(
            agent, workspace, pool_dir, workspace.path("raw", "snap"), fs_type(pool_dir), args.rounds)
        rows += snap_rows
        time.sleep(1.0)
        memory["after_rounds_kib"] = agent.memory()
        report["memory"] = memory
        agent.stop()

        if args.skip_xfs:
            report["snapshot_xfs"] = {"skipped": "--skip-xfs"}
        else:
            try:
                xfs_mount = make_xfs_pool(workspace)
            except BenchError as error:
                print(f"[3] xfs pool skipped: {error}", flush=True)
                report["snapshot_xfs"] = {"skipped": str(error)}
            else:
                print(f"[3] snapshot + clone on an xfs pool (reflink), {args.rounds} rounds", flush=True)
                xfs_pool = os.path.join(xfs_mount, "pool")
                xfs_agent = Agent(workspace, "xfs", xfs_pool)
                xfs_agent.start()
                xfs_rows, report["snapshot_xfs"] = bench_snapshot(
                    xfs_agent, workspace, xfs_pool, os.path.join(xfs_mount, "raw"), "xfs", args.rounds)
                rows += xfs_rows
                xfs_agent.stop()
        rows.append(startup_row)

        print()
        print(table(rows))
        after_start = memory["after_start_kib"]
        after_rounds = memory["after_rounds_kib"]
        print()
        print(f"agent memory: VmRSS {after_start.get('VmRSS', 0) / 1024:.1f} MiB after start-up, "
              f"{after_rounds.get('VmRSS', 0) / 1024:.1f} MiB after the rounds of benchmarks 1-3 "
              f"(VmHWM {after_rounds.get('VmHWM', 0) / 1024:.1f} MiB); floor: python3 after 'import grpc' "
              f"{startup['floor_rss_kib'] / 1024:.1f} MiB (ratio after start-up "
              f"{after_start.get('VmRSS', 0) / max(startup['floor_rss_kib'], 1):.1f}x)")
        for key in ("snapshot_default", "snapshot_xfs"):
            methods = report.get(key, {}).get("agent_copy_methods")
            if methods:
                info = report[key]
                print(f"benchmark 3 on {info['pool_fs']}: the agent's copy method {methods}, "
                      f"cp --reflink=always {'works' if info['cp_reflink_always_works'] else 'is refused'}")
        return rows

    return run_reported("bench_file_pool", run, workspace, report, args.json, errors=(BenchError, grpc.RpcError))


if __name__ == "__main__":
    sys.exit(main())
