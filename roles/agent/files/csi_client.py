# Copyright: Basalt developers; Apache-2.0 (see LICENSE)
"""What the agent role asks a running Basalt agent over its CSI socket, run by the agent's own virtualenv.

    csi_client.py published --endpoint unix:///path/csi.sock
        prints a JSON list of the volumes published to any node (id, name, nodes); rc 1 when the agent
        does not answer
    csi_client.py smoke --endpoint unix:///path/csi.sock --node-id NODE [--size 64Mi] [--fs-type ext4]
        creates a volume, publishes, stages and publishes it into a pod directory, writes a file, reads it
        back through the staging mount, then undoes everything and deletes the volume; rc 1 on any failure
        (after undoing what it did)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Callable, List

import grpc

from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc
from basalt_core.sizes import parse_size

TIMEOUT = 300.0  # one call, mkfs under emulation included


def published(channel: grpc.Channel) -> int:
    controller = rpc.ControllerStub(channel)
    found: List[dict] = []
    token = ""
    while True:
        page = controller.ListVolumes(csi.ListVolumesRequest(starting_token=token), timeout=TIMEOUT)
        for entry in page.entries:
            if entry.status.published_node_ids:
                found.append({"volume_id": entry.volume.volume_id,
                              "nodes": list(entry.status.published_node_ids)})
        token = page.next_token
        if not token:
            break
    print(json.dumps(found))
    return 0


def smoke(channel: grpc.Channel, node_id: str, size: int, fs_type: str) -> int:
    identity, controller, node = rpc.IdentityStub(channel), rpc.ControllerStub(channel), rpc.NodeStub(channel)
    mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type=fs_type), access_mode=mode)
    work = tempfile.mkdtemp(prefix="basalt-smoke-")
    stage, target = os.path.join(work, "staging"), os.path.join(work, "pod", "data")
    undo: List[Callable[[], object]] = []

    def step(text: str, call: Callable[[], object]) -> object:
        started = time.monotonic()
        result = call()
        print(f"ok   {text} ({time.monotonic() - started:.1f} s)")
        return result

    info = identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=TIMEOUT)
    print(f"agent {info.name} {info.vendor_version} on node {node_id}")
    walked = False
    try:
        volume = step(f"CreateVolume ({size} bytes, {fs_type})", lambda: controller.CreateVolume(
            csi.CreateVolumeRequest(name=f"basalt-smoke-{uuid.uuid4()}", volume_capabilities=[cap],
                                    capacity_range=csi.CapacityRange(required_bytes=size)), timeout=TIMEOUT).volume)
        vid = volume.volume_id  # type: ignore[attr-defined]
        undo.append(lambda: controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT))
        answer = step("ControllerPublishVolume", lambda: controller.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(volume_id=vid, node_id=node_id, volume_capability=cap),
            timeout=TIMEOUT))
        undo.append(lambda: controller.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=node_id), timeout=TIMEOUT))
        context = dict(answer.publish_context)  # type: ignore[attr-defined]
        step("NodeStageVolume", lambda: node.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=stage, volume_capability=cap, publish_context=context),
            timeout=TIMEOUT))
        undo.append(lambda: node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(
            volume_id=vid, staging_target_path=stage), timeout=TIMEOUT))
        step("NodePublishVolume", lambda: node.NodePublishVolume(csi.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=stage, target_path=target, volume_capability=cap,
            publish_context=context), timeout=TIMEOUT))
        undo.append(lambda: node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(
            volume_id=vid, target_path=target), timeout=TIMEOUT))
        payload = os.urandom(1 << 20)
        with open(os.path.join(target, "smoke.bin"), "wb") as handle:
            handle.write(payload)
            os.fsync(handle.fileno())
        print("ok   wrote 1 MiB through the pod's mount")
        with open(os.path.join(stage, "smoke.bin"), "rb") as reader:
            if reader.read() != payload:
                raise SystemExit("FAIL: the staging mount does not hold the bytes written through the pod's mount")
        print("ok   read the same bytes back through the staging mount")
        walked = True
    except grpc.RpcError as error:
        print(f"FAIL {error.code().name}: {error.details()}")
    finally:
        undone = undo_all(undo)
        shutil.rmtree(work, ignore_errors=True)
    if walked and undone:
        print("ok   unpublished, unstaged and deleted")
        return 0
    return 1


def undo_all(undo: List[Callable[[], object]]) -> bool:
    """Undo the steps that were done, last first; whether every one succeeded."""
    failures = 0
    for call in reversed(undo):
        try:
            call()
        except grpc.RpcError as error:
            failures += 1
            print(f"FAIL while undoing: {error.code().name}: {error.details()}")
    return failures == 0


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("published")
    walk = sub.add_parser("smoke")
    for each in (listing, walk):
        each.add_argument("--endpoint", required=True)
    walk.add_argument("--node-id", required=True)
    walk.add_argument("--size", default="64Mi")
    walk.add_argument("--fs-type", default="ext4")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.endpoint) as channel:
        try:
            if args.command == "published":
                return published(channel)
            return smoke(channel, args.node_id, parse_size(args.size), args.fs_type)
        except grpc.RpcError as error:
            print(f"{args.endpoint}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
