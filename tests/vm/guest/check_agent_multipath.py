#!/usr/bin/env python3
"""Real kernel, through the agent: a volume on two portals staged on its dm-multipath map (inside the VM).

The storage agent exports over LIO on two portals, 127.0.0.1:3260 and
127.0.0.2:3260 (both on lo); multipathd runs with ``find_multipaths yes``.
NodeStage logs in on both portals, waits for both SCSI disks and for the map
multipathd builds over them, and puts the filesystem on the map.  Data
written through the pod mount survives the loss of one path (logged out by
hand); the volume then grows (ControllerExpand on the storage host, NodeExpand:
rescan of the remaining path, ``multipathd resize map``, online resize2fs),
and NodeUnstage flushes the map (``multipath -f``) before it logs out:
no map, session or node record is left.  The bytes are then checked on the
LV.  What multipath-tools printed and the sysfs tree of the map are saved to
/results/multipath/ (the unit tests' recordings come from there).

Usage: check_agent_multipath.py DISK
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_iscsi_lib as lib
from agent_iscsi_lib import MIB, SECRETS, expect, sh, step

PORTALS = ["127.0.0.1:3260", "127.0.0.2:3260"]
MULTIPATH_CONF = """defaults {
    find_multipaths yes
    user_friendly_names yes
}
blacklist {
    devnode "^(vd|loop)"
}
"""
RECORD_DIR = Path(os.environ.get("BASALT_RESULTS", "/tmp")) / "multipath"


def record(name: str, argv: List[str]) -> str:
    proc = sh(*argv, check=False)
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    (RECORD_DIR / name).write_text(f"# {' '.join(argv)} -> rc {proc.returncode}\n{proc.stdout}")
    return proc.stdout


def sysfs_tree(disks: List[str]) -> Dict[str, Union[str, List[str]]]:
    """The sysfs entries multipath.py reads, for the unit tests: directories as lists, files as text."""
    tree: Dict[str, Union[str, List[str]]] = {}
    dms = set()
    for disk in disks:
        holders = sorted(os.listdir(f"/sys/block/{disk}/holders"))
        tree[f"block/{disk}/holders"] = holders
        dms.update(holders)
    for dm in sorted(dms):
        for name in ("name", "uuid"):
            tree[f"block/{dm}/dm/{name}"] = Path(f"/sys/block/{dm}/dm/{name}").read_text()
        tree[f"block/{dm}/slaves"] = sorted(os.listdir(f"/sys/block/{dm}/slaves"))
    return tree


def main() -> None:
    lib.prepare(sys.argv[1])
    from basalt_csi_testlib import csi, fs_total_bytes, mount_cap, pattern

    from basalt_core import iscsi_attach, iscsiadm, multipath

    for module in ("dm_multipath", "dm_round_robin", "dm_service_time"):
        sh("modprobe", module)
    Path("/etc/multipath.conf").write_text(MULTIPATH_CONF)
    record("show_daemon_not_running.txt", ["multipathd", "show", "daemon"])
    expect(not multipath.daemon_running(), "multipathd answers before it was started")
    sh("multipathd")
    lib.wait_for(multipath.daemon_running, "multipathd to answer", 60)
    record("show_daemon_running.txt", ["multipathd", "show", "daemon"])
    iqn = lib.initiator_iqn()
    lib.start_iscsid()
    storage = lib.storage_agent({"node-a": iqn}, PORTALS)
    node = lib.node_agent("node-a")
    try:
        lib.start(storage, node)
        cap = mount_cap("ext4")
        step("CreateVolume, ControllerPublish on two portals")
        volume = storage.ctl.CreateVolume(csi.CreateVolumeRequest(
            name="agent-multipath", capacity_range=csi.CapacityRange(required_bytes=64 * MIB),
            volume_capabilities=[cap])).volume
        vid = volume.volume_id
        context = dict(storage.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id="node-a", volume_capability=cap, secrets=SECRETS,
            volume_context=volume.volume_context)).publish_context)
        target, serial = context["basalt.dev/iscsi-target"], context["basalt.dev/serial"]
        expect(context["basalt.dev/iscsi-portals"] == ",".join(PORTALS), f"portals {context}")

        step("NodeStage: two sessions, two disks, the filesystem on the multipath map")
        staging, pod = node.staging_dir(), node.path("pod")
        node.stage(vid, cap, staging, publish_context=context, secrets=SECRETS)
        expect(lib.session_targets().count(target) == 2, f"sessions {lib.session_targets()}")
        disks = [os.path.basename(d) for d in iscsiadm.find_disks(serial)]
        expect(len(disks) == 2, f"disks with serial {serial}: {disks}")
        held = multipath.map_for(disks)
        expect(held is not None and set(held.paths) == set(disks), f"map {held} over {disks}")
        assert held is not None
        source = [m.split()[0] for m in open("/proc/self/mounts").read().splitlines() if f" {staging} " in m]
        expect(source and os.path.realpath(source[0]) == f"/dev/{held.kernel_name}",
               f"staging mounted from {source}, not the map {held.device}")
        expect(iscsi_attach.attached_device(serial) == held.device, "attached_device is not the map")
        record("multipath_ll.txt", ["multipath", "-ll"])
        record("show_maps.txt", ["multipathd", "show", "maps"])
        record("show_paths.txt", ["multipathd", "show", "paths"])
        (RECORD_DIR / "sysfs.json").write_text(json.dumps(sysfs_tree(disks), indent=1, sort_keys=True) + "\n")

        node.publish(vid, cap, staging, target=pod, publish_context=context)
        first = pattern(2 * MIB, "both paths")
        lib.write_and_sync(os.path.join(pod, "first.bin"), first)
        step("one path lost (logout of 127.0.0.2 by hand): I/O goes on over the other")
        sh("iscsiadm", "-m", "node", "-T", target, "-p", PORTALS[1], "--logout")
        lib.wait_for(lambda: len(iscsiadm.find_disks(serial)) == 1, "the second disk to go", 60)
        second = pattern(2 * MIB, "one path")
        lib.write_and_sync(os.path.join(pod, "second.bin"), second)
        expect(Path(pod, "first.bin").read_bytes() == first, "first file after the path loss")
        record("multipath_ll_one_path.txt", ["multipath", "-ll"])

        record("iscsiadm_rescan_no_session.txt", ["iscsiadm", "-m", "node", "-T", target, "-p", PORTALS[1], "--rescan"])
        record("iscsiadm_rescan.txt", ["iscsiadm", "-m", "node", "-T", target, "-p", PORTALS[0], "--rescan"])
        step("ControllerExpand 64 -> 128 MiB, NodeExpand: rescan (one portal has no session), map resized, ext4 grown")
        grown = 128 * MIB
        storage.ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
            volume_id=vid, capacity_range=csi.CapacityRange(required_bytes=grown), volume_capability=cap))
        expanded = node.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
            volume_id=vid, volume_path=pod, staging_target_path=staging, volume_capability=cap,
            capacity_range=csi.CapacityRange(required_bytes=grown)))
        expect(expanded.capacity_bytes == grown, f"NodeExpand says {expanded.capacity_bytes} bytes")
        expect(fs_total_bytes(pod) > 100 * MIB, f"ext4 is {fs_total_bytes(pod)} bytes after NodeExpand")
        record("multipath_ll_grown.txt", ["multipath", "-ll"])
        record("resize_map_again.txt", ["multipathd", "resize", "map", held.name])
        expect(Path(pod, "second.bin").read_bytes() == second, "data after the expansion")

        step("NodeUnpublish, NodeUnstage: map flushed, sessions and node records gone")
        node.unpublish(vid, pod)
        node.unstage(vid, staging)
        expect(not multipath.map_names(), f"multipath maps left: {multipath.map_names()}")
        expect(target not in lib.session_targets(), f"sessions left {lib.session_targets()}")
        expect(not lib.node_record_exists(target), "node records left")
        lv = lib.lv_device(storage, vid)
        for name, data in (("first.bin", first), ("second.bin", second)):
            expect(hashlib.sha256(lib.debugfs_cat(lv, "/" + name)).digest() == hashlib.sha256(data).digest(),
                   f"{name} is not on the LV")
        storage.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        storage.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        expect(lib.lio_target(target) is None, "target left in LIO")
    finally:
        lib.stop_agent(node)
        sh("multipathd", "shutdown", check=False)
        lib.teardown_storage(storage)
        lib.release_tmp()


if __name__ == "__main__":
    sys.exit(lib.report("agent_multipath", main))
