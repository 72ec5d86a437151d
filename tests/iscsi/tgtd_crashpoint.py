"""A crash point on tgtd's management socket: what tests/conformance/crashpoints.py's ``tgtadm`` wrapper does
for an agent that runs tgtadm, for an agent that talks to tgtd's socket instead.

The agent is started with ``TGT_IPC_SOCKET`` (the socket path before ``.N``, as tgtadm reads it) naming a
proxy this class serves from a thread of the test process; the proxy hands every request to the real
``/var/run/tgtd/socket.N`` and its answer back.  ``arm(arg)`` makes the next request whose tgtadm command
line (tgt_wire.as_argv) holds *arg* SIGKILL the agent (the socket's peer) after tgtd answered it: the
change is made, the agent never learns it.  ``fired()`` says what happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils"))

from tgt_wire import HEADER, as_argv, decode
from tgtd_testlib import SOCKET_DIR

_RESPONSE = struct.Struct("=II")
_PEER = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


class TgtdSocketCrashPoint:
    def __init__(self, directory: str, control_port: int) -> None:
        self.base = os.path.join(directory, "tgtd-proxy")
        self.control_port = control_port
        self.real = os.path.join(SOCKET_DIR, f"socket.{control_port}")
        self.armed: Optional[str] = None
        self.outcome: Optional[Dict[str, object]] = None
        self.seen: List[List[str]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(f"{self.base}.{control_port}")
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def env(self) -> Dict[str, str]:
        return {"TGT_IPC_SOCKET": self.base}

    def arm(self, arg: Optional[str]) -> None:
        """Kill the agent after the next request that holds *arg* (None: disarm)."""
        self.outcome, self.armed = None, arg

    def fired(self, timeout: float = 30.0) -> Dict[str, object]:
        deadline = time.monotonic() + timeout
        while self.outcome is None:
            assert time.monotonic() < deadline, "the tgtd socket crash point never fired"
            time.sleep(0.02)
        return self.outcome

    def close(self) -> None:
        """Stop serving: the accept wakes up (shutdown) and the thread ends before the listener's descriptor
        is closed (else the blocked accept could wake on whatever socket reuses that number)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._listener.close()
        os.unlink(f"{self.base}.{self.control_port}")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with conn:
                try:
                    self._relay(conn)
                except (OSError, ConnectionError):  # the agent sees a closed connection
                    pass

    def _relay(self, conn: socket.socket) -> None:
        head = _receive(conn, HEADER.size)
        request = head + _receive(conn, HEADER.unpack(head)[3] - HEADER.size)
        argv = as_argv(decode(request), self.control_port)
        self.seen.append(argv)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as tgtd:
            tgtd.connect(self.real)
            tgtd.sendall(request)
            answer = _receive(tgtd, _RESPONSE.size)
            answer += _receive(tgtd, _RESPONSE.unpack(answer)[1] - _RESPONSE.size)
        if self.armed is not None and self.armed in argv:
            self.armed = None
            pid = _PEER.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER.size))[0]
            os.kill(pid, signal.SIGKILL)
            self.outcome = {"outcome": "after", "argv": argv, "err": _RESPONSE.unpack(answer[:_RESPONSE.size])[0]}
            return
        conn.sendall(answer)
