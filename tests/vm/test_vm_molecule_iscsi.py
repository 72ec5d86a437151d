"""Molecule's two-host ``iscsi`` scenario: a storage host and a node, two systemd VMs over SSH.

ssh_vm.ssh_vm_pair boots two VMs of the ``systemd`` image (each on its own
throw-away overlay, ``-smp 1``, each reached over SSH on its own 127.0.0.1
port forward) joined by a private link (a QEMU stream netdev over a unix
socket: 10.77.0.1 and 10.77.0.2).  ``molecule test -s iscsi`` then runs
syntax, converge (host, pool, iscsi_target with LIO and agent on the storage
VM; host with open-iscsi and multipath, pool and agent on the node VM),
idempotence, check, verify (a volume published by the storage VM's agent with
CHAP, staged over the private link by the node VM's agent, written, read
back, unstaged, unpublished, the bytes found in the storage VM's pool) and
cleanup, with this checkout linked into a temporary
``ansible_collections/basalt/csi`` tree and the agent's dependency wheels
shared read-only into both guests at ``/mnt/basalt-wheels`` (the guests have
no network beyond their link).

Skips only where QEMU or debootstrap is missing, where the image is not cached
and the user is not root, or where molecule/ansible are not installed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import build_image
import pydeps
import pytest
import ssh_vm

# fixtures and the runner shared with the one-VM scenarios
from test_vm_molecule import REPO, WHEEL_SHARE, _in_vm, _molecule_test, collections, tools  # noqa: F401
from vm_testlib import fake_image

pytestmark = pytest.mark.vm


def test_molecule_iscsi_across_two_vms(
    tools: None, systemd_image: build_image.Image, collections: Path, tmp_path: Path  # noqa: F811
) -> None:
    t0 = time.monotonic()
    with ssh_vm.ssh_vm_pair(image=systemd_image, timeout=2400,
                            shares={WHEEL_SHARE: pydeps.ensure_wheels()}) as (storage, node):
        boot = storage.boot_seconds
        # Two hosts: two kernels (each its own boot id), each its own address on the link, neither set up
        # yet. The image's machine id is the same in both: nothing here derives from it (docs/vm-tier.md).
        ids = {_in_vm(vm, "cat", "/proc/sys/kernel/random/boot_id").stdout for vm in (storage, node)}
        assert len(ids) == 2, "the two VMs are one"
        assert _in_vm(node, "test", "-e", "/opt/basalt").returncode == 1, "the node VM is not fresh"
        assert storage.private_address != node.private_address
        t1 = time.monotonic()
        seconds = _molecule_test("iscsi", ssh_vm.pair_env((storage, node)), tmp_path, collections)
        molecule_seconds = time.monotonic() - t1
        # After verify and cleanup: the agents still run, no session or target is left, the volume is gone.
        assert _in_vm(node, "systemctl", "is-active", "basalt-agent.service").stdout.strip() == "active"
        assert _in_vm(storage, "systemctl", "is-active", "basalt-agent.service").stdout.strip() == "active"
        assert _in_vm(node, "iscsiadm", "-m", "session").returncode == 21, "an iSCSI session is left on the node"
        assert "iqn." not in _in_vm(storage, "targetcli", "ls", "/iscsi").stdout, "a LIO target is left"
        assert _in_vm(storage, "ls", "-A", "/var/lib/basalt/pools/file/volumes").stdout == ""
        for vm in (storage, node):  # the agents were installed from the share: nothing copied
            assert _in_vm(vm, "test", "-e", "/opt/basalt/wheels").returncode == 1, "the wheels were copied"
    assert not storage.key.parent.exists(), "the run's temp dir (key, overlays, link) outlived the VMs"
    print(f"boot of both VMs to sshd and the private link {boot:.1f} s; molecule test -s iscsi "
          f"{molecule_seconds:.1f} s; all {time.monotonic() - t0:.1f} s")
    print("; ".join(f"{step} {value:.1f} s" for step, value in seconds.items()))


# --- the pair's start-up and bounds, with a fake QEMU (no image, no VM) ------

FAKE_QEMU = """#!{python}
# A stand-in for qemu-system-x86_64 with a QMP monitor: answers every command (logged to {log}), opens the
# private link's socket where it is the server end, never boots (no sshd ever answers).
import json, os, socket, sys, time
args = sys.argv[1:]
with open("{tmp}/tmpdir", "w") as f:
    f.write(os.environ["TMPDIR"])
netdev = next(a for a in args if a.startswith("stream,"))
if "server=on" in netdev:
    link = socket.socket(socket.AF_UNIX)
    link.bind(netdev.split("addr.path=")[1])
    link.listen()
elif not os.path.exists(netdev.split("addr.path=")[1]):
    sys.exit("the client end started before the server's socket existed")
qmp_path = args[args.index("-qmp") + 1].split("unix:")[1].split(",")[0]
mac = next(a for a in args if "id=nic1" in a).split("mac=")[1].split(",")[0]
server = socket.socket(socket.AF_UNIX)
server.bind(qmp_path)
server.listen()
conn, _ = server.accept()
stream = conn.makefile("rw")
stream.write(json.dumps({{"QMP": {{}}}}) + "\\n")
stream.flush()
for line in stream:
    with open("{log}", "a") as f:
        f.write(mac + " " + line)
    stream.write(json.dumps({{"return": {{}}}}) + "\\n")
    stream.flush()
time.sleep(1000)
"""


def test_ssh_vm_pair_starts_paused_link_down_and_gives_up_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "qmp.log"
    qemu = tmp_path / "fake-qemu"
    qemu.write_text(FAKE_QEMU.format(python=sys.executable, log=log, tmp=tmp_path))
    qemu.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(ssh_vm.VmError, match="did not answer"):
        with ssh_vm.ssh_vm_pair(image=fake_image(tmp_path), qemu=str(qemu), boot_timeout=5, timeout=60):
            pytest.fail("a pair without sshd was yielded")
    assert time.monotonic() - t0 < 60
    entries = (entry.split(" ", 1) for entry in log.read_text().splitlines())
    commands = [(mac, json.loads(line)) for mac, line in entries]
    for mac in ssh_vm.PRIVATE_MACS:  # each VM: QMP handshake, its private NIC's link down, then it runs
        assert [c["execute"] for m, c in commands if m == mac] == ["qmp_capabilities", "set_link", "cont"]
        assert [c["arguments"] for m, c in commands if m == mac][1] == {"name": ssh_vm.PRIVATE_NIC, "up": False}
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()
