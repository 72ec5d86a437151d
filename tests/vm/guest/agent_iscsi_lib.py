"""Guest-side helpers for the iSCSI checks that go THROUGH THE AGENT (inside the VM only).

Used by check_agent_iscsi.py (one VM: storage agent + node agent),
check_agent_multipath.py (two portals, multipathd) and
check_agent_two_host.py (storage VM and node VM).  The agents are real
``python3 -m basalt_agent`` processes started by the conformance suite's
``Agent`` class (tests/conformance/basalt_csi_testlib.py); their Python
packages (grpcio, protobuf, pytest wheels) come from the read-only 9p share
``pydeps`` (tests/vm/pydeps.py), the storage core and agent from the
read-only project tree through a symlink shim.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

TREE = Path(os.environ.get("BASALT_TREE", "/basalt"))
DEPS = "/opt/basalt-pydeps"
MIB = 1 << 20
CHAP_USER = "node.session.auth.username"
CHAP_PASSWORD = "node.session.auth.password"
SECRETS = {CHAP_USER: "node-a-user", CHAP_PASSWORD: "Secret-Of-A-1234"}
INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
START_TIMEOUT = 240.0
# What Debian's rtslib-fb-targetctl.service restores at boot (``targetctl restore``), and so what the agent's
# LIO backend saves to (rtslib's default_save_file; upstream rtslib uses /etc/target/saveconfig.json).
LIO_SAVE_FILE = "/etc/rtslib-fb-target/saveconfig.json"


class CheckFailed(Exception):
    pass


def step(message: str) -> None:
    print(f"  + {message}", flush=True)


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def sh(*argv: str, check: bool = True, env: Optional[Dict[str, str]] = None,
       timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    out = proc.stdout.strip()
    print(f"    $ {' '.join(argv)} -> {proc.returncode}" + ("\n      " + out.replace("\n", "\n      ") if out else ""),
          flush=True)
    if check and proc.returncode != 0:
        raise CheckFailed(f"{argv[0]} exited {proc.returncode}")
    return proc


def wait_for(predicate: Callable[[], object], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.2)


def report(name: str, body: Callable[[], None], *, own_line: bool = False) -> int:
    """Run *body* and return its rc.  With *own_line* (scripts run without run_checks.sh) also print, and
    append to $BASALT_RESULTS/checks.txt, the ``BASALT-CHECK name PASS|FAIL`` line the host reads."""
    t0 = time.monotonic()
    ok = False
    try:
        body()
        ok = True
    except CheckFailed as failure:
        print(f"  FAILED: {failure}", flush=True)
    finally:
        print(f"{name}: {'ok' if ok else 'failed'} after {time.monotonic() - t0:.1f} s", flush=True)
        results = os.environ.get("BASALT_RESULTS")
        if own_line:
            line = f"BASALT-CHECK {name} {'PASS' if ok else 'FAIL'} seconds={time.monotonic() - t0:.1f}"
            print(line, flush=True)
            if results:
                with open(os.path.join(results, "checks.txt"), "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
    return 0 if ok else 1


# -- the guest's environment ---------------------------------------------------


def prepare(disk: Optional[str]) -> None:
    """Python packages, LVM without event activation, and an ext4 /tmp on *disk* (agent roots, PV images)."""
    os.makedirs(DEPS, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", DEPS]).returncode != 0:
        sh("mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144,ro", "pydeps", DEPS)
    # Udev's 69-lvm.rules would re-activate the agent's LVs behind its back (docs/vm-tier.md).
    os.makedirs("/etc/lvm", exist_ok=True)
    Path("/etc/lvm/lvmlocal.conf").write_text("global {\n\tevent_activation = 0\n}\n")
    if disk is not None:
        sh("mkfs.ext4", "-q", "-F", disk)
        sh("mount", disk, "/tmp")
        os.chmod("/tmp", 0o1777)
    shim = tempfile.mkdtemp(prefix="basalt-shim-")
    os.symlink(TREE / "agent" / "basalt_agent", os.path.join(shim, "basalt_agent"))
    os.symlink(TREE / "plugins" / "module_utils", os.path.join(shim, "basalt_core"))
    for entry in (str(TREE / "tests" / "conformance"), shim, DEPS):
        sys.path.insert(0, entry)
    os.environ["PYTHONPATH"] = DEPS
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ["LVM_SUPPRESS_FD_WARNINGS"] = "1"


def disk_by_serial(serial: str) -> str:
    """A scratch disk by the virtio serial run_vm.py gives it (the root disk is not always vda)."""
    for entry in sorted(Path("/sys/block").glob("vd*")):
        if (entry / "serial").exists() and (entry / "serial").read_text().strip() == serial:
            return f"/dev/{entry.name}"
    raise CheckFailed(f"no disk with serial {serial}")


def release_tmp() -> None:
    os.chdir("/")
    if subprocess.run(["mountpoint", "-q", "/tmp"]).returncode == 0:
        sh("umount", "/tmp", check=False)


def initiator_iqn() -> str:
    """This VM's open-iscsi initiator name, generated the way Debian's iscsi-init.service does at first boot."""
    text = Path(INITIATOR_FILE).read_text() if os.path.exists(INITIATOR_FILE) else ""
    if "InitiatorName=" not in text:
        name = sh("iscsi-iname").stdout.strip()
        Path(INITIATOR_FILE).write_text(f"InitiatorName={name}\n")
    from basalt_core import iscsiadm

    return iscsiadm.initiator_name()


def start_iscsid() -> None:
    sh("iscsid")


def stop_iscsid() -> None:
    sh("iscsiadm", "-k", "0", check=False)


def network(ip: str) -> None:
    """The private QEMU network of run_pair (10.77.0.0/24)."""
    sh("udevadm", "settle")
    ifaces = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    expect(ifaces, "no network interface")
    sh("busybox", "ip", "addr", "add", f"{ip}/24", "dev", ifaces[0])
    sh("busybox", "ip", "link", "set", ifaces[0], "up")


# -- the agents ------------------------------------------------------------------


def storage_agent(node_iqns: Dict[str, str], portals: Sequence[str], node_id: str = "storage-1") -> Any:
    """A storage-host agent (not started): ``--pool lvm:VG --lvm-activation dm`` on a private VG (the
    conformance suite's DmLvmVg: loop PV over a sparse image on /tmp) exporting over LIO to *node_iqns*."""
    from basalt_csi_testlib import Agent, DmLvmVg, make_root

    root = make_root("storage")
    vg = DmLvmVg(root).create()
    args = ["--iscsi-backend", "lio"]
    for portal in portals:
        args += ["--iscsi-portal", portal]
    for node, iqn in node_iqns.items():
        args += ["--iscsi-initiator", f"{node}={iqn}"]
    return Agent(root, os.path.join(root, "pool"), node_id=node_id, extra_args=args, lvm=vg)


def node_agent(node_id: str) -> Any:
    """A node agent, not started (its own pool is a file pool nobody uses: every volume comes over iSCSI)."""
    from basalt_csi_testlib import Agent, make_root

    root = make_root("node")
    return Agent(root, os.path.join(root, "pool"), node_id=node_id, services="identity,node")


def start(*agents: Any) -> Any:
    """Start (or restart) *agents* side by side (their start-up is mostly Python imports: slow under TCG,
    and far more than the suite's 20 s on a shared 2-core host); return the first."""
    for agent in agents:
        agent.start(wait_ready=False)
    for agent in agents:
        agent.wait_ready(timeout=START_TIMEOUT)
    return agents[0]


def stop_agent(agent: Any, *, release: bool = True) -> None:
    from basalt_csi_testlib import cleanup_root

    agent.stop()
    tail = agent.log()[-3000:]
    if tail:
        print(f"    --- {agent.node_id} agent log (tail) ---\n" + tail, flush=True)
    if release:
        lvm = agent.lvm
        own = [lvm.device] if lvm is not None and lvm.device else []
        cleanup_root(agent.root, own_loops=own, backing_devices=own, release=lvm.release if lvm else None)


def teardown_storage(agent: Any) -> None:
    """After a failure too: sessions logged out, iscsid stopped, LIO cleared (every target in this VM is
    the test's), then the agent stopped and its VG removed."""
    sh("iscsiadm", "-m", "node", "--logoutall=all", check=False)
    stop_iscsid()
    from rtslib_fb import RTSRoot

    RTSRoot().clear_existing(confirm=True)
    stop_agent(agent)


def teardown(storage: Any, node: Any) -> None:
    """After a check (passed or failed): the node agent stopped, then the storage host torn down, /tmp released."""
    stop_agent(node)
    teardown_storage(storage)
    release_tmp()


def expect_foreign_intact(storage: Any) -> None:
    problems = storage.lvm.foreign_problems()
    expect(not problems, f"foreign LVs: {problems}")


def lv_device(agent: Any, volume_id: str) -> str:
    from basalt_csi_testlib import volume_lv_name

    return f"/dev/{agent.lvm.vg}/{volume_lv_name(volume_id)}"


def lv_active(agent: Any, volume_id: str) -> bool:
    from basalt_csi_testlib import volume_lv_name

    rows = agent.lvm.report("lvs", "lv", "lv_name,lv_active", agent.lvm.vg)
    return any(r["lv_name"] == volume_lv_name(volume_id) and r["lv_active"] == "active" for r in rows)


def debugfs_cat(device: str, path: str) -> bytes:
    """A file of the ext4 on *device*, read with O_DIRECT (no stale page cache) and without mounting."""
    proc = subprocess.run(["debugfs", "-D", "-R", f"cat {path}", device], capture_output=True,
                          timeout=120)
    expect(proc.returncode == 0, f"debugfs {device}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


# -- LIO, as the kernel has it -------------------------------------------------------


def lio_target(target_iqn: str) -> Any:
    from rtslib_fb import FabricModule

    for target in FabricModule("iscsi").targets:
        if target.wwn == target_iqn:
            return target
    return None


def lio_acls(target_iqn: str) -> List[str]:
    target = lio_target(target_iqn)
    if target is None:
        return []
    return sorted(acl.node_wwn for tpg in target.tpgs for acl in tpg.node_acls)


# -- the initiator, as the kernel has it --------------------------------------------


def session_targets() -> List[str]:
    out = subprocess.run(["iscsiadm", "-m", "session"], text=True, capture_output=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.startswith("tcp:")]


def node_record_exists(target_iqn: str) -> bool:
    return subprocess.run(["iscsiadm", "-m", "node", "-T", target_iqn], capture_output=True).returncode == 0


def write_and_sync(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
