#!/usr/bin/env python3
"""Real kernel, through the agent: an LVM volume exported by LIO and staged with open-iscsi (inside the VM).

Two agents in one VM, driven only through their gRPC RPCs:

* the storage host ``storage-1``: ``--pool lvm:VG --lvm-activation dm``
  (real device-mapper), ``--iscsi-backend lio`` on 127.0.0.1:3260, node
  ``node-a`` = this VM's open-iscsi initiator name;
* the node ``node-a``: NodeStage logs in with ``iscsiadm`` (kernel
  initiator), finds the /dev/sdX by its SCSI serial, makes ext4, mounts.

CreateVolume → ControllerPublish (CHAP) → NodeStage with a wrong CHAP secret
(UNAUTHENTICATED, no session, no record left) → NodeStage → NodePublish →
write → read back → NodeUnpublish → NodeUnstage (logout, node record gone) →
the bytes are on the LV (read with debugfs, O_DIRECT) → another initiator IQN
with the right secret is refused (iscsiadm rc 24) → LIO's saved config
restores the export after the live config is cleared (``targetctl clear`` and
``targetctl restore``, what Debian's rtslib-fb-targetctl.service runs at stop
and boot; the agent, started again, stages through it) → ControllerUnpublish (ACL, target, backstore gone;
LV deactivated) → DeleteVolume.  Then a read-only publication of a block
volume: reads work, writes fail at the target, the LV is unchanged.

Usage: check_agent_iscsi.py DISK   (DISK: a scratch disk of at least 2 GiB)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_iscsi_lib as lib
from agent_iscsi_lib import MIB, SECRETS, expect, sh, step

PORTAL = "127.0.0.1:3260"
OTHER_IQN = "iqn.2026-11.dev.basalt.test:not-granted"
OTHER_IFACE = "basalt-other"


def main() -> None:
    lib.prepare(sys.argv[1])
    import grpc
    from basalt_csi_testlib import AM, block_cap, code_of, csi, mount_cap, pattern

    from basalt_core import iscsiadm
    from basalt_core.iscsi_target import Chap

    iqn = lib.initiator_iqn()
    step(f"this VM's initiator name: {iqn}")
    lib.start_iscsid()
    storage = lib.storage_agent({"node-a": iqn, "node-b": OTHER_IQN}, [PORTAL])
    node = lib.node_agent("node-a")
    try:
        lib.start(storage, node)
        cap = mount_cap("ext4")
        step("CreateVolume on the storage host, ControllerPublish to node-a with CHAP")
        volume = storage.ctl.CreateVolume(csi.CreateVolumeRequest(
            name="agent-iscsi", capacity_range=csi.CapacityRange(required_bytes=64 * MIB),
            volume_capabilities=[cap])).volume
        vid = volume.volume_id
        publish = csi.ControllerPublishVolumeRequest(volume_id=vid, node_id="node-a", volume_capability=cap,
                                                     secrets=SECRETS, volume_context=volume.volume_context)
        context = dict(storage.ctl.ControllerPublishVolume(publish).publish_context)
        print(f"    publish_context: {context}", flush=True)
        target = context["basalt.dev/iscsi-target"]
        expect(context["basalt.dev/iscsi-portals"] == PORTAL, "publish_context portals")
        expect(lib.lio_acls(target) == [iqn], f"LIO ACLs {lib.lio_acls(target)}, want [{iqn}]")
        acl = next(next(lib.lio_target(target).tpgs).node_acls)
        expect(acl.chap_userid == SECRETS["node.session.auth.username"], "LIO ACL CHAP user")
        saved = Path(lib.LIO_SAVE_FILE)
        expect(saved.exists() and stat.S_IMODE(saved.stat().st_mode) == 0o600, f"{saved}: missing or not 0600")
        expect(target in saved.read_text(), f"{saved} does not hold {target}")
        expect(SECRETS["node.session.auth.password"] not in storage.log(), "a CHAP secret is in the agent's log")

        staging, pod = node.staging_dir(), node.path("pod")
        stage = csi.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging, volume_capability=cap,
                                           publish_context=context, volume_context=volume.volume_context,
                                           secrets=SECRETS)
        step("NodeStage with a wrong CHAP secret: UNAUTHENTICATED, no session, no node record left")
        wrong = csi.NodeStageVolumeRequest()
        wrong.CopyFrom(stage)
        wrong.secrets["node.session.auth.password"] = "Wrong-Secret-999"
        code, error = code_of(node.node.NodeStageVolume, wrong)
        print(f"    -> {code.name}: {error.details() if code != grpc.StatusCode.OK else ''}", flush=True)
        expect(code == grpc.StatusCode.UNAUTHENTICATED, f"wrong secret gave {code.name}")
        expect(target not in lib.session_targets(), "a session exists after the refused login")
        expect(not lib.node_record_exists(target), "the refused stage left a node record")

        step("NodeStage (real login, disk by serial, mkfs.ext4, mount) and NodePublish")
        node.node.NodeStageVolume(stage)
        node.node.NodeStageVolume(stage)  # idempotent
        expect(lib.session_targets().count(target) == 1, f"sessions: {lib.session_targets()}")
        disk = iscsiadm.find_device(context["basalt.dev/serial"])
        expect(disk is not None and Path(disk).name.startswith("sd"), f"no SCSI disk with the serial: {disk}")
        assert disk is not None
        mount = [m for m in open("/proc/self/mounts").read().splitlines() if f" {staging} " in m]
        expect(mount and mount[0].split()[0] == disk, f"staging mount {mount}, want {disk}")
        node.publish(vid, cap, staging, target=pod, publish_context=context)
        data = pattern(3 * MIB + 17, "through the agent")
        lib.write_and_sync(os.path.join(pod, "data.bin"), data)
        expect(Path(pod, "data.bin").read_bytes() == data, "read back through the mount")

        step("NodeUnpublish, NodeUnstage: logout, node record gone, disk gone")
        node.unpublish(vid, pod)
        node.unstage(vid, staging)
        expect(target not in lib.session_targets(), f"session left: {lib.session_targets()}")
        expect(not lib.node_record_exists(target), "node record left after NodeUnstage")
        lib.wait_for(lambda: not os.path.exists(disk), f"{disk} to go away", 30)

        step("the bytes are on the LV (storage side, debugfs with O_DIRECT)")
        lv = lib.lv_device(storage, vid)
        expect(hashlib.sha256(lib.debugfs_cat(lv, "/data.bin")).digest() == hashlib.sha256(data).digest(),
               "the LV does not hold the data the node wrote")

        step("another initiator IQN, right CHAP secret: refused by the target (authorization failure)")
        sh("iscsiadm", "-m", "iface", "-I", OTHER_IFACE, "-o", "new")
        sh("iscsiadm", "-m", "iface", "-I", OTHER_IFACE, "-o", "update", "-n", "iface.initiatorname",
           "-v", OTHER_IQN)
        chap = Chap(SECRETS["node.session.auth.username"], SECRETS["node.session.auth.password"])
        iscsiadm.ensure_node(target, PORTAL, chap, iface=OTHER_IFACE, startup="manual")
        try:
            iscsiadm.login(target, PORTAL, iface=OTHER_IFACE)
            raise lib.CheckFailed(f"{OTHER_IQN} logged in to {target}")
        except iscsiadm.LoginFailed as refused:
            print(f"    refused: rc={refused.rc} reason={refused.reason}: {refused.stderr}", flush=True)
            expect(refused.reason == "auth", f"refused for {refused.reason}, not authorization")
        finally:
            iscsiadm.delete_node(target, PORTAL, iface=OTHER_IFACE)
            sh("iscsiadm", "-m", "iface", "-I", OTHER_IFACE, "-o", "delete", check=False)
        expect(target not in lib.session_targets(), "the other IQN has a session")

        step("persistence: stop the storage agent; the target service's stop and start (targetctl clear, restore)")
        saved_config = json.loads(saved.read_text())
        expect(any(t["wwn"] == target for t in saved_config["targets"]), "target not in the saved config")
        lib.stop_agent(storage, release=False)
        sh("targetctl", "clear")  # rtslib-fb-targetctl.service's ExecStop
        expect(lib.lio_target(target) is None, "the target survived targetctl clear")
        sh("targetctl", "restore")  # its ExecStart at boot: the default save file, nothing else
        expect(lib.lio_acls(target) == [iqn], f"restored ACLs {lib.lio_acls(target)}")
        lib.start(storage)
        step("the restored export (CHAP from the saved file) stages again through the agents")
        node.node.NodeStageVolume(stage)
        node.publish(vid, cap, staging, target=pod, publish_context=context)
        expect(Path(pod, "data.bin").read_bytes() == data, "data after restore")
        node.unpublish(vid, pod)
        node.unstage(vid, staging)

        step("ControllerUnpublish: ACL, target and backstore gone, LV inactive; DeleteVolume")
        storage.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        storage.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id="node-a"))
        expect(lib.lio_target(target) is None, f"target {target} still in LIO")
        from rtslib_fb import RTSRoot

        expect(not [so.name for so in RTSRoot().storage_objects], "a LIO backstore is left")
        expect(target not in saved.read_text(), "the saved config still holds the target")
        expect(not lib.lv_active(storage, vid), "the LV is still active after the last unpublish")
        storage.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))

        step("read-only publication of a block volume: reads work, writes are refused by the target")
        ro_cap = block_cap(AM.MULTI_NODE_READER_ONLY)
        ro = storage.ctl.CreateVolume(csi.CreateVolumeRequest(
            name="agent-iscsi-ro", capacity_range=csi.CapacityRange(required_bytes=16 * MIB),
            volume_capabilities=[ro_cap])).volume
        ro_context = dict(storage.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=ro.volume_id, node_id="node-a", volume_capability=ro_cap, readonly=True, secrets=SECRETS,
            volume_context=ro.volume_context)).publish_context)
        ro_lv = lib.lv_device(storage, ro.volume_id)
        marker = pattern(MIB, "read-only")
        fd = os.open(ro_lv, os.O_WRONLY)
        try:
            os.pwrite(fd, marker, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        ro_staging, ro_pod = node.staging_dir(), node.path("block")
        node.stage(ro.volume_id, ro_cap, ro_staging, publish_context=ro_context, secrets=SECRETS)
        node.publish(ro.volume_id, ro_cap, ro_staging, target=ro_pod, readonly=True, publish_context=ro_context)
        expect(stat.S_ISBLK(os.stat(ro_pod).st_mode), f"{ro_pod} is not a block device")
        sh("blockdev", "--flushbufs", ro_pod)
        fd = os.open(ro_pod, os.O_RDONLY)
        try:
            expect(os.pread(fd, MIB, 0) == marker, "read-only volume: data differs")
        finally:
            os.close(fd)
        ro_disk = iscsiadm.find_device(ro_context["basalt.dev/serial"])
        ro_flag = Path(f"/sys/block/{Path(str(ro_disk)).name}/ro").read_text().strip()
        expect(ro_flag == "1", f"the kernel sees {ro_disk} writable (ro={ro_flag}): no write protect from LIO")
        try:
            fd = os.open(str(ro_disk), os.O_WRONLY)
            try:
                os.pwrite(fd, b"X" * 4096, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            raise lib.CheckFailed(f"a write to the read-only publication {ro_disk} succeeded")
        except OSError as refused:
            print(f"    write refused: {refused}", flush=True)
            expect(refused.errno == errno.EROFS, f"refused with {refused}, not EROFS")
        fd = os.open(ro_lv, os.O_RDONLY | os.O_DIRECT)
        try:
            import mmap

            buf = mmap.mmap(-1, MIB)
            os.preadv(fd, [buf], 0)
            expect(bytes(buf) == marker, "the read-only LV changed")
        finally:
            os.close(fd)
        node.unpublish(ro.volume_id, ro_pod)
        node.unstage(ro.volume_id, ro_staging)
        storage.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=ro.volume_id,
                                                                                   node_id="node-a"))
        storage.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=ro.volume_id))
        expect(not lib.session_targets(), f"sessions left: {lib.session_targets()}")
        lib.expect_foreign_intact(storage)
    finally:
        lib.teardown(storage, node)


if __name__ == "__main__":
    sys.exit(lib.report("agent_iscsi", main))
