#!/usr/bin/env python3
"""Real kernel check: LIO iSCSI target + open-iscsi initiator (inside the VM).

A block LV is exported by LIO (configured with rtslib in this one process, so
no targetcli start-up per step) on 127.0.0.1:3260 with an ACL for initiator
IQN A only.  open-iscsi logs in as A and gets a /dev/sdX whose data matches
the LV in both directions; a login as IQN B is refused by the target; A logs
out and the disk goes away.

Usage: check_iscsi_lio.py DISK
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

VG = "basalt_iscsi"
LV = "lun0"
TARGET = "iqn.2026-01.io.basalt:vm-target"
IQN_A = "iqn.2026-01.io.basalt:node-a"
IQN_B = "iqn.2026-01.io.basalt:node-b"
PORTAL = "127.0.0.1:3260"
BY_PATH = Path(f"/dev/disk/by-path/ip-{PORTAL}-iscsi-{TARGET}-lun-0")
MIB = 1 << 20


def step(msg: str) -> None:
    print(f"  + {msg}", flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    out = proc.stdout.strip()
    print(
        f"    $ {' '.join(cmd)} -> {proc.returncode}" + (("\n      " + out.replace("\n", "\n      ")) if out else ""),
        flush=True,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"  FAILED: {cmd[0]} exited {proc.returncode}")
    return proc


def write_mib(dev: str, offset_mib: int, data: bytes) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset_mib * MIB)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_mib(dev: str, offset_mib: int) -> bytes:
    # drop cached pages so that the read really goes to the device
    subprocess.run(["blockdev", "--flushbufs", dev], check=False)
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.pread(fd, MIB, offset_mib * MIB)
    finally:
        os.close(fd)


def wait_for(pred: object, what: str, seconds: float = 30.0) -> None:
    assert callable(pred)
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"  FAILED: timed out waiting for {what}")
        time.sleep(0.2)


def sessions() -> str:
    return sh("iscsiadm", "-m", "session", check=False).stdout


def main() -> int:
    disk = sys.argv[1]
    lv = f"/dev/{VG}/{LV}"
    os.environ["LVM_SUPPRESS_FD_WARNINGS"] = "1"
    step(f"block LV on {disk}")
    sh("pvcreate", "-q", "-y", "-ff", disk)
    sh("vgcreate", "-q", VG, disk)
    sh("lvcreate", "-q", "-y", "-n", LV, "-L", "64m", VG)
    sh("udevadm", "settle")
    wait_for(lambda: Path(lv).exists(), lv)
    data_a = os.urandom(MIB)
    write_mib(lv, 0, data_a)

    step("LIO target via rtslib: iblock backstore, ACL for IQN A only")
    from rtslib_fb import LUN, TPG, BlockStorageObject, FabricModule, MappedLUN, NetworkPortal, NodeACL, Target

    so = BlockStorageObject("basalt_lun0", dev=lv)
    target = Target(FabricModule("iscsi"), wwn=TARGET)
    try:
        tpg = TPG(target, 1)
        tpg.set_attribute("authentication", "0")
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("demo_mode_write_protect", "0")
        NetworkPortal(tpg, "127.0.0.1", 3260)
        lun = LUN(tpg, 0, so)
        acl = NodeACL(tpg, IQN_A)
        MappedLUN(acl, 0, lun)
        tpg.enable = True
        print(f"    target {TARGET} tpg 1 lun 0 -> {lv}; acls: {[a.node_wwn for a in tpg.node_acls]}", flush=True)
        return initiator_checks(lv, data_a)
    finally:
        step("tear down: iscsid, target, backstore, VG")
        sh("iscsiadm", "-k", "0", check=False)
        target.delete()
        so.delete()
        sh("vgremove", "-ff", "-y", VG, check=False)


def initiator_checks(lv: str, data_a: bytes) -> int:
    step("open-iscsi: iscsid, one iface per initiator IQN")
    sh("iscsid")
    for iface, iqn in (("basaltA", IQN_A), ("basaltB", IQN_B)):
        sh("iscsiadm", "-m", "iface", "-I", iface, "-o", "new")
        sh("iscsiadm", "-m", "iface", "-I", iface, "-o", "update", "-n", "iface.initiatorname", "-v", iqn)

    step("discovery and login as IQN A")
    out = sh("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTAL, "-I", "basaltA").stdout
    if TARGET not in out:
        raise SystemExit("  FAILED: discovery did not list the target")
    sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltA", "--login")
    sh("udevadm", "settle")
    wait_for(BY_PATH.exists, str(BY_PATH))
    sdx = os.path.realpath(BY_PATH)
    print(f"    {BY_PATH} -> {sdx}", flush=True)
    if not Path(sdx).name.startswith("sd"):
        raise SystemExit(f"  FAILED: expected a SCSI disk, got {sdx}")
    size = int(Path(f"/sys/block/{Path(sdx).name}/size").read_text()) * 512
    if size != 64 * MIB:
        raise SystemExit(f"  FAILED: {sdx} has {size} bytes, want 64 MiB")

    step(f"data written to the LV reads back through {sdx}")
    if read_mib(sdx, 0) != data_a:
        raise SystemExit("  FAILED: iSCSI disk data differs from the LV")
    step(f"data written through {sdx} reads back on the LV")
    data_b = os.urandom(MIB)
    write_mib(sdx, 8, data_b)
    if read_mib(lv, 8) != data_b:
        raise SystemExit("  FAILED: LV data differs from what the initiator wrote")

    step("login as IQN B (not in the ACL) is refused")
    sh("iscsiadm", "-m", "node", "-o", "new", "-T", TARGET, "-p", PORTAL, "-I", "basaltB")
    sh(
        "iscsiadm",
        "-m",
        "node",
        "-T",
        TARGET,
        "-p",
        PORTAL,
        "-I",
        "basaltB",
        "-o",
        "update",
        "-n",
        "node.session.initial_login_retry_max",
        "-v",
        "1",
    )
    refused = sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltB", "--login", check=False)
    if refused.returncode == 0:
        raise SystemExit("  FAILED: IQN B logged in despite the ACL")
    if "authoriz" not in refused.stdout.lower():
        raise SystemExit("  FAILED: IQN B login failed, but not for authorization")
    active = sessions()
    if IQN_B in active or active.count(TARGET) != 1:
        raise SystemExit("  FAILED: unexpected sessions after IQN B's attempt")

    step("logout as IQN A: the disk goes away")
    sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltA", "--logout")
    sh("udevadm", "settle")
    wait_for(lambda: not Path(sdx).exists(), f"{sdx} to go away")
    if TARGET in sessions():
        raise SystemExit("  FAILED: a session remains after logout")
    print("iscsi_lio: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
