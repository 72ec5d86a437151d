#!/usr/bin/env python3
"""Real kernel: ``basalt doctor`` and ``basalt gc`` find and remove LIO and kernel iSCSI leftovers (inside the VM).

A storage-host agent (``--pool lvm:VG --lvm-activation dm``, ``--iscsi-backend
lio``) publishes three volumes to this VM's initiator with CHAP; the VM logs in
to all with open-iscsi, one of them named by a node record in the agent's
state directory (owned), the others by none (kernel session leftovers, with
their open-iscsi node records); one of those has ext4 mounted from its disk
(found through the session's sysfs device): it is in use.  Beside them: a LIO export of a Basalt-named
target whose volume has no record, with an ACL and CHAP, made by the core's
LIO backend and saved to LIO's config (a LIO leftover), on an LV that is not
Basalt's; a foreign LIO target (fileio backstore, ACL) with a session and a
node record of its own; the fixture's foreign LVs (one named like Basalt's).

``basalt doctor`` (run as the operator would, with the agent's settings) must
report exactly the three leftovers as safe to remove, the mounted session and
its node record as in use, and exit non-zero; ``basalt gc`` must list them and
change nothing; ``gc --apply`` must remove exactly the three (the session logged
out, its node record deleted, the stray target, its ACL and backstore gone from
LIO and from the saved config), leave the mounted session, its node record and
its filesystem, and exit 1; doctor then reports only that one, every owned or
foreign object is still there, and once it is unmounted gc removes it.  The agent's
/metrics count the orphans (``basalt_orphans`` of kind export and session, the
mounted one included) before and after gc.
Last, an ACL on the owned target that no publication record wants (a
ControllerPublish that crashed before its record): only a warning while the
agent runs, revoked by gc (and from LIO's saved config) once it is stopped.

Usage: check_operator_leftovers.py DISK   (DISK: a scratch disk of at least 1 GiB)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_iscsi_lib as lib
from agent_iscsi_lib import MIB, SECRETS, expect, step

PORTAL = "127.0.0.1:3260"
FOREIGN_TARGET = "iqn.2003-01.org.example.other:disk-1"
FOREIGN_BACKSTORE = "other-disk"
STRAY_BACKING_LV = "stray-backing"
METRICS = "127.0.0.1:9809"
STALE_IQN = "iqn.2026-11.dev.basalt.test:node-x"
HELD_MOUNT = "/mnt/held-session"
#: the gauges that count the leftovers (and what is not one): orphan exports and sessions, exports, owned sessions
WATCHED = (("basalt_orphans", "export"), ("basalt_orphans", "session"), ("basalt_iscsi_exports", ""),
           ("basalt_iscsi_sessions", ""))


def basalt(agent: Any, *args: str) -> Tuple[int, Any]:
    """``basalt ARGS -o json`` with the agent's settings, in this process (its imports cost tens of seconds
    per process under TCG)."""
    from basalt_agent import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main([*args, "--endpoint", f"unix://{agent.socket}", *agent.command(), "-o", "json",
                           "--kubelet-root", "/nonexistent/kubelet"])
    print(f"    $ basalt {' '.join(args)} -> {status}\n      " + out.getvalue().replace("\n", "\n      "), flush=True)
    return status, json.loads(out.getvalue())


def scrape() -> Dict[Tuple[str, str], float]:
    """(metric, its kind label) -> value, from the storage agent's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {(sample.name, sample.labels.get("kind", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def gauges(*names: Tuple[str, str]) -> Dict[Tuple[str, str], float]:
    found = scrape()
    return {name: found.get(name, -1.0) for name in names}


def leftovers(findings: List[Dict[str, Any]]) -> List[str]:
    return sorted(f["what"] for f in findings if f["safe_to_remove"])


def in_use(findings: List[Dict[str, Any]]) -> List[str]:
    return sorted(f["what"] for f in findings if f["status"] == "in use")


def foreign_target(iqn: str) -> None:
    """A LIO target that is not Basalt's: fileio backstore, TPG 1 on the same portal, an ACL for *iqn*."""
    from rtslib_fb import LUN, TPG, FabricModule, FileIOStorageObject, MappedLUN, NetworkPortal, NodeACL, Target

    so = FileIOStorageObject(FOREIGN_BACKSTORE, "/tmp/other-disk.img", size=16 * MIB)
    tpg = TPG(Target(FabricModule("iscsi"), FOREIGN_TARGET, mode="create"), 1, mode="create")
    tpg.set_attribute("generate_node_acls", "0")
    tpg.set_attribute("authentication", "0")
    NetworkPortal(tpg, "127.0.0.1", 3260, mode="create")
    lun = LUN(tpg, lun=0, storage_object=so)
    MappedLUN(NodeACL(tpg, iqn, mode="create"), 0, tpg_lun=lun)
    tpg.enable = True


def backstores() -> List[str]:
    from rtslib_fb import RTSRoot

    return sorted(so.name for so in RTSRoot().storage_objects)


def main() -> None:
    lib.prepare(sys.argv[1])
    from basalt_csi_testlib import csi, mount_cap

    from basalt_agent.nodestate import NodeRecord, NodeState
    from basalt_core import iscsiadm
    from basalt_core.iscsi_target import DEFAULT_BASE_IQN, Chap, serial_for, target_iqn_for
    from basalt_core.lio import LioBackend, lock_path_under

    iqn = lib.initiator_iqn()
    lib.start_iscsid()
    storage = lib.storage_agent({"node-a": iqn}, [PORTAL])
    storage.extra_args += ["--metrics-address", METRICS]
    os.environ.update(storage.lvm.env())  # the agent's private lvm.conf, for the command run in this process
    chap = Chap(SECRETS[lib.CHAP_USER], SECRETS[lib.CHAP_PASSWORD])
    try:
        lib.start(storage)
        cap = mount_cap("ext4")
        targets = {}
        for name in ("kept", "lost", "held"):
            volume = storage.ctl.CreateVolume(csi.CreateVolumeRequest(
                name=name, capacity_range=csi.CapacityRange(required_bytes=16 * MIB),
                volume_capabilities=[cap])).volume
            context = storage.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id="node-a", volume_capability=cap, secrets=SECRETS,
                volume_context=volume.volume_context)).publish_context
            targets[name] = context["basalt.dev/iscsi-target"]
        kept, lost, held = targets["kept"], targets["lost"], targets["held"]
        step("the published volumes logged in; only 'kept' is named by a node record; ext4 mounted from 'held'")
        for target in (kept, lost, held):
            iscsiadm.ensure_node(target, PORTAL, chap, startup="manual")
            iscsiadm.login(target, PORTAL)
        NodeState(os.path.join(storage.state_dir, "node")).save(
            NodeRecord(volume_id=kept.rpartition(":")[2], iscsi_target=kept, iscsi_portals=[PORTAL]))
        held_sid = next(s.sid for s in iscsiadm.sessions() if s.target_iqn == held)
        lib.wait_for(lambda: iscsiadm.session_disks(held_sid), f"session {held_sid}'s disk in sysfs", 60)
        (held_disk,) = iscsiadm.session_disks(held_sid)
        lib.sh("mkfs.ext4", "-q", f"/dev/{held_disk}")
        os.makedirs(HELD_MOUNT, exist_ok=True)
        lib.sh("mount", f"/dev/{held_disk}", HELD_MOUNT)
        lib.write_and_sync(f"{HELD_MOUNT}/data", b"a user's data")
        held_what = sorted([f"iSCSI session {held_sid} to {held} ({PORTAL}): no node record names it",
                            f"iSCSI node record {held} ({PORTAL}): no node record names it"])

        step("a stray Basalt export (no volume record) with an ACL, saved to LIO's config, on a non-Basalt LV")
        storage.lvm.run("lvcreate", "-y", "-n", STRAY_BACKING_LV, "-L", "8m", storage.lvm.vg)
        stray_volume = f"vol-{uuid.uuid4().hex}"
        stray = target_iqn_for(DEFAULT_BASE_IQN, stray_volume)
        backend = LioBackend(portals=[PORTAL], lock_path=lock_path_under(storage.state_dir))
        backend.ensure_export(stray, f"/dev/{storage.lvm.vg}/{STRAY_BACKING_LV}", serial_for(stray_volume), False)
        backend.ensure_grant(stray, iqn, chap)
        backend.persist()
        expect(stray in Path(lib.LIO_SAVE_FILE).read_text(), "the stray export is not in LIO's saved config")

        step("a foreign LIO target with an ACL, logged in, with its own node record")
        foreign_target(iqn)
        iscsiadm.ensure_node(FOREIGN_TARGET, PORTAL, None, startup="manual")
        iscsiadm.login(FOREIGN_TARGET, PORTAL)
        sessions_before = sorted(lib.session_targets())
        expect(sessions_before == sorted([kept, lost, held, FOREIGN_TARGET]), f"sessions: {sessions_before}")
        lost_sid = next(s.sid for s in iscsiadm.sessions() if s.target_iqn == lost)
        lio_before = {t: lib.lio_acls(t) for t in (kept, lost, held, stray, FOREIGN_TARGET)}
        backstores_before = backstores()

        expected = sorted([f"iSCSI session {lost_sid} to {lost} ({PORTAL}): no node record names it",
                           f"iSCSI node record {lost} ({PORTAL}): no node record names it",
                           f"export {stray}: its volume has no record"])
        step("basalt doctor: exactly the three leftovers, the mounted session in use, exit non-zero")
        status, findings = basalt(storage, "doctor")
        expect(status == 1, f"doctor exited {status}")
        expect(leftovers(findings) == expected, f"doctor's leftovers {leftovers(findings)}, want {expected}")
        expect(in_use(findings) == held_what, f"doctor's in use {in_use(findings)}, want {held_what}")
        fixes = [f["fix"] for f in findings if f["what"] == held_what[1]]
        expect(fixes and fixes[0].startswith(f"in use: /dev/{held_disk} is mounted on {HELD_MOUNT}"), f"{fixes}")
        expect(any(f["check"] == "target service" and f["status"] == "ok" for f in findings), "target service")
        counted = gauges(*WATCHED)
        expect(list(counted.values()) == [1, 2, 4, 1], f"metrics before gc: {counted}")

        step("basalt gc (dry run): the same three, the session in use named, nothing changed")
        status, dry = basalt(storage, "gc")
        expect(status == 1 and sorted(f["what"] for f in dry if f["status"] == "would remove") == expected
               and in_use(dry) == held_what and len(dry) == 5, f"gc dry run: {status} {dry}")
        expect(sorted(lib.session_targets()) == sessions_before, "the dry run changed the sessions")
        expect({t: lib.lio_acls(t) for t in lio_before} == lio_before, "the dry run changed LIO")
        expect(lib.node_record_exists(lost), "the dry run deleted a node record")

        step("basalt gc --apply: exactly those removed, the mounted session left, exit 1")
        status, removed = basalt(storage, "gc", "--apply")
        expect(status == 1 and sorted(f["what"] for f in removed if f["status"] == "removed") == expected
               and in_use(removed) == held_what and len(removed) == 5, f"gc --apply: {status} {removed}")
        expect(sorted(lib.session_targets()) == sorted([kept, held, FOREIGN_TARGET]),
               f"sessions: {lib.session_targets()}")
        expect(os.path.ismount(HELD_MOUNT) and Path(f"{HELD_MOUNT}/data").read_bytes() == b"a user's data",
               "the filesystem on the session in use went")
        expect(lib.node_record_exists(held), "the node record of the session in use was deleted")
        expect(not lib.node_record_exists(lost), "the leftover node record is still there")
        expect(lib.node_record_exists(kept) and lib.node_record_exists(FOREIGN_TARGET), "a kept node record went")
        expect(lib.lio_target(stray) is None, "the stray target is still in LIO")
        expect(stray not in Path(lib.LIO_SAVE_FILE).read_text(), "LIO's saved config still holds the stray target")
        gone = sorted(set(backstores_before) - set(backstores()))
        expect(gone == [f"basalt-{serial_for(stray_volume)}"], f"backstores removed: {gone}")
        for target in (kept, lost, held, FOREIGN_TARGET):
            expect(lib.lio_acls(target) == lio_before[target] == [iqn], f"{target}: ACLs {lib.lio_acls(target)}")
        expect(STRAY_BACKING_LV in storage.lvm.lvs(), "the LV under the stray export was removed")
        problems = storage.lvm.foreign_problems()
        expect(not problems, f"foreign LVs: {problems}")

        lib.wait_for(lambda: list(gauges(*WATCHED).values()) == [0, 1, 3, 1], "the metrics to count the session "
                     "in use only (they are read at most every 5 s)", 30)

        step("basalt doctor again: no leftovers but the session in use, nothing failing")
        status, findings = basalt(storage, "doctor")
        expect(leftovers(findings) == [], f"leftovers after gc: {leftovers(findings)}")
        bad = [f for f in findings if f["status"] not in ("ok", "warn") and f["what"] not in held_what]
        expect(not bad and in_use(findings) == held_what, f"doctor after gc: {findings}")

        step("unmounted, the session is a leftover like any: gc --apply logs it out")
        lib.sh("umount", HELD_MOUNT)
        status, removed = basalt(storage, "gc", "--apply")
        expect(status == 0 and sorted(f["what"] for f in removed) == held_what
               and {f["status"] for f in removed} == {"removed"}, f"gc --apply, unmounted: {status} {removed}")
        expect(sorted(lib.session_targets()) == sorted([kept, FOREIGN_TARGET]), f"sessions: {lib.session_targets()}")
        expect(not lib.node_record_exists(held), "the unmounted session's node record is still there")

        step("a LIO ACL on 'kept' that no publication record wants: a warning while the agent runs, gc's after")
        agents_backend = LioBackend(portals=[PORTAL], lock_path=lock_path_under(storage.state_dir))
        with agents_backend.transaction():  # a ControllerPublish to another node that crashed before its record
            agents_backend.ensure_grant(kept, STALE_IQN, Chap("node-x-user", "Secret-Of-X-1234"))
            agents_backend.persist()
        stale = f"grant to {STALE_IQN} on {kept}: no publication record wants it"
        _, findings = basalt(storage, "doctor")
        expect([(f["status"], f["safe_to_remove"]) for f in findings if f["what"] == stale] == [("warn", False)],
               f"the stale ACL while the agent runs: {findings}")
        lib.stop_agent(storage, release=False)
        status, removed = basalt(storage, "gc", "--apply")
        expect(status == 0 and [f["what"] for f in removed] == [stale], f"gc --apply, agent stopped: {removed}")
        expect(lib.lio_acls(kept) == [iqn], f"{kept}: ACLs {lib.lio_acls(kept)}")
        expect(STALE_IQN not in Path(lib.LIO_SAVE_FILE).read_text(), "LIO's saved config still holds the ACL")
        expect(kept in lib.session_targets(), "the owned session went with the stale ACL")
    finally:
        if os.path.ismount(HELD_MOUNT):
            lib.sh("umount", HELD_MOUNT, check=False)
        lib.teardown_storage(storage)
        lib.release_tmp()


if __name__ == "__main__":
    sys.exit(lib.report("operator_leftovers", main))
