#!/usr/bin/env python3
"""Run a command inside the Basalt test VM (a real Debian kernel under QEMU).

    python3 tests/vm/run_vm.py [--timeout S] [--disks N] -- COMMAND...

Boots the cached image (see build_image.py) with ``-accel tcg`` and no network
(``-nic none``); the root disk is used through a throw-away overlay
(``snapshot=on``, kept in a private temporary directory) so the cached image is
never written.  The project tree is shared read-only over 9p at ``/basalt``
(the command's working directory); a second, writable 9p share at
``/results`` carries the request in and the verdict out.  N sparse raw scratch
disks (``--disk-size`` each) appear as virtio disks with serials
``scratch0..N-1``.

The guest's exit status is read from ``/results/rc`` (QEMU itself exits 0
whatever happens inside): a missing rc is a failure.  The guest output
(serial console) is printed as it comes.  Exit status: the guest command's rc;
124 when the run timed out (QEMU is killed); 125 when QEMU ended without a
verdict.  A failed run whose guest kernel oopsed is booted once more (see
once_more_after_a_kernel_oops).  Nothing outlives the run: QEMU runs in its own process group which
is killed on the way out, and the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TextIO, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_image

REPO = Path(__file__).resolve().parents[2]
RC_TIMEOUT = 124
RC_NO_VERDICT = 125
# QEMU processes still running: killed at interpreter exit whatever happens.
_LIVE: set[subprocess.Popen[str]] = set()
# Result files copied back to the caller (small text files only).
MAX_RESULT_BYTES = 1 << 20
# What the guest kernel prints, after its timestamp, when it oopses or panics.
KERNEL_OOPS = re.compile(
    r"^\[\s*\d+\.\d+\] (BUG: .*|Oops: .*|general protection fault.*|kernel BUG at .*|Kernel panic - not syncing.*)$",
    re.M,
)


@dataclass
class VmResult:
    """Outcome of one VM run."""

    rc: int
    verdict: bool  # whether the guest wrote /results/rc
    timed_out: bool
    seconds: float
    console: str
    files: dict[str, str] = field(default_factory=dict)
    message: str = ""
    # The oops of a failed first boot that this result's fresh boot replaced ("" if none).
    replaced_oops: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict and self.rc == 0 and not self.timed_out


class GuestKernelOops(UserWarning):
    """A failed run whose guest kernel oopsed was run again in a fresh boot."""


def kernel_oops(console: str) -> str:
    """The first line of the guest kernel's oops or panic in `console`, "" if it printed none."""
    found = KERNEL_OOPS.search(console)
    return found.group(1).strip() if found else ""


P = ParamSpec("P")
R = TypeVar("R", "VmResult", "tuple[VmResult, VmResult]")


def once_more_after_a_kernel_oops(boot: Callable[P, R]) -> Callable[P, R]:
    """`boot`, run again in a fresh boot when it failed and a guest kernel oopsed; a warning says so
    (pytest lists warnings in the summary of a green run too).

    The guest kernel is Debian's, not Basalt's: a rare race in it (seen once in CI: a NULL pointer in
    iscsi_tcp while iscsid tore down a refused login) must not fail a run whose code is right. There is
    one retry: a failure that happens again is reported, oops or not."""

    @functools.wraps(boot)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        first = boot(*args, **kwargs)
        runs = first if isinstance(first, tuple) else (first,)
        oops = "" if all(r.passed for r in runs) else next(filter(None, (kernel_oops(r.console) for r in runs)), "")
        if not oops:
            return first
        warnings.warn(
            GuestKernelOops(f"a guest kernel oopsed in a failed run ({oops}); running it again in a fresh boot"),
            stacklevel=2,
        )
        again = boot(*args, **kwargs)
        for result in again if isinstance(again, tuple) else (again,):
            result.replaced_oops = oops
            result.message += f" (in a fresh boot: the first one's kernel oopsed: {oops})"
        return again

    return run


def qemu_command(
    qemu: str,
    image: build_image.Image,
    results: Path,
    share: Path,
    disks: list[Path],
    smp: int,
    memory_mib: int,
    extra_shares: dict[str, Path] | None = None,
) -> list[str]:
    cmd = [
        qemu,
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-smp",
        str(smp),
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-nic",
        "none",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        "console=ttyS0 panic=-1 loglevel=4 rdinit=/init",
        "-drive",
        f"file={image.root},format=raw,if=none,id=root,snapshot=on,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=root,serial=basalt-root",
        "-virtfs",
        f"local,path={share},mount_tag=basalt,security_model=none,readonly=on",
        "-virtfs",
        f"local,path={results},mount_tag=results,security_model=none",
    ]
    for tag, path in (extra_shares or {}).items():  # read-only; the guest mounts them by tag
        cmd += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,readonly=on"]
    for i, disk in enumerate(disks):
        cmd += [
            "-drive",
            f"file={disk},format=raw,if=none,id=scratch{i},cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=scratch{i},serial=scratch{i}",
        ]
    return cmd


def with_netdev(cmd: list[str], netdev: str, mac: str) -> list[str]:
    """`cmd` with ``-nic none`` replaced by one virtio NIC on the ``-netdev``
    backend `netdev` (given without ``id=``)."""
    i = cmd.index("-nic")
    return [*cmd[:i], "-netdev", f"{netdev},id=net0", "-device", f"virtio-net-pci,netdev=net0,mac={mac}", *cmd[i + 2 :]]


def start_qemu(
    cmd: list[str], tmp: Path, timeout: float, lines: list[str], echo: TextIO | None, label: str = ""
) -> tuple[subprocess.Popen[str], threading.Thread]:
    """Start QEMU in its own session, bounded by coreutils `timeout` (so it
    dies even if this Python process is killed before it can clean up:
    SIGKILL, a CI job timeout, ...) and registered for the atexit kill; the
    console goes to `lines` (and `echo`).  snapshot=on's overlay goes to `tmp`."""
    proc = subprocess.Popen(
        ["timeout", "-k", "10", str(int(timeout) + 30), *cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=dict(os.environ, TMPDIR=str(tmp)),
        start_new_session=True,
    )
    _LIVE.add(proc)
    assert proc.stdout is not None
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines, echo, label), daemon=True)
    pump.start()
    return proc, pump


def stop_qemu(proc: subprocess.Popen[str]) -> None:
    """Kill QEMU's process group if it still runs; forget it."""
    if proc.poll() is None:
        _kill_group(proc)
    _LIVE.discard(proc)


def _pump(stream: TextIO, sink: list[str], echo: TextIO | None, label: str) -> None:
    for line in stream:
        sink.append(line)
        if echo is not None:
            echo.write(label + line)
            echo.flush()


def _boot(
    command: list[str],
    timeout: float = 600.0,
    disks: int = 0,
    disk_size_mib: int = 1024,
    smp: int = 2,
    memory_mib: int = 1536,
    share: Path = REPO,
    echo: TextIO | None = sys.stdout,
    image: build_image.Image | None = None,
    qemu: str = "qemu-system-x86_64",
    netdev: str | None = None,
    mac: str = "52:54:00:12:34:56",
    label: str = "",
    extra_shares: dict[str, Path] | None = None,
) -> VmResult:
    """Boot the VM, run `command` (argv) in /basalt, return the verdict (run_vm: the same, once more after
    a failure with a guest kernel oops).

    `image` defaults to the cached image (built when needed); `qemu` is the
    emulator binary (the runner's own tests substitute a fake one).
    `netdev` replaces ``-nic none`` by one virtio NIC on that ``-netdev``
    backend (without ``id=``), e.g. a unix stream socket shared with a second
    VM; `label` prefixes the echoed console lines.  `extra_shares` maps 9p
    mount tags to host directories shared read-only (the guest command mounts
    them itself, e.g. ``mount -t 9p -o trans=virtio,ro pydeps /opt/...``)."""
    if image is None:
        image, _built = build_image.get_image()
    t0 = time.monotonic()
    # The guest's own timeout fires first so that it can still write rc=124;
    # the host kills QEMU a little later if even that does not happen.
    # Boot takes ~15-20 s under TCG, hence the margin.
    guest_timeout = int(timeout - 45) if timeout > 90 else max(5, int(timeout / 2))
    tmp = Path(tempfile.mkdtemp(prefix="basalt-vm-"))
    proc: subprocess.Popen[str] | None = None
    try:
        results = tmp / "results"
        results.mkdir()
        (results / "request.sh").write_text("#!/bin/sh\nexec " + shlex.join(command) + "\n")
        (results / "request.env").write_text(f"timeout={guest_timeout}\n")
        scratch = []
        for i in range(disks):
            p = tmp / f"scratch{i}.img"
            with p.open("wb") as f:
                f.truncate(disk_size_mib << 20)
            scratch.append(p)
        cmd = qemu_command(qemu, image, results, share.resolve(), scratch, smp, memory_mib, extra_shares)
        if netdev is not None:
            cmd = with_netdev(cmd, netdev, mac)
        lines: list[str] = []
        proc, pump = start_qemu(cmd, tmp, timeout, lines, echo, label)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        pump.join(timeout=10)
        seconds = time.monotonic() - t0
        files = _collect(results)
        rc_text = files.get("rc", "").strip()
        console = "".join(lines)
        if timed_out:
            return VmResult(
                RC_TIMEOUT,
                bool(rc_text),
                True,
                seconds,
                console,
                files,
                f"run_vm: timed out after {timeout:.0f} s; QEMU killed",
            )
        if not rc_text.lstrip("-").isdigit():
            return VmResult(
                RC_NO_VERDICT,
                False,
                False,
                seconds,
                console,
                files,
                f"run_vm: QEMU exited ({proc.returncode}) without a verdict (no /results/rc): counted as failure",
            )
        rc = int(rc_text)
        what = f"hit the guest-side timeout ({guest_timeout} s)" if rc in (RC_TIMEOUT, 137) else f"exited {rc}"
        return VmResult(
            rc,
            True,
            False,
            seconds,
            console,
            files,
            f"run_vm: guest command {what} ({seconds:.1f} s with boot and power-off)",
        )
    finally:
        if proc is not None:
            stop_qemu(proc)
        shutil.rmtree(tmp, ignore_errors=True)


run_vm = once_more_after_a_kernel_oops(_boot)


def _boot_pair(
    server_command: list[str],
    client_command: list[str],
    timeout: float = 600.0,
    server_disks: int = 1,
    client_disks: int = 0,
    echo: TextIO | None = sys.stdout,
    image: build_image.Image | None = None,
    extra_shares: dict[str, Path] | None = None,
    qemu: str = "qemu-system-x86_64",
) -> tuple[VmResult, VmResult]:
    """Two VMs on a private network of their own: a QEMU stream netdev over a
    unix socket in a temporary directory (no host port, no host interface).

    The server VM (MAC ...:01) listens, the client VM (MAC ...:02) connects
    once the socket exists.  Each VM has -smp 1.  `extra_shares` go to both
    VMs (see run_vm; so does `qemu`).  Returns both results; run_pair boots both again after a failure with a guest
    kernel oops in either."""
    if image is None:
        image, _built = build_image.get_image()
    net_dir = Path(tempfile.mkdtemp(prefix="basalt-net-"))
    sock = net_dir / "net.sock"
    results: dict[str, VmResult] = {}

    def server() -> None:
        results["server"] = _boot(
            server_command,
            timeout=timeout,
            disks=server_disks,
            smp=1,
            memory_mib=1024,
            echo=echo,
            image=image,
            qemu=qemu,
            label="[storage] ",
            extra_shares=extra_shares,
            netdev=f"stream,server=on,addr.type=unix,addr.path={sock}",
            mac="52:54:00:00:77:01",
        )

    thread = threading.Thread(target=server, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 60
        while not sock.exists() and thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if sock.exists():
            results["client"] = _boot(
                client_command,
                timeout=timeout,
                disks=client_disks,
                smp=1,
                memory_mib=1024,
                echo=echo,
                image=image,
                qemu=qemu,
                label="[node]    ",
                extra_shares=extra_shares,
                netdev=f"stream,server=off,addr.type=unix,addr.path={sock}",
                mac="52:54:00:00:77:02",
            )
        else:
            results["client"] = VmResult(
                RC_NO_VERDICT, False, False, 0.0, "", {}, "run_vm: the server VM never opened its network socket"
            )
        # run_vm bounds the server by `timeout`; this join cannot hang long
        thread.join(timeout + 60)
        server_result = results.get("server") or VmResult(
            RC_NO_VERDICT, False, False, 0.0, "", {}, "run_vm: the server VM did not finish"
        )
        return server_result, results["client"]
    finally:
        shutil.rmtree(net_dir, ignore_errors=True)


run_pair = once_more_after_a_kernel_oops(_boot_pair)


def end_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, so that the guests are stopped on the way out.

    scripts/test.sh stops the background VM streams with SIGTERM to their process group. By default that
    killed Python at once, and the guests, in sessions of their own, ran on until their `timeout` (one was
    found 28 min after a failed CI run). KeyboardInterrupt runs pytest's teardown and the atexit kill."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@atexit.register
def _kill_live() -> None:
    for proc in list(_LIVE):
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _collect(results: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for p in sorted(results.rglob("*")):
        if p.is_file() and p.stat().st_size <= MAX_RESULT_BYTES:
            files[str(p.relative_to(results))] = p.read_text(errors="replace")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run COMMAND inside the Basalt test VM (project tree at /basalt).")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for boot + command + power-off (default 600)"
    )
    parser.add_argument("--disks", type=int, default=0, help="number of sparse scratch disks (serial scratchN)")
    parser.add_argument("--disk-size", type=int, default=1024, help="size of each scratch disk in MiB (default 1024)")
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--memory", type=int, default=1536, help="MiB")
    parser.add_argument("--results-dir", type=Path, help="copy the guest's result files here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    end_on_sigterm()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given (put it after --)")
    build_image.ensure_host_tools()  # apt-get installs QEMU etc. if missing
    result = run_vm(
        command,
        timeout=args.timeout,
        disks=args.disks,
        disk_size_mib=args.disk_size,
        smp=args.smp,
        memory_mib=args.memory,
    )
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        for name, text in result.files.items():
            dest = args.results_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    print(result.message, file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
