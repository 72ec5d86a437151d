"""Private tgtd instances and loop devices for the real iSCSI tests (shared by conftest and scripts)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from basalt_core import tgt

MiB = 1 << 20


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# tgtd accepts -C 1..32767; a block of 200 per pytest process (by pid), taken in turn and wrapping
# around (a stopped tgtd frees its port), skipping any a tgtd already answers on.
_BLOCK = 200
_BASE = 2000 + (os.getpid() % 150) * _BLOCK
_CONTROL = itertools.cycle(range(_BASE, _BASE + _BLOCK))


def next_control_port() -> int:
    for port in itertools.islice(_CONTROL, _BLOCK):
        if not tgt.control_port_in_use(port):
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
        return subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", "--mode", "target",
                               "--op", "show"], capture_output=True, text=True, check=True, timeout=10).stdout


def start_tgtd() -> Tgtd:
    control = next_control_port()
    portal = f"127.0.0.1:{free_port()}"
    proc = tgt.start_private_tgtd(control, portal)
    return Tgtd(control, portal, proc)


@dataclass
class Loop:
    device: str
    backing_file: Path
