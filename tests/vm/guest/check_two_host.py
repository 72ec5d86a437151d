#!/usr/bin/env python3
"""Two-VM check: iSCSI across hosts on a private QEMU network.

Run by tests/vm/run_vm.py's run_pair in two VMs at once:

* ``check_two_host.py storage DISK`` (10.77.0.1): a block LV exported by LIO
  on 10.77.0.1:3260, ACL for IQN A only; waits for IQN A's session to come
  and go, then checks the data the node wrote through it.
* ``check_two_host.py node`` (10.77.0.2): waits for the portal, is refused as
  IQN B, logs in as IQN A, reads the storage host's data from /dev/sdX,
  writes its own, logs out.

Both sides know the data in advance (shake-256 of a fixed seed), so each can
check the other's writes.  Prints ``BASALT-CHECK two_host_<role> PASS|FAIL``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_iscsi_lio import MIB, read_mib, sh, step, wait_for, write_mib

VG = "basalt_2h"
LV = "lun0"
TARGET = "iqn.2026-01.io.basalt:storage-1"
IQN_A = "iqn.2026-01.io.basalt:node-a"
IQN_B = "iqn.2026-01.io.basalt:node-b"
STORAGE_IP = "10.77.0.1"
NODE_IP = "10.77.0.2"
PORTAL = f"{STORAGE_IP}:3260"
BY_PATH = Path(f"/dev/disk/by-path/ip-{PORTAL}-iscsi-{TARGET}-lun-0")


def pattern(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(MIB)


def network(ip: str) -> None:
    sh("modprobe", "virtio_net", check=False)
    sh("udevadm", "settle")
    ifaces = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not ifaces:
        raise SystemExit("  FAILED: no network interface")
    sh("busybox", "ip", "addr", "add", f"{ip}/24", "dev", ifaces[0])
    sh("busybox", "ip", "link", "set", ifaces[0], "up")


def storage(disk: str) -> int:
    lv = f"/dev/{VG}/{LV}"
    os.environ["LVM_SUPPRESS_FD_WARNINGS"] = "1"
    network(STORAGE_IP)
    step(f"block LV on {disk} with the storage host's data")
    sh("pvcreate", "-q", "-y", "-ff", disk)
    sh("vgcreate", "-q", VG, disk)
    sh("lvcreate", "-q", "-y", "-n", LV, "-L", "64m", VG)
    sh("udevadm", "settle")
    wait_for(lambda: Path(lv).exists(), lv)
    write_mib(lv, 0, pattern("storage"))

    step(f"LIO target on {PORTAL}, ACL for IQN A only")
    from rtslib_fb import LUN, TPG, BlockStorageObject, FabricModule, MappedLUN, NetworkPortal, NodeACL, Target

    so = BlockStorageObject("basalt_2h", dev=lv)
    target = Target(FabricModule("iscsi"), wwn=TARGET)
    try:
        tpg = TPG(target, 1)
        tpg.set_attribute("authentication", "0")
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("demo_mode_write_protect", "0")
        NetworkPortal(tpg, STORAGE_IP, 3260)
        acl = NodeACL(tpg, IQN_A)
        MappedLUN(acl, 0, LUN(tpg, 0, so))
        tpg.enable = True
        step("waiting for IQN A's session to come and go")
        wait_for(lambda: acl.session is not None, "IQN A's session", 240)
        session = acl.session
        print(f"    session: {session}", flush=True)
        wait_for(lambda: acl.session is None, "IQN A's logout", 120)
        step("data the node wrote through iSCSI is on the LV")
        if read_mib(lv, 8) != pattern("node"):
            raise SystemExit("  FAILED: the node's data is not on the LV")
    finally:
        target.delete()
        so.delete()
        sh("vgremove", "-ff", "-y", VG, check=False)
    print("two_host storage: ok", flush=True)
    return 0


def node() -> int:
    network(NODE_IP)
    sh("iscsid")
    for iface, iqn in (("basaltA", IQN_A), ("basaltB", IQN_B)):
        sh("iscsiadm", "-m", "iface", "-I", iface, "-o", "new")
        sh("iscsiadm", "-m", "iface", "-I", iface, "-o", "update", "-n", "iface.initiatorname", "-v", iqn)
    try:
        step(f"waiting for the portal {PORTAL} (discovery as IQN A)")
        deadline = time.monotonic() + 240
        while True:
            found = sh("iscsiadm", "-m", "discovery", "-t", "sendtargets", "-p", PORTAL, "-I", "basaltA", check=False)
            if found.returncode == 0 and TARGET in found.stdout:
                break
            if time.monotonic() > deadline:
                raise SystemExit("  FAILED: the storage host's portal never answered")
            time.sleep(2)

        step("login as IQN B is refused across hosts")
        sh("iscsiadm", "-m", "node", "-o", "new", "-T", TARGET, "-p", PORTAL, "-I", "basaltB")
        refused = sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltB", "--login", check=False)
        if refused.returncode == 0 or "authoriz" not in refused.stdout.lower():
            raise SystemExit("  FAILED: IQN B was not refused for authorization")

        step("login as IQN A")
        sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltA", "--login")
        sh("udevadm", "settle")
        wait_for(BY_PATH.exists, str(BY_PATH))
        sdx = os.path.realpath(BY_PATH)
        print(f"    {BY_PATH} -> {sdx}", flush=True)
        if read_mib(sdx, 0) != pattern("storage"):
            raise SystemExit("  FAILED: the storage host's data differs on the node")
        step(f"write through {sdx}, then log out")
        write_mib(sdx, 8, pattern("node"))
        sh("iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL, "-I", "basaltA", "--logout")
        sh("udevadm", "settle")
        wait_for(lambda: not Path(sdx).exists(), f"{sdx} to go away")
    finally:
        sh("iscsiadm", "-k", "0", check=False)
    print("two_host node: ok", flush=True)
    return 0


def main() -> int:
    role = sys.argv[1]
    ok = False
    try:
        rc = storage(sys.argv[2]) if role == "storage" else node()
        ok = rc == 0
        return rc
    finally:
        line = f"BASALT-CHECK two_host_{role} {'PASS' if ok else 'FAIL'}"
        print(line, flush=True)
        results = os.environ.get("BASALT_RESULTS")
        if results:
            with open(os.path.join(results, "checks.txt"), "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
