"""Molecule converges the collection's roles and playbooks on a real host: the VM tier's systemd VM over SSH.

ssh_vm.py boots the ``systemd`` variant of the image (systemd as PID 1, sshd,
QEMU user-mode networking with ``hostfwd=tcp:127.0.0.1:PORT-:22``, a key made
for this run, the VM's own host key checked); Molecule scenarios then run
against it, with this checkout linked into a temporary
``ansible_collections/basalt/csi`` tree.  The guest has no network: the agent's
dependency wheels (pydeps.ensure_wheels) are shared read-only into it at
``/mnt/basalt-wheels`` (molecule/default/group_vars/all.yml), the controller
builds the agent's own wheel with the setuptools of the same directory.

One boot with two scratch disks runs three scenarios, one after another, each
starting from the host the previous one's cleanup left (checked: nothing of
Basalt left):

- ``molecule/default``: the nodes playbook (host role with the iSCSI
  initiator, file pool, agent under systemd); verify: the unit active, both
  sockets 0600, Probe, the derived initiator name.
- ``molecule/lvm`` (the two scratch disks): the nodes playbook with an lvmthin
  pool the pool role makes on the disks, a thin volume walked through the
  agent; cleanup is the uninstall playbook with purge.
- ``molecule/uninstall``: prepare installs (nodes playbook) and makes a volume
  in the file pool; converge is the uninstall playbook; verify: nothing of
  Basalt left, the volume kept; cleanup purges.

Each scenario runs its whole test_sequence (syntax, [prepare,] converge,
idempotence, check, verify, cleanup); the time of each step is printed.

Skips only where QEMU or debootstrap is missing, where the image is not cached
and the user is not root, or where molecule/ansible are not installed.

The runner's bounds (sshd never answering, a forwarded port taken) are tested
with a fake QEMU, which needs no image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import build_image
import pydeps
import pytest
import ssh_vm
import yaml
from vm_testlib import fake_image, fake_qemu, gone, tail, unavailable

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
WHEEL_SHARE = "/mnt/basalt-wheels"  # molecule/default/group_vars/all.yml basalt_agent_host_wheel_dir
POOL_DIR = "/var/lib/basalt/pools/file"  # the agent's default pool (roles/defaults: basalt_pool)
STEP_LINE = re.compile(r"\[(\w+) > (\w+)\] (Executing|Executed: (\w+))")


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


def _sequence(scenario: str) -> list[str]:
    config = yaml.safe_load((REPO / "molecule" / scenario / "molecule.yml").read_text())
    return list(config["scenario"]["test_sequence"])


def _molecule_test(scenario: str, vm_env: dict[str, str], tmp_path: Path, collections: Path) -> dict[str, float]:
    """``molecule test -s scenario`` against the VMs *vm_env* names (``SshVm.env``, ``ssh_vm.pair_env``);
    asserts every step of its sequence succeeded and returns each step's seconds (from Molecule's own
    Executing/Executed lines, stamped as they come)."""
    env = dict(
        os.environ,
        **vm_env,
        MOLECULE_GLOB="molecule/*/molecule.yml",
        MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule" / scenario),
        BASALT_COLLECTIONS_PATH=str(collections),
        BASALT_AGENT_WHEEL_DIR=str(pydeps.ensure_wheels()),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(tmp_path / "cp"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
        ANSIBLE_NOCOLOR="1",
        NO_COLOR="1",
    )
    steps: dict[str, float] = {}
    lines: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(["molecule", "test", "-s", scenario], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            found = STEP_LINE.search(line)
            if found and found.group(1) == scenario:
                now = time.monotonic()
                if found.group(3) == "Executing":
                    started = now
                elif found.group(4) == "Successful":
                    steps[found.group(2)] = now - started
        rc = proc.wait(timeout=60)
    output = "".join(lines)
    print(output)
    assert rc == 0, f"molecule test -s {scenario}:\n{tail(output, 150)}"
    missing = [step for step in _sequence(scenario) if step not in steps]
    assert not missing, f"{scenario}: steps {missing} did not run:\n{tail(output, 150)}"
    return steps


def _report(timings: dict[str, dict[str, float]], boot: float) -> None:
    for scenario, steps in timings.items():
        print(f"molecule {scenario}: " + ", ".join(f"{step} {sec:.0f} s" for step, sec in steps.items())
              + f"; total {sum(steps.values()):.0f} s")
    print(f"boot to sshd {boot:.0f} s")


# One boot for the scenarios of one VM, in this order: each runs its whole sequence, and its cleanup must leave
# the host as it found it (checked below), so the next starts from a fresh host; the boot and the controller's
# set-up are paid once. Only lvm uses the two scratch disks.
ONE_VM_SCENARIOS = ("default", "lvm", "uninstall")


def _nothing_of_basalt_left(vm: ssh_vm.SshVm, after: str) -> None:
    """What every scenario's cleanup (the uninstall playbook with purge) must have removed."""
    assert _in_vm(vm, "systemctl", "is-active", "basalt-agent.service").stdout.strip() == "inactive", after
    for path in (POOL_DIR, "/opt/basalt", "/etc/basalt"):
        assert _in_vm(vm, "test", "-e", path).returncode == 1, f"{after}: {path} is left"
    assert _in_vm(vm, "vgs", "basalt").returncode != 0, f"{after}: the VG basalt is left"
    for disk in ("scratch0", "scratch1"):
        assert _in_vm(vm, "pvs", f"/dev/disk/by-id/virtio-{disk}").returncode != 0, f"{after}: {disk} is still a PV"


def test_molecule_scenarios_on_one_systemd_vm_over_ssh(
    tools: None, systemd_image: build_image.Image, collections: Path, tmp_path: Path
) -> None:
    with ssh_vm.ssh_vm(image=systemd_image, timeout=3600, disks=2, disk_size_mib=1024,
                       shares={WHEEL_SHARE: pydeps.ensure_wheels()}) as vm:
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
        timings = {}
        for scenario in ONE_VM_SCENARIOS:
            timings[scenario] = _molecule_test(scenario, vm.env(), tmp_path, collections)
            _nothing_of_basalt_left(vm, f"after molecule/{scenario}")
        # the image's bytecode cache for Ansible's module payloads (image/basalt_zip_bytecode.py) was in use
        cached = _in_vm(vm, "ls", "/var/cache/basalt-zip-bytecode").stdout.split()
        assert len(cached) > 20, cached
    assert not vm.key.parent.exists(), "the run's temp dir (key, overlay) outlived the VM"
    _report(timings, vm.boot_seconds)


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
