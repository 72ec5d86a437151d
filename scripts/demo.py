#!/usr/bin/env python3
"""Walk one volume through its whole life on a Basalt agent, over CSI.

With ``--endpoint``, talks to an agent that is already running (the one
``playbooks/quickstart.yml`` installed); without, starts ``basalt-agent`` with
no pool settings (the embedded file pool under a temporary state directory).
Then: create a volume, publish, stage (format, mount), publish into a "pod"
directory, write a file, snapshot, restore the snapshot into a new volume,
stage that and read the file back, expand, and delete everything.  Exits
non-zero if any step does not do what it says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, TypeVar

import grpc

from basalt_agent import config
from basalt_agent.launcher import AgentFailed, AgentProcess
from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc

T = TypeVar("T")
MiB = 1 << 20


def step(text: str, call: Callable[[], T]) -> T:
    started = time.monotonic()
    result = call()
    print(f"  ok  {text}  ({(time.monotonic() - started) * 1000:.0f} ms)")
    return result


def walk(channel: grpc.Channel, work: str, node_id: str = "") -> None:
    identity, controller, node = rpc.IdentityStub(channel), rpc.ControllerStub(channel), rpc.NodeStub(channel)
    node_id = node_id or node.NodeGetInfo(csi.NodeGetInfoRequest()).node_id  # a running agent knows its node
    mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode)

    info = identity.GetPluginInfo(csi.GetPluginInfoRequest())
    print(f"agent {info.name} {info.vendor_version}, node {node_id}")
    volume = step("CreateVolume 'demo-data' (64 MiB)", lambda: controller.CreateVolume(csi.CreateVolumeRequest(
        name="demo-data", capacity_range=csi.CapacityRange(required_bytes=64 * MiB),
        volume_capabilities=[cap])).volume)
    vid = volume.volume_id
    print(f"      volume {vid}, {volume.capacity_bytes} bytes, topology {dict(volume.accessible_topology[0].segments)}")
    step("ControllerPublishVolume", lambda: controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
        volume_id=vid, node_id=node_id, volume_capability=cap)))
    stage, target = os.path.join(work, "staging", vid), os.path.join(work, "pods", "db-0", "data")
    step("NodeStageVolume (loop device, mkfs.ext4, mount)", lambda: node.NodeStageVolume(csi.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=stage, volume_capability=cap)))
    step("NodePublishVolume (bind mount into the pod)", lambda: node.NodePublishVolume(csi.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=stage, target_path=target, volume_capability=cap)))
    payload = os.urandom(MiB)
    with open(os.path.join(target, "table.db"), "wb") as handle:
        handle.write(payload)
    print("  ok  wrote 1 MiB to table.db through the pod's mount")
    snapshot = step("CreateSnapshot 'demo-snap' (filesystem frozen while copied)", lambda: controller.CreateSnapshot(
        csi.CreateSnapshotRequest(name="demo-snap", source_volume_id=vid)).snapshot)
    with open(os.path.join(target, "table.db"), "wb") as handle:
        handle.write(b"overwritten after the snapshot")
    restored = step("CreateVolume 'demo-restore' from the snapshot", lambda: controller.CreateVolume(
        csi.CreateVolumeRequest(
            name="demo-restore", capacity_range=csi.CapacityRange(required_bytes=128 * MiB),
            volume_capabilities=[cap],
            volume_content_source=csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id)))).volume)
    print(f"      copy method: {restored.volume_context.get('basalt.dev/copy-method')}")
    restore_stage = os.path.join(work, "staging", restored.volume_id)
    step("NodeStageVolume of the restored volume (ext4 grown offline to 128 MiB)", lambda: node.NodeStageVolume(
        csi.NodeStageVolumeRequest(volume_id=restored.volume_id, staging_target_path=restore_stage,
                                   volume_capability=cap)))
    with open(os.path.join(restore_stage, "table.db"), "rb") as handle:
        if handle.read() != payload:
            raise SystemExit("FAIL: the restored volume does not hold the snapshot's data")
    print("  ok  the restored volume holds the bytes written before the snapshot")
    stats = step("NodeGetVolumeStats", lambda: node.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(
        volume_id=restored.volume_id, volume_path=restore_stage)))
    print(f"      {stats.usage[0].used} of {stats.usage[0].total} bytes used")
    grown = step("ControllerExpandVolume 'demo-data' to 96 MiB", lambda: controller.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=96 * MiB))))
    print(f"      {grown.capacity_bytes} bytes, node expansion required: {grown.node_expansion_required}")

    step("NodeUnstageVolume of the restored volume", lambda: node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
        volume_id=restored.volume_id, staging_target_path=restore_stage)))
    step("NodeUnpublishVolume", lambda: node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
        volume_id=vid, target_path=target)))
    step("NodeUnstageVolume", lambda: node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
        volume_id=vid, staging_target_path=stage)))
    step("ControllerUnpublishVolume", lambda: controller.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id)))
    for volume_id in (restored.volume_id, vid):
        step(f"DeleteVolume {volume_id}", lambda v=volume_id: controller.DeleteVolume(  # type: ignore[misc]
            csi.DeleteVolumeRequest(volume_id=v)))
    step("DeleteSnapshot", lambda: controller.DeleteSnapshot(csi.DeleteSnapshotRequest(
        snapshot_id=snapshot.snapshot_id)))
    mine = {vid, restored.volume_id}
    left = [e.volume.volume_id for e in controller.ListVolumes(csi.ListVolumesRequest()).entries
            if e.volume.volume_id in mine]
    if left:
        raise SystemExit(f"FAIL: {len(left)} volume(s) left behind")
    print("  ok  ListVolumes lists neither volume any more")


def walk_running(endpoint: str) -> int:
    """The walk through an agent that is already running (its own state, pool and node id)."""
    work = tempfile.mkdtemp(prefix="basalt-demo-")
    try:
        with grpc.insecure_channel(endpoint) as channel:
            rpc.IdentityStub(channel).Probe(csi.ProbeRequest(), timeout=30)
            print(f"agent at {endpoint}")
            walk(channel, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("demo passed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--config", help="walk through the agent already running with this configuration file "
                        "(e.g. /etc/basalt/agent.toml, written by the agent role)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the demo attaches loop devices and mounts filesystems: run it as root")
    if args.config:
        return walk_running(config.load(["--config", args.config]).endpoint)
    work = tempfile.mkdtemp(prefix="basalt-demo-")
    socket_path = os.path.join(work, "csi.sock")
    node_id = "demo-node"
    agent = AgentProcess(socket_path, ["--node-id", node_id, "--state-dir", os.path.join(work, "state")],
                         log_path=os.path.join(work, "agent.log"))
    print("starting:", " ".join(agent.argv))
    agent.start()
    try:
        try:
            agent.wait_ready()
        except AgentFailed as failure:
            raise SystemExit(str(failure)) from None
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            print(f"socket {socket_path} mode {oct(os.stat(socket_path).st_mode & 0o777)}")
            walk(channel, work, node_id)
    finally:
        returncode = agent.stop(timeout=60)
        print(f"agent stopped (exit {returncode}); its log: {agent.log_path}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("demo passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
