#!/usr/bin/env python3
"""A long-lived Basalt test VM with systemd and sshd, reached over SSH on a
127.0.0.1 port forward: the bare-metal-like host Molecule converges against.

    python3 tests/vm/ssh_vm.py [--timeout S] [--console] -- COMMAND...

boots the ``systemd`` variant of the image (``build_image.py --variant
systemd``), waits for sshd, runs COMMAND on the host with the connection in
its environment (``BASALT_VM_SSH_HOST``, ``_PORT``, ``_USER``, ``_KEY``,
``_KNOWN_HOSTS``; e.g. ``-- molecule test``), powers the VM off and exits
with COMMAND's status.  ``--pair`` boots two such VMs from the same image
(each on its own copy-on-write overlay) joined by a private link (below); the
second VM's port is ``BASALT_VM2_SSH_PORT``, key, known_hosts and ``--share``
directories are shared.

* QEMU user-mode networking with ``hostfwd=tcp:127.0.0.1:PORT-:22`` (a free
  port; only the loopback address listens) and ``restrict=on``: the guest
  cannot open connections to the host or the outside (hermetic runs).
* A fresh ed25519 key per run (in the run's private temp dir) is handed to the
  guest through the results share, with the root disk's throw-away overlay as
  in run_vm.py; the guest makes its own host key at boot and hands its public
  half back the same way, so the host checks the key it connects to
  (``StrictHostKeyChecking=yes`` against a known_hosts of that one key).
  No password anywhere, no key committed.
* Bounds as in run_vm.py (whose pieces this reuses): QEMU in its own session
  under coreutils ``timeout``, the atexit kill, sshd awaited for at most
  ``boot_timeout`` seconds; on the way out ``systemctl poweroff`` (waited for
  a bounded time), then the process group is killed and the temp dir removed.
* The pair (``ssh_vm_pair``): a second NIC on each VM, a QEMU ``stream``
  netdev over a unix socket in the run's temp dir (no host port, no host
  interface), static 10.77.0.1 and 10.77.0.2.  The image's networkd file
  gives every Ethernet NIC the user-mode network's address, so the private
  NICs boot without carrier (QEMU started paused, link set down over QMP),
  get their own ``.network`` in /run over SSH, and only then their link.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_image
import run_vm

USER = "root"
HOST = "127.0.0.1"
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"  # written by the guest's basalt-ssh-setup
# QEMU's message when the forwarded port was taken meanwhile (another user of
# the machine): the boot is retried on another port.
PORT_TAKEN = "Could not set up host forwarding rule"
PORT_ATTEMPTS = 3
# Units this VM never needs that cost seconds each under TCG (and delay sshd,
# which starts in parallel with them): LIO config restore, e2scrub, dmeventd
# monitoring, and waiting for a network that is static anyway.
MASKED_UNITS = [
    "rtslib-fb-targetctl.service",
    "e2scrub_reap.service",
    "lvm2-monitor.service",
    "systemd-networkd-wait-online.service",
]
# The pair's first VM (the storage host) keeps LIO's restore unit: its iscsi_target role enables it (a masked
# unit refuses); the second (the node) masks it as ssh_vm does.
STORAGE_MASKED_UNITS = [unit for unit in MASKED_UNITS if unit != "rtslib-fb-targetctl.service"]


# The pair's private link: each VM's MAC and static address on it.
PRIVATE_MACS = ("52:54:00:00:77:01", "52:54:00:00:77:02")
PRIVATE_ADDRESSES = ("10.77.0.1", "10.77.0.2")
PRIVATE_PREFIX = 24
# Sorts before the image's basalt.network (Type=ether), so it wins for the private NIC; /run: this boot only.
PRIVATE_NETWORK_FILE = "/run/systemd/network/00-basalt-private.network"
PRIVATE_NIC = "nic1"  # QEMU's id of the private NIC (QMP set_link)


class VmError(RuntimeError):
    """The VM did not come up (or its sshd never answered)."""


@dataclass
class SshVm:
    """How to reach a running VM."""

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    boot_seconds: float  # QEMU start to a successful SSH login
    lines: list[str] = field(repr=False)  # the serial console, growing
    private_address: str = ""  # on the pair's private link (ssh_vm_pair), else empty

    def ssh_argv(self, *command: str) -> list[str]:
        """An ``ssh`` command line that runs `command` in the VM."""
        return [
            "ssh",
            "-F", "/dev/null",  # no user or system ssh_config in the way
            "-i", str(self.key),
            "-p", str(self.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "ConnectTimeout=20",
            f"{self.user}@{self.host}",
            "--",
            *command,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """The connection for the inventory of molecule/ (environment lookups)."""
        return {
            "BASALT_VM_SSH_HOST": self.host,
            "BASALT_VM_SSH_PORT": str(self.port),
            "BASALT_VM_SSH_USER": self.user,
            "BASALT_VM_SSH_KEY": str(self.key),
            "BASALT_VM_SSH_KNOWN_HOSTS": str(self.known_hosts),
        }

    def console(self) -> str:
        return "".join(self.lines)


def free_port() -> int:
    """A port free on 127.0.0.1 right now (QEMU binds it a moment later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(lines: list[str], n: int = 60) -> str:
    return "".join(lines[-n:])


def _wait_for_sshd(
    proc: subprocess.Popen[str], vm: SshVm, results: Path, deadline: float
) -> None:
    """Until `deadline`: the guest's host key in the results share, then a
    real key login (``ssh ... true``).  Raises VmError when QEMU exits first
    or the deadline passes."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise VmError(f"QEMU exited ({proc.returncode}) before sshd answered:\n{_tail(vm.lines)}")
        pub = results / HOST_KEY_FILE
        if pub.is_file():
            key_type, key_data = pub.read_text().split()[:2]
            vm.known_hosts.write_text(f"[{vm.host}]:{vm.port} {key_type} {key_data}\n")
            try:
                login = subprocess.run(
                    vm.ssh_argv("true"), stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
                )
            except subprocess.TimeoutExpired:
                continue
            if login.returncode == 0:
                return
        time.sleep(1)
    raise VmError(f"sshd did not answer within the boot timeout:\n{_tail(vm.lines)}")


def _mount_share(vm: SshVm, tag: str, guest: str) -> None:
    """Mount the read-only 9p share `tag` on `guest` in the VM (basalt-ssh-setup loaded 9p)."""
    mount = subprocess.run(
        vm.ssh_argv("mkdir", "-p", guest, "&&", "mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,ro", tag,
                    guest),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    if mount.returncode != 0:
        raise VmError(f"mounting share {tag} on {guest} failed: {mount.stderr}")


def _power_off(proc: subprocess.Popen[str], vm: SshVm, wait: float) -> None:
    """``systemctl poweroff`` over SSH and wait (bounded) for QEMU to exit;
    the caller kills whatever is left."""
    if proc.poll() is not None:
        return
    try:
        # The connection may drop as the guest goes down: the rc says nothing.
        subprocess.run(vm.ssh_argv("systemctl", "poweroff"), stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30, check=False)
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def ssh_vm(
    timeout: float = 1800.0,
    boot_timeout: float = 480.0,
    smp: int = 2,
    memory_mib: int = 1536,
    image: build_image.Image | None = None,
    echo: TextIO | None = None,
    qemu: str = "qemu-system-x86_64",
    disks: int = 0,
    disk_size_mib: int = 1024,
    shares: dict[str, Path] | None = None,
) -> Iterator[SshVm]:
    """Boot the systemd VM, yield how to reach it once a key login works,
    power it off and remove everything on the way out.

    `timeout` bounds the VM's whole life (QEMU is killed after it, whatever the
    caller is doing); `boot_timeout` bounds the wait for sshd.  `qemu` is the
    emulator binary (the runner's own tests substitute a fake one).  `disks`
    sparse scratch disks of `disk_size_mib` each appear in the guest as in
    run_vm.py (virtio serial ``scratchN``: ``/dev/disk/by-id/virtio-scratchN``).
    `shares` maps guest directories to host directories, shared read-only
    over 9p and mounted there before the VM is yielded."""
    if image is None:
        image, _built = build_image.get_image(variant=build_image.SYSTEMD)
    tmp = Path(tempfile.mkdtemp(prefix="basalt-sshvm-"))
    proc: subprocess.Popen[str] | None = None
    vm: SshVm | None = None
    ready: SshVm | None = None  # set once sshd answered: only then a clean power-off
    try:
        results = tmp / "results"
        results.mkdir()
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "basalt-vm-run", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)
        shutil.copy(key.with_suffix(".pub"), results / "authorized_keys")
        scratch = [tmp / f"scratch{i}.img" for i in range(disks)]
        for path in scratch:
            with path.open("wb") as handle:
                handle.truncate(disk_size_mib << 20)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            vm = SshVm(HOST, free_port(), USER, key, tmp / "known_hosts", 0.0, [])
            tags = {f"share{i}": host for i, host in enumerate((shares or {}).values())}
            cmd = run_vm.qemu_command(qemu, image, results, run_vm.REPO, scratch, smp, memory_mib, tags)
            # restrict=on: the guest reaches neither the host nor the outside; the forward still works.
            netdev = f"user,restrict=on,hostfwd=tcp:{HOST}:{vm.port}-:22"
            cmd = run_vm.with_netdev(cmd, netdev, "52:54:00:12:34:56")
            cmd[cmd.index("-append") + 1] += "".join(f" systemd.mask={unit}" for unit in MASKED_UNITS)
            t0 = time.monotonic()
            proc, _pump = run_vm.start_qemu(cmd, tmp, timeout, vm.lines, echo, "[ssh-vm] ")
            try:
                _wait_for_sshd(proc, vm, results, t0 + boot_timeout)
                break
            except VmError:
                if attempt == PORT_ATTEMPTS or PORT_TAKEN not in vm.console():
                    raise
                run_vm.stop_qemu(proc)
        assert vm is not None and proc is not None
        vm.boot_seconds = time.monotonic() - t0
        for i, guest in enumerate(shares or {}):
            _mount_share(vm, f"share{i}", guest)
        ready = vm
        yield vm
    finally:
        if proc is not None:
            if ready is not None:
                _power_off(proc, ready, wait=90)
            run_vm.stop_qemu(proc)
        shutil.rmtree(tmp, ignore_errors=True)


class Qmp:
    """A minimal QMP client on QEMU's unix monitor socket: one command at a time, events skipped."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise VmError(f"QEMU's monitor socket {path} never answered") from None
                time.sleep(0.1)
        self.sock.settimeout(30)
        self.stream = self.sock.makefile("rw", encoding="utf-8")
        self.stream.readline()  # the greeting
        self.call("qmp_capabilities")

    def call(self, command: str, **arguments: object) -> object:
        self.stream.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.stream.flush()
        while True:
            line = self.stream.readline()
            if not line:
                raise VmError(f"QEMU's monitor closed during {command}")
            answer = json.loads(line)
            if "error" in answer:
                raise VmError(f"QMP {command}: {answer['error']}")
            if "return" in answer:
                return answer["return"]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def pair_env(vms: tuple[SshVm, SshVm]) -> dict[str, str]:
    """The pair's connection for molecule/iscsi's inventory: the first VM as ssh_vm's names, the second's
    port as ``BASALT_VM2_SSH_PORT`` (key, user and known_hosts are shared), and both private addresses."""
    return {**vms[0].env(), "BASALT_VM2_SSH_PORT": str(vms[1].port),
            "BASALT_VM_PRIVATE_ADDRESS": vms[0].private_address, "BASALT_VM2_PRIVATE_ADDRESS": vms[1].private_address}


def _private_link_up(vm: SshVm, index: int, qmp: Qmp) -> None:
    """The private NIC's own static address (matched by MAC), then its link."""
    network = (f"[Match]\nMACAddress={PRIVATE_MACS[index]}\n\n[Network]\n"
               f"Address={PRIVATE_ADDRESSES[index]}/{PRIVATE_PREFIX}\nLinkLocalAddressing=no\n")
    # reload re-matches the links; reconfigure makes sure the private one drops the image's file
    script = (f"mkdir -p {Path(PRIVATE_NETWORK_FILE).parent} && cat > {PRIVATE_NETWORK_FILE} && networkctl reload"
              f" && networkctl reconfigure $(grep -l {PRIVATE_MACS[index]} /sys/class/net/*/address | cut -d/ -f5)")
    done = subprocess.run(vm.ssh_argv("sh", "-c", shlex.quote(script)), input=network, text=True,
                          capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise VmError(f"the private link's address on {vm.host}:{vm.port} failed: {done.stderr}")
    qmp.call("set_link", name=PRIVATE_NIC, up=True)
    vm.private_address = PRIVATE_ADDRESSES[index]


def _wait_for_peer(vm: SshVm, peer: str, deadline: float) -> None:
    """Until `deadline`: `vm` opens a TCP connection to the peer's sshd over the private link."""
    probe = f"exec 3<>/dev/tcp/{peer}/22"
    while time.monotonic() < deadline:
        done = subprocess.run(vm.ssh_argv("timeout", "5", "bash", "-c", shlex.quote(probe)), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        time.sleep(1)
    raise VmError(f"{peer} never answered over the private link")


@contextmanager
def ssh_vm_pair(
    timeout: float = 1800.0,
    boot_timeout: float = 480.0,
    memory_mib: int = 1024,
    image: build_image.Image | None = None,
    echo: TextIO | None = None,
    qemu: str = "qemu-system-x86_64",
    shares: dict[str, Path] | None = None,
) -> Iterator[tuple[SshVm, SshVm]]:
    """Boot two systemd VMs (``-smp 1`` each: one host core apiece) joined by a private link, yield them once
    both answer SSH and reach each other over it (``private_address``), power both off on the way out.

    The bounds are ssh_vm's, for both; a taken forwarded port retries the whole pair.  `shares` as ssh_vm's,
    mounted read-only in both VMs."""
    if image is None:
        image, _built = build_image.get_image(variant=build_image.SYSTEMD)
    tmp = Path(tempfile.mkdtemp(prefix="basalt-sshpair-"))
    procs: list[subprocess.Popen[str]] = []
    ready: list[SshVm] = []
    qmps: list[Qmp] = []
    try:
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "basalt-vm-run", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)
        link = tmp / "link.sock"
        for attempt in range(1, PORT_ATTEMPTS + 1):
            vms: list[SshVm] = []
            t0 = time.monotonic()
            for i in range(2):
                results = tmp / f"results{i}"
                shutil.rmtree(results, ignore_errors=True)
                results.mkdir()
                shutil.copy(key.with_suffix(".pub"), results / "authorized_keys")
                vm = SshVm(HOST, free_port(), USER, key, tmp / f"known_hosts{i}", 0.0, [])
                tags = {f"share{n}": host for n, host in enumerate((shares or {}).values())}
                cmd = run_vm.qemu_command(qemu, image, results, run_vm.REPO, [], 1, memory_mib, tags)
                cmd = run_vm.with_netdev(cmd, f"user,restrict=on,hostfwd=tcp:{HOST}:{vm.port}-:22",
                                         "52:54:00:12:34:56")
                server = "on" if i == 0 else "off"
                cmd += [
                    "-netdev", f"stream,id=net1,server={server},addr.type=unix,addr.path={link}",
                    "-device", f"virtio-net-pci,netdev=net1,mac={PRIVATE_MACS[i]},id={PRIVATE_NIC}",
                    "-qmp", f"unix:{tmp}/qmp{i}.sock,server=on,wait=off",
                    "-S",  # paused until the private link is down
                ]  # fmt: skip
                masked = STORAGE_MASKED_UNITS if i == 0 else MASKED_UNITS
                cmd[cmd.index("-append") + 1] += "".join(f" systemd.mask={unit}" for unit in masked)
                if i == 1:  # the client end connects to the first VM's socket
                    while not link.exists() and procs[0].poll() is None and time.monotonic() < t0 + 60:
                        time.sleep(0.1)
                proc, _pump = run_vm.start_qemu(cmd, tmp, timeout, vm.lines, echo, f"[ssh-vm{i + 1}] ")
                procs.append(proc)
                qmp = Qmp(tmp / f"qmp{i}.sock", time.monotonic() + 60)
                qmps.append(qmp)
                qmp.call("set_link", name=PRIVATE_NIC, up=False)
                qmp.call("cont")
                vms.append(vm)
            try:
                for i, vm in enumerate(vms):
                    _wait_for_sshd(procs[i], vm, tmp / f"results{i}", t0 + boot_timeout)
                break
            except VmError:
                taken = any(PORT_TAKEN in vm.console() for vm in vms)
                if attempt == PORT_ATTEMPTS or not taken:
                    raise
                for q in qmps:
                    q.close()
                for proc in procs:
                    run_vm.stop_qemu(proc)
                qmps, procs = [], []
        boot = time.monotonic() - t0
        ready = vms
        known_hosts = tmp / "known_hosts"
        known_hosts.write_text("".join(vm.known_hosts.read_text() for vm in vms))
        for i, vm in enumerate(vms):
            vm.known_hosts = known_hosts
            _private_link_up(vm, i, qmps[i])
            for n, guest in enumerate(shares or {}):
                _mount_share(vm, f"share{n}", guest)
        _wait_for_peer(vms[0], PRIVATE_ADDRESSES[1], time.monotonic() + 120)
        for vm in vms:
            vm.boot_seconds = boot
        yield vms[0], vms[1]
    finally:
        for q in qmps:
            q.close()
        for proc, vm in zip(procs, ready):
            _power_off(proc, vm, wait=0)
        for proc in procs:
            if ready:
                try:
                    proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    pass
            run_vm.stop_qemu(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Boot the systemd VM and run COMMAND on the host while it is up.")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds the VM may live (default 1800)")
    parser.add_argument("--boot-timeout", type=float, default=480.0, help="seconds to wait for sshd (default 480)")
    parser.add_argument("--console", action="store_true", help="echo the guest's serial console to stderr")
    parser.add_argument("--disks", type=int, default=0, help="sparse scratch disks (serial scratchN)")
    parser.add_argument("--disk-size", type=int, default=1024, help="size of each scratch disk in MiB")
    parser.add_argument("--share", action="append", default=[], metavar="GUEST=HOST",
                        help="share the host directory HOST read-only, mounted on GUEST in the VM (repeatable)")
    parser.add_argument("--pair", action="store_true", help="two VMs on a private link (BASALT_VM2_SSH_PORT)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given (put it after --)")
    build_image.ensure_host_tools()
    echo = sys.stderr if args.console else None
    shares = {guest: Path(host) for guest, _, host in (share.partition("=") for share in args.share)}
    if args.pair:
        with ssh_vm_pair(timeout=args.timeout, boot_timeout=args.boot_timeout, echo=echo, shares=shares) as vms:
            print(f"ssh_vm: both sshd up after {vms[0].boot_seconds:.1f} s on {HOST}:{vms[0].port} and "
                  f":{vms[1].port}", file=sys.stderr)
            return subprocess.run(command, env=dict(os.environ, **pair_env(vms)), check=False).returncode
    with ssh_vm(timeout=args.timeout, boot_timeout=args.boot_timeout, disks=args.disks,
                disk_size_mib=args.disk_size, shares=shares, echo=echo) as vm:
        print(f"ssh_vm: sshd up after {vm.boot_seconds:.1f} s on {vm.host}:{vm.port}", file=sys.stderr)
        rc = subprocess.run(command, env=dict(os.environ, **vm.env()), check=False).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
