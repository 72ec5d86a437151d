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
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if TYPE_CHECKING:  # mypy (scripts/lint.sh) sees the bench directory as the namespace package "bench"
    import bench.benchlib as bl
else:  # the bench directory is not a package: found through sys.path
    import benchlib as bl

from basalt_agent.proto import csi_pb2

XFS_IMAGE_SIZE = 512 * bl.MiB
SNAPSHOT_DATA = 16 * bl.MiB  # random bytes written into the snapshot source volume
STARTS = 5
MKFS_EXT4 = ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1"]
COPY_METHOD_KEY = "basalt.dev/copy-method"


# -- benchmark 1: CreateVolume + DeleteVolume ---------------------------------------

def bench_create_delete(agent: bl.Agent, workspace: bl.Workspace, rounds: int) -> List[bl.Row]:
    raw_dir = workspace.mkdir("raw", "create")
    g_create, g_delete, g_pair = bl.Samples(), bl.Samples(), bl.Samples()
    s_create, s_delete, s_pair = bl.Samples(), bl.Samples(), bl.Samples()
    p_create, p_delete, p_pair = bl.Samples(), bl.Samples(), bl.Samples()

    def grpc_round(i: int) -> None:
        took_c, volume = bl.timed(lambda: bl.create_volume(agent, f"bench-cd-{i}-{uuid.uuid4().hex[:8]}"))
        took_d, _ = bl.timed(lambda: bl.delete_volume(agent, volume.volume_id))
        g_create.add(took_c)
        g_delete.add(took_d)
        g_pair.add(took_c + took_d)

    def subprocess_round(i: int) -> None:
        image = os.path.join(raw_dir, f"sub-{i}.img")
        took_c, _ = bl.timed(lambda: bl.run(["truncate", "-s", str(bl.VOLUME_SIZE), image]))
        took_d, _ = bl.timed(lambda: bl.run(["rm", image]))
        s_create.add(took_c)
        s_delete.add(took_d)
        s_pair.add(took_c + took_d)

    def inprocess_round(i: int) -> None:
        image = os.path.join(raw_dir, f"inproc-{i}.img")

        def make() -> None:
            fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, bl.VOLUME_SIZE)
                os.fsync(fd)
            finally:
                os.close(fd)
            bl.fsync_dir(raw_dir)

        def remove() -> None:
            os.unlink(image)
            bl.fsync_dir(raw_dir)

        took_c, _ = bl.timed(make)
        took_d, _ = bl.timed(remove)
        p_create.add(took_c)
        p_delete.add(took_d)
        p_pair.add(took_c + took_d)

    bl.interleave(rounds, [grpc_round, subprocess_round, inprocess_round])
    name = "1 create/delete 64 MiB"
    sub = "truncate -s / rm (subprocess)"
    inproc = "open+ftruncate+fsync / unlink+fsync dir"
    return [
        bl.Row(name, "CreateVolume", g_create, sub, s_create),
        bl.Row(name, "DeleteVolume", g_delete, sub, s_delete),
        bl.Row(name, "Create+Delete", g_pair, sub, s_pair),
        bl.Row(name, "CreateVolume", g_create, inproc, p_create),
        bl.Row(name, "DeleteVolume", g_delete, inproc, p_delete),
        bl.Row(name, "Create+Delete", g_pair, inproc, p_pair),
    ]


# -- benchmark 2: stage + publish + unpublish + unstage -------------------------------

NODE_STEPS = ("NodeStage", "NodePublish", "NodeUnpublish", "NodeUnstage")
RAW_STEPS = {
    "NodeStage": "losetup --find --show + mkfs.ext4 + mount",
    "NodePublish": "mount --bind",
    "NodeUnpublish": "umount TARGET",
    "NodeUnstage": "umount STAGE + losetup -d",
}


def bench_node(agent: bl.Agent, workspace: bl.Workspace, rounds: int) -> List[bl.Row]:
    mnt = workspace.mkdir("mnt", "node")
    raw_dir = workspace.mkdir("raw", "node")
    basalt: Dict[str, bl.Samples] = {step: bl.Samples() for step in NODE_STEPS}
    floor: Dict[str, bl.Samples] = {step: bl.Samples() for step in NODE_STEPS}
    basalt_total, floor_total = bl.Samples(), bl.Samples()

    def grpc_round(i: int) -> None:
        volume = bl.create_volume(agent, f"bench-node-{i}-{uuid.uuid4().hex[:8]}")
        staging = os.path.join(mnt, f"g-stage-{i}")
        target = os.path.join(mnt, f"g-target-{i}")
        os.mkdir(staging)  # the CO creates the staging directory; the plugin creates the target
        vid = volume.volume_id
        took = {
            "NodeStage": bl.timed(lambda: bl.stage(agent, vid, staging))[0],
            "NodePublish": bl.timed(lambda: bl.publish(agent, vid, staging, target))[0],
            "NodeUnpublish": bl.timed(lambda: bl.unpublish(agent, vid, target))[0],
            "NodeUnstage": bl.timed(lambda: bl.unstage(agent, vid, staging))[0],
        }
        bl.delete_volume(agent, vid)
        os.rmdir(staging)
        for step, seconds in took.items():
            basalt[step].add(seconds)
        basalt_total.add(sum(took.values()))

    def raw_round(i: int) -> None:
        image = os.path.join(raw_dir, f"node-{i}.img")
        staging = os.path.join(mnt, f"r-stage-{i}")
        target = os.path.join(mnt, f"r-target-{i}")
        bl.run(["truncate", "-s", str(bl.VOLUME_SIZE), image])
        os.mkdir(staging)
        os.mkdir(target)
        took: Dict[str, float] = {}
        start = bl.now()
        device = bl.run(["losetup", "--find", "--show", image]).strip()
        bl.run([*MKFS_EXT4, device])
        bl.run(["mount", device, staging])
        took["NodeStage"] = bl.now() - start
        took["NodePublish"] = bl.timed(lambda: bl.run(["mount", "--bind", staging, target]))[0]
        took["NodeUnpublish"] = bl.timed(lambda: bl.run(["umount", target]))[0]
        start = bl.now()
        bl.run(["umount", staging])
        bl.run(["losetup", "-d", device])
        took["NodeUnstage"] = bl.now() - start
        os.rmdir(target)
        os.rmdir(staging)
        os.unlink(image)
        for step, seconds in took.items():
            floor[step].add(seconds)
        floor_total.add(sum(took.values()))

    bl.interleave(rounds, [grpc_round, raw_round])
    name = "2 node stage..unstage ext4"
    rows = [bl.Row(name, step, basalt[step], RAW_STEPS[step], floor[step]) for step in NODE_STEPS]
    rows.append(bl.Row(name, "all four", basalt_total, "the 7 commands", floor_total))
    return rows


# -- benchmark 3: snapshot + volume from snapshot vs cp ---------------------------------

def prepare_source(agent: bl.Agent, workspace: bl.Workspace, pool_dir: str, label: str) -> Tuple[str, str]:
    """A 64 MiB volume holding ext4 and 16 MiB of random data; return its id and image path."""
    volume = bl.create_volume(agent, bl.unique(f"bench-src-{label}"))
    mnt = workspace.mkdir("mnt", f"src-{label}")
    staging = os.path.join(mnt, "stage")
    target = os.path.join(mnt, "target")
    os.mkdir(staging)
    bl.stage(agent, volume.volume_id, staging)
    bl.publish(agent, volume.volume_id, staging, target)
    with open(os.path.join(target, "data.bin"), "wb") as handle:
        for _ in range(SNAPSHOT_DATA // bl.MiB):
            handle.write(os.urandom(bl.MiB))
        handle.flush()
        os.fsync(handle.fileno())
    bl.unpublish(agent, volume.volume_id, target)
    bl.unstage(agent, volume.volume_id, staging)
    image = os.path.join(pool_dir, "volumes", volume.volume_id + ".img")
    if not os.path.isfile(image):
        raise bl.BenchError(f"expected the volume image at {image}")
    return volume.volume_id, image


def bench_snapshot(agent: bl.Agent, workspace: bl.Workspace, pool_dir: str, raw_dir: str, label: str,
                   rounds: int) -> Tuple[List[bl.Row], Dict[str, Any]]:
    source_id, source_image = prepare_source(agent, workspace, pool_dir, label)
    os.makedirs(raw_dir, exist_ok=True)
    probe = os.path.join(raw_dir, "reflink-probe.img")
    reflink = subprocess.run(["cp", "--reflink=always", source_image, probe], capture_output=True,
                             check=False).returncode == 0
    if os.path.exists(probe):
        os.unlink(probe)
    g_snap, g_vol, g_pair = bl.Samples(), bl.Samples(), bl.Samples()
    c_snap, c_vol, c_pair, cs_pair = bl.Samples(), bl.Samples(), bl.Samples(), bl.Samples()
    methods: Dict[str, int] = {}
    cp = ["cp", "--reflink=auto", "--sparse=always"]

    def grpc_round(i: int) -> None:
        name = f"bench-snap-{label}-{i}-{uuid.uuid4().hex[:8]}"
        request = csi_pb2.CreateSnapshotRequest(source_volume_id=source_id, name=name)
        took_s, response = bl.timed(lambda: agent.controller.CreateSnapshot(request, timeout=bl.RPC_TIMEOUT))
        snapshot_id = response.snapshot.snapshot_id
        took_v, volume = bl.timed(lambda: bl.create_volume(agent, name + "-vol", snapshot_id))
        method = volume.volume_context.get(COPY_METHOD_KEY, "?")
        methods[method] = methods.get(method, 0) + 1
        bl.delete_volume(agent, volume.volume_id)
        agent.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=bl.RPC_TIMEOUT)
        g_snap.add(took_s)
        g_vol.add(took_v)
        g_pair.add(took_s + took_v)

    def raw_round(i: int) -> None:
        snap = os.path.join(raw_dir, f"snap-{i}.img")
        copy = os.path.join(raw_dir, f"vol-{i}.img")
        took_s = bl.timed(lambda: bl.run([*cp, source_image, snap]))[0]
        sync_s = bl.timed(lambda: bl.run(["sync", snap]))[0]
        took_v = bl.timed(lambda: bl.run([*cp, snap, copy]))[0]
        sync_v = bl.timed(lambda: bl.run(["sync", copy]))[0]
        os.unlink(copy)
        os.unlink(snap)
        c_snap.add(took_s)
        c_vol.add(took_v)
        c_pair.add(took_s + took_v)
        cs_pair.add(took_s + sync_s + took_v + sync_v)

    bl.interleave(rounds, [grpc_round, raw_round])
    bl.delete_volume(agent, source_id)
    name = f"3 snapshot+clone on {label}"
    one = "cp --reflink=auto --sparse=always"
    rows = [
        bl.Row(name, "CreateSnapshot", g_snap, one, c_snap),
        bl.Row(name, "CreateVolume(from snap)", g_vol, one, c_vol),
        bl.Row(name, "both", g_pair, "2 x cp", c_pair),
        bl.Row(name, "both", g_pair, "2 x (cp + sync FILE)", cs_pair),
    ]
    return rows, {"pool_dir": pool_dir, "pool_fs": bl.fs_type(pool_dir), "agent_copy_methods": methods,
                  "cp_reflink_always_works": reflink}


def make_xfs_pool(workspace: bl.Workspace) -> str:
    """A sparse 512 MiB image with xfs (reflink=1), loop-mounted in the workspace; return the mount."""
    image = workspace.path("xfs-pool.img")
    mount_point = workspace.mkdir("xfs")
    bl.run(["truncate", "-s", str(XFS_IMAGE_SIZE), image])
    bl.run(["mkfs.xfs", "-q", "-m", "reflink=1", image])
    device = bl.run(["losetup", "--find", "--show", image]).strip()
    bl.run(["mount", "-t", "xfs", device, mount_point])
    return mount_point


# -- benchmark 4: start-up and memory ----------------------------------------------------

def bench_startup(workspace: bl.Workspace, pool_dir: str) -> Tuple[bl.Row, Dict[str, Any]]:
    agent = bl.Agent(workspace, "startup", pool_dir)
    floor_argv = [sys.executable, "-c", "import grpc"]
    basalt, floor = bl.Samples(), bl.Samples()
    # One untimed warm-up of each, so both are measured with a warm page cache.
    agent.start()
    agent.stop()
    bl.run(floor_argv)
    for _ in range(STARTS):
        basalt.add(agent.start())
        agent.stop()
        floor.add(bl.timed(lambda: bl.run(floor_argv))[0])
    row = bl.Row("4 start-up", "exec -> first Probe", basalt, "python3 -c 'import grpc'", floor)
    status = bl.run([sys.executable, "-c", "import grpc; print(open('/proc/self/status').read())"])
    rss = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
    return row, {"starts": STARTS, "floor_rss_kib": rss[0] if rss else 0}


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

    signal.signal(signal.SIGTERM, bl._raise_interrupt)
    workspace = bl.Workspace(args.tmpdir)
    report: Dict[str, Any] = {"rounds": args.rounds}

    def run() -> List[bl.Row]:
        rows: List[bl.Row] = []
        facts = bl.machine_facts(workspace)
        report["facts"] = facts
        print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
        pool_dir = workspace.mkdir("pool")

        print(f"[4] start-up: {STARTS} starts of the agent and of python3 -c 'import grpc'", flush=True)
        startup_row, startup = bench_startup(workspace, pool_dir)
        report["startup"] = startup

        agent = bl.Agent(workspace, "main", pool_dir)
        agent.start()
        time.sleep(1.0)
        memory: Dict[str, Any] = {"after_start_kib": agent.memory()}

        print(f"[1] CreateVolume + DeleteVolume, {args.rounds} rounds", flush=True)
        rows += bench_create_delete(agent, workspace, args.rounds)
        print(f"[2] NodeStage..NodeUnstage, {args.rounds} rounds", flush=True)
        rows += bench_node(agent, workspace, args.rounds)
        print(f"[3] snapshot + clone on the default pool ({bl.fs_type(pool_dir)}), {args.rounds} rounds", flush=True)
        snap_rows, report["snapshot_default"] = bench_snapshot(
            agent, workspace, pool_dir, workspace.path("raw", "snap"), bl.fs_type(pool_dir), args.rounds)
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
            except bl.BenchError as error:
                print(f"[3] xfs pool skipped: {error}", flush=True)
                report["snapshot_xfs"] = {"skipped": str(error)}
            else:
                print(f"[3] snapshot + clone on an xfs pool (reflink), {args.rounds} rounds", flush=True)
                xfs_pool = os.path.join(xfs_mount, "pool")
                xfs_agent = bl.Agent(workspace, "xfs", xfs_pool)
                xfs_agent.start()
                xfs_rows, report["snapshot_xfs"] = bench_snapshot(
                    xfs_agent, workspace, xfs_pool, os.path.join(xfs_mount, "raw"), "xfs", args.rounds)
                rows += xfs_rows
                xfs_agent.stop()
        rows.append(startup_row)

        print()
        print(bl.table(rows))
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

    return bl.run_reported("bench_file_pool", run, workspace, report, args.json, errors=(bl.BenchError, grpc.RpcError))


if __name__ == "__main__":
    sys.exit(main())
