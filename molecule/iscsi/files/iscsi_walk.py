# Copyright: Basalt developers; Apache-2.0 (see LICENSE)
"""A volume's walk across two hosts through their installed agents (molecule/iscsi), run by each agent's
own virtualenv. The CHAP secret comes from the environment (BASALT_CHAP_USER, BASALT_CHAP_PASSWORD), never
from the command line. Each step prints one JSON object; rc 1 on a failed RPC or check.

    iscsi_walk.py publish  --endpoint E --name N --size BYTES --node-id NODE --lio-config FILE --state FILE
        (storage host) CreateVolume + ControllerPublishVolume for NODE with CHAP; prints volume id, contexts,
        and what LIO's saved configuration FILE holds for the volume's target (its mode, the ACLs' initiator
        IQNs and CHAP users, the portals; no secret)
    iscsi_walk.py stage    --endpoint E --work DIR --state FILE    (node; BASALT_WALK_OFFER: publish's JSON)
        NodeStage (open-iscsi login with CHAP, mkfs, mount), NodePublish, 1 MiB written through the pod's
        mount and read back through the staging mount, the session seen; NodeUnpublish, NodeUnstage, the
        session gone; prints the file's sha256
    iscsi_walk.py finish   --endpoint E --node-id NODE --pool-dir DIR --state FILE            (storage host)
        ControllerUnpublishVolume (whether LIO still has the target after it), the sha256 of the node's file
        read from the volume's image in the file pool (debugfs, no mount), DeleteVolume
    iscsi_walk.py teardown --endpoint E [--node-id NODE] --state FILE                         (cleanup)
        what is left of the walk, undone (each call is idempotent); no state file: nothing to do
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from typing import Dict, List

import grpc

from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc
from basalt_agent.publish_keys import CHAP_PASSWORD, CHAP_USER, TARGET_KEY
from basalt_core.file_pool import FilePool

TIMEOUT = 300.0  # one call, mkfs and an iSCSI login under emulation included
FILE = "walk.bin"
LIO_TARGETS = "/sys/kernel/config/target/iscsi"  # the kernel's live iSCSI targets (configfs)
MODE = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
CAP = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=MODE)


def secrets() -> Dict[str, str]:
    return {CHAP_USER: os.environ["BASALT_CHAP_USER"], CHAP_PASSWORD: os.environ["BASALT_CHAP_PASSWORD"]}


def sessions() -> str:
    """open-iscsi's session list (empty when there is none: iscsiadm then exits 21)."""
    return subprocess.run(["iscsiadm", "-m", "session"], capture_output=True, text=True, check=False).stdout


def save(path: str, state: Dict[str, str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(state, handle)


def load(path: str) -> Dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        state: Dict[str, str] = json.load(handle)
    return state


def publish(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    controller = rpc.ControllerStub(channel)
    volume = controller.CreateVolume(csi.CreateVolumeRequest(
        name=args.name, volume_capabilities=[CAP], capacity_range=csi.CapacityRange(required_bytes=args.size)),
        timeout=TIMEOUT).volume
    save(args.state, {"volume_id": volume.volume_id})
    context = controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=args.node_id, volume_capability=CAP, secrets=secrets(),
        volume_context=volume.volume_context), timeout=TIMEOUT).publish_context
    return {"volume_id": volume.volume_id, "volume_context": dict(volume.volume_context),
            "publish_context": dict(context), "lio": saved_target(args.lio_config, context[TARGET_KEY])}


def saved_target(path: str, target_iqn: str) -> Dict[str, object]:
    """What LIO's saved configuration (restored at boot) holds for *target_iqn*: no secret."""
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    tpgs = [tpg for target in saved.get("targets", []) if target["wwn"] == target_iqn for tpg in target["tpgs"]]
    acls = [acl for tpg in tpgs for acl in tpg.get("node_acls", [])]
    portals = [portal for tpg in tpgs for portal in tpg.get("portals", [])]
    return {"mode": format(os.stat(path).st_mode & 0o777, "04o"), "tpgs": len(tpgs),
            "initiators": [acl["node_wwn"] for acl in acls], "chap_users": [acl.get("chap_userid") for acl in acls],
            "portals": [f"{portal['ip_address']}:{portal['port']}" for portal in portals]}


def stage(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    node = rpc.NodeStub(channel)
    offer = json.loads(os.environ["BASALT_WALK_OFFER"])
    vid, context, target_iqn = offer["volume_id"], offer["publish_context"], offer["publish_context"][TARGET_KEY]
    staging, pod = os.path.join(args.work, "staging"), os.path.join(args.work, "pod")
    save(args.state, {"volume_id": vid, "staging": staging, "pod": pod})
    node.NodeStageVolume(csi.NodeStageVolumeRequest(
        volume_id=vid, staging_target_path=staging, volume_capability=CAP, publish_context=context,
        volume_context=offer["volume_context"], secrets=secrets()), timeout=TIMEOUT)
    logged_in = target_iqn in sessions()
    node.NodePublishVolume(csi.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=pod, volume_capability=CAP,
        publish_context=context), timeout=TIMEOUT)
    payload = os.urandom(1 << 20)
    with open(os.path.join(pod, FILE), "wb") as handle:
        handle.write(payload)
        os.fsync(handle.fileno())
    with open(os.path.join(staging, FILE), "rb") as reader:
        read_back = reader.read() == payload
    node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=vid, target_path=pod), timeout=TIMEOUT)
    node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging),
                           timeout=TIMEOUT)
    os.remove(args.state)  # nothing of the walk left on the node
    return {"target": target_iqn, "logged_in_while_staged": logged_in, "read_back": read_back,
            "session_left": target_iqn in sessions(), "file": FILE, "sha256": hashlib.sha256(payload).hexdigest()}


def unpublish(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    vid = load(args.state)["volume_id"]
    rpc.ControllerStub(channel).ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=args.node_id), timeout=TIMEOUT)
    return {"volume_id": vid}


def finish(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    vid = unpublish(channel, args)["volume_id"]
    target_left = os.listdir(LIO_TARGETS) if os.path.isdir(LIO_TARGETS) else []
    image = FilePool(args.pool_dir).image_path(vid)
    data = subprocess.run(["debugfs", "-R", f"cat /{FILE}", image], capture_output=True, check=True).stdout
    delete(channel, args)
    return {"volume_id": vid, "targets_left": [name for name in target_left if name.startswith("iqn.")],
            "sha256": hashlib.sha256(data).hexdigest()}


def delete(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    vid = load(args.state)["volume_id"]
    rpc.ControllerStub(channel).DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid), timeout=TIMEOUT)
    os.remove(args.state)
    return {"volume_id": vid}


def teardown(channel: grpc.Channel, args: argparse.Namespace) -> Dict[str, object]:
    if not os.path.exists(args.state):
        return {"changed": False}
    state = load(args.state)
    if "staging" in state:  # the node's side
        node = rpc.NodeStub(channel)
        node.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=state["volume_id"],
                                                                target_path=state["pod"]), timeout=TIMEOUT)
        node.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=state["volume_id"],
                                                            staging_target_path=state["staging"]), timeout=TIMEOUT)
        os.remove(args.state)
    else:
        unpublish(channel, args)
        delete(channel, args)
    return {"changed": True, "volume_id": state["volume_id"]}


STEPS = {"publish": publish, "stage": stage, "finish": finish, "teardown": teardown}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--node-id", default="")
    parser.add_argument("--name", default="")
    parser.add_argument("--size", type=int, default=64 << 20)
    parser.add_argument("--work", default="")
    parser.add_argument("--pool-dir", default="")
    parser.add_argument("--lio-config", default="/etc/rtslib-fb-target/saveconfig.json")
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.endpoint) as channel:
        try:
            print(json.dumps(STEPS[args.step](channel, args)))
        except grpc.RpcError as error:
            print(f"{args.step}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
