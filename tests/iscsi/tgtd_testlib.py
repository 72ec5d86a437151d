"""Private tgtd instances and loop devices for the real iSCSI tests, the bench and the recording script.

A test daemon is not part of the collection: these helpers run tgtd and tgtadm
directly (argv lists, timeouts), never through the core's runner.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from basalt_core import tgt
from basalt_core.tgt_show import parse_accounts, parse_portals, parse_targets

MiB = 1 << 20
MAX_CONTROL_PORT = 32767  # tgtd: "-C argument value '32768' out of range"
SOCKET_DIR = "/var/run/tgtd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tgtadm(control_port: int, *args: str, timeout: float = 10) -> "subprocess.CompletedProcess[str]":
    """``tgtadm -C PORT --lld iscsi ARGS`` (not checked: the caller looks at rc)."""
    return subprocess.run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def control_port_in_use(control_port: int) -> bool:
    """Whether a tgtd answers on control port *control_port*."""
    result = subprocess.run(["tgtadm", "-C", str(control_port), "--mode", "system", "--op", "show"],
                            capture_output=True, timeout=5, check=False)
    return result.returncode == 0


def start_private_tgtd(control_port: int, portal: str, *, wait: float = 5.0) -> "subprocess.Popen[bytes]":
    """Start ``tgtd -f -C control_port --iscsi portal=PORTAL`` in its own session; wait until it answers.

    Stop it with :func:`stop_private_tgtd` (tgtd ignores SIGTERM).  *control_port* must be
    1..32767 and not in use (see :func:`control_port_in_use`).
    """
    if not 0 < control_port <= MAX_CONTROL_PORT:
        raise ValueError(f"tgtd control port {control_port} is not in 1..{MAX_CONTROL_PORT}")
    # stderr to a file, never a pipe: tgtd -f logs there for its whole life and would block on a full pipe.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={portal}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    log.close()  # the child keeps its copy
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if control_port_in_use(control_port) and parse_portals(tgtadm(control_port, "--mode", "portal",
                                                                      "--op", "show", timeout=5).stdout):
            return proc
        if proc.poll() is not None:
            _remove_socket(control_port)
            raise RuntimeError(f"tgtd -C {control_port} exited at start (rc {proc.returncode}): control port in "
                               "use or out of range?")
        time.sleep(0.05)
    stop_private_tgtd(control_port, proc)
    raise RuntimeError(f"tgtd -C {control_port} did not answer within {wait:g}s")


def _remove_socket(control_port: int) -> None:
    """tgtd leaves /var/run/tgtd/socket.N and socket.N.lock behind; remove ours once it has exited."""
    for name in (f"socket.{control_port}", f"socket.{control_port}.lock"):
        try:
            os.unlink(os.path.join(SOCKET_DIR, name))
        except FileNotFoundError:
            pass


def stop_private_tgtd(control_port: int, proc: "Optional[subprocess.Popen[bytes]]" = None) -> None:
    """Delete every target (``--force``) then the system (``--mode system --op delete``), as tgt.service does."""
    try:
        for target in parse_targets(tgtadm(control_port, "--mode", "target", "--op", "show").stdout):
            tgtadm(control_port, "--mode", "target", "--op", "delete", "--force", "--tid", str(target.tid))
        subprocess.run(["tgtadm", "-C", str(control_port), "--mode", "system", "--op", "delete"],
                       capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        _remove_socket(control_port)


def accounts(control_port: int) -> List[str]:
    """The CHAP accounts tgtd has (listed now)."""
    return parse_accounts(tgtadm(control_port, "--mode", "account", "--op", "show").stdout)


def load_config(path: str, control_port: int, *, force: bool = False) -> None:
    """Apply a config file to a running tgtd with ``tgt-admin -e`` (what tgt.service does at boot).

    *force* (``-f``) skips tgt-admin's "device in use" check (it runs ``lsof`` on each backing
    store and skips those another process, e.g. another tgtd, holds open).  Not verbose:
    tgt-admin -v prints the tgtadm commands, passwords included.
    """
    argv = ["tgt-admin", "-C", str(control_port), "-c", path, "-e", *(["-f"] if force else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("# Skipping")]
    if result.returncode != 0 or skipped:
        raise RuntimeError(f"tgt-admin -e {path}: rc {result.returncode} {result.stderr.strip()} {'; '.join(skipped)}")


# tgtd accepts -C 1..32767; a block of 200 per pytest process (by pid), taken in turn and wrapping
# around (a stopped tgtd frees its port), skipping any a tgtd already answers on.
_BLOCK = 200
_BASE = 2000 + (os.getpid() % 150) * _BLOCK
_CONTROL = itertools.cycle(range(_BASE, _BASE + _BLOCK))


def next_control_port() -> int:
    for port in itertools.islice(_CONTROL, _BLOCK):
        if not control_port_in_use(port):
            return port
    raise RuntimeError(f"no free tgtd control port in {_BASE}..{_BASE + _BLOCK - 1}")


@dataclass
class Tgtd:
    control_port: int
    portal: str
    proc: "subprocess.Popen[bytes]"

    def backend(self, tmp: Path) -> tgt.TgtBackend:
        return tgt.TgtBackend(control_port=self.control_port, conf_path=str(tmp / "basalt.conf"),
                              record_path=str(tmp / "state" / "grants.json"))

    def show(self) -> str:
        result = tgtadm(self.control_port, "--mode", "target", "--op", "show")
        assert result.returncode == 0, result.stderr
        return result.stdout

    def stop(self) -> None:
        stop_private_tgtd(self.control_port, self.proc)

    def restart_empty(self) -> None:
        """SIGKILL (a crash), then a fresh, empty tgtd on the same control port and portal."""
        self.proc.kill()
        self.proc.wait(10)
        self.proc = start_private_tgtd(self.control_port, self.portal, wait=30.0)


def start_tgtd() -> Tgtd:
    control = next_control_port()
    portal = f"127.0.0.1:{free_port()}"
    proc = start_private_tgtd(control, portal)
    return Tgtd(control, portal, proc)


@dataclass
class Loop:
    device: str
    backing_file: Path
