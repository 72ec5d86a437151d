"""Molecule converges the collection against a real host: the VM tier's systemd VM over SSH.

ssh_vm.py boots the ``systemd`` variant of the image (systemd as PID 1, sshd,
QEMU user-mode networking with ``hostfwd=tcp:127.0.0.1:PORT-:22``, a key made
for this run, the VM's own host key checked); ``molecule test`` then runs the
top-level scenario ``molecule/default`` (syntax, converge, idempotence, check,
verify, cleanup) against it, with this checkout linked into a temporary
``ansible_collections/basalt/csi`` tree.  The scenario drives the modules for
real inside the VM (file pool volume, loop device, mkfs + mount, a file).

Skips only where QEMU or debootstrap is missing, where the image is not cached
and the user is not root, or where molecule/ansible are not installed.

The runner's bounds (sshd never answering, a forwarded port taken) are tested
with a fake QEMU, which needs no image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import build_image
import pytest
import ssh_vm
from vm_testlib import fake_image, fake_qemu, gone, tail, unavailable

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
POOL_DIR = "/var/lib/basalt/pools/file"  # molecule/default/group_vars/basalt_storage.yml
MOUNT = "/srv/basalt-molecule"
STEPS = ["syntax", "converge", "idempotence", "check", "verify", "cleanup"]  # molecule.yml's test_sequence


@pytest.fixture
def tools() -> None:
    missing = [t for t in ("molecule", "ansible-playbook", "ssh", "ssh-keygen") if shutil.which(t) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (scripts/ansible-checks.sh installs molecule and ansible)")


@pytest.fixture
def collections(tmp_path: Path) -> Iterator[Path]:
    """A directory holding ``ansible_collections/basalt/csi``, a link to this checkout."""
    top = tmp_path / "collections"
    (top / "ansible_collections" / "basalt").mkdir(parents=True)
    (top / "ansible_collections" / "basalt" / "csi").symlink_to(REPO)
    yield top


def _in_vm(vm: ssh_vm.SshVm, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(vm.ssh_argv(*command), capture_output=True, text=True, timeout=120, check=False)


def test_molecule_converges_the_systemd_vm_over_ssh(
    tools: None, systemd_image: build_image.Image, collections: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    with ssh_vm.ssh_vm(image=systemd_image, timeout=1500) as vm:
        boot = vm.boot_seconds
        assert _in_vm(vm, "test", "-e", POOL_DIR).returncode == 1, "the VM is not fresh"
        assert _in_vm(vm, "readlink", "/proc/1/exe").stdout.strip() == "/usr/lib/systemd/systemd"
        # The host key is checked: a known_hosts with another key is refused.
        other = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        trusted = vm.known_hosts.read_text()
        vm.known_hosts.write_text(f"[{vm.host}]:{vm.port} {other.with_suffix('.pub').read_text()}")
        refused = _in_vm(vm, "true")
        vm.known_hosts.write_text(trusted)
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr
        env = dict(
            os.environ,
            **vm.env(),
            MOLECULE_GLOB="molecule/*/molecule.yml",
            MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule"),
            BASALT_COLLECTIONS_PATH=str(collections),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"),
            ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
            ANSIBLE_NOCOLOR="1",
            NO_COLOR="1",
        )
        t1 = time.monotonic()
        proc = subprocess.run(
            ["molecule", "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        molecule_seconds = time.monotonic() - t1
        output = proc.stdout + proc.stderr
        print(output)
        assert proc.returncode == 0, tail(output, 120)
        # Converge ran in the VM (the module laid the pool out there), cleanup undid it.
        assert _in_vm(vm, "test", "-d", f"{POOL_DIR}/volumes").returncode == 0
        assert _in_vm(vm, "ls", "-A", f"{POOL_DIR}/volumes").stdout == ""
        assert _in_vm(vm, "findmnt", MOUNT).returncode == 1
        assert _in_vm(vm, "losetup", "--list", "--noheadings").stdout == ""
    assert not vm.key.parent.exists(), "the run's temp dir (key, overlay) outlived the VM"
    print(f"boot to sshd {boot:.1f} s; molecule test {molecule_seconds:.1f} s; all {time.monotonic() - t0:.1f} s")
    for step in STEPS:
        assert f"default > {step}: Executed: Successful" in output, f"step {step} did not run:\n{tail(output, 120)}"
    assert "basalt-vm" in output


# --- the runner's bounds, with a fake QEMU (no image, no VM) -----------------


def test_ssh_vm_gives_up_when_sshd_never_answers(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, f"sleep 1000 &\necho $! > {tmp_path}/child\nwait\n")
    t0 = time.monotonic()
    with pytest.raises(ssh_vm.VmError, match="did not answer"):
        with ssh_vm.ssh_vm(image=fake_image(tmp_path), qemu=qemu, boot_timeout=3, timeout=60):
            pytest.fail("a VM without sshd was yielded")
    assert time.monotonic() - t0 < 30
    child = int((tmp_path / "child").read_text())
    assert gone(child), f"fake QEMU's child {child} outlived the run"
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()


def test_ssh_vm_retries_a_taken_port_then_fails(tmp_path: Path) -> None:
    ports = tmp_path / "ports"
    qemu = fake_qemu(
        tmp_path,
        f'printf "%s\\n" "$@" | grep -o "hostfwd=[^,]*" >> {ports}\n'
        f'echo "qemu: {ssh_vm.PORT_TAKEN} \'tcp:127.0.0.1:1-:22\'"\nexit 1\n',
    )
    with pytest.raises(ssh_vm.VmError, match="QEMU exited"):
        with ssh_vm.ssh_vm(image=fake_image(tmp_path), qemu=qemu, boot_timeout=30, timeout=60):
            pytest.fail("a VM that never started was yielded")
    tried = ports.read_text().split()
    assert len(tried) == ssh_vm.PORT_ATTEMPTS and all(t.startswith("hostfwd=tcp:127.0.0.1:") for t in tried)
    assert not Path((tmp_path / "tmpdir").read_text().strip()).exists()
