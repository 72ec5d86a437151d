"""tgtd's management protocol read back on the test side (written from tgt 1.0.85's usr/tgtadm.h and
usr/tgtadm.c, not from basalt_core): what a request's bytes say, as the tgtadm command line that sends the
same bytes (tests/iscsi/test_tgt_socket_real.py checks that against the real tgtadm), and a stand-in for
tgtd's socket that answers each request through the scripted runner, so that every scripted tgt test pins
the exact mode, op, ids and parameters sent over the socket as it pins tgtadm's argv.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pytest

from basalt_core import tgt
from basalt_core.errors import CommandFailed
from basalt_core.tgt_socket import TgtdSocket

HEADER = struct.Struct("=ii64sIiQQIIIIII")  # mode op lld len tid sid lun cid host_no device_type ac_dir pack force
MODES = ("system", "target", "logicalunit", "portal", "lld", "session", "conn", "account")
OPS = ("new", "delete", "show", "bind", "unbind", "update")
NO_LUN = (1 << 64) - 1
#: tgtd's code for each tgtadm text the recordings hold (tgtadm_errors.tsv; the values as tgtd 1.0.85 answers)
CODES = {"can't find the target": 4, "can't find the logical unit": 5, "can't find the session": 6,
         "this target already exists": 9, "this logical unit number already exists": 10,
         "this access control rule already exists": 12, "this access control rule does not exist": 13,
         "this account already exists": 14, "can't find the account": 15, "invalid request": 17,
         "this target already has an outgoing account": 18, "this target is still active": 19}
# tgtadm's parameter names -> its options, in the order tgtadm writes them
_PIECES = (("path", "--backing-store"), ("bstype", "--bstype"), ("targetname", "--targetname"),
           ("initiator-address", "--initiator-address"), ("initiator-name", "--initiator-name"),
           ("user", "--user"), ("password", "--password"))


@dataclass(frozen=True)
class Wire:
    mode: str
    op: str
    lld: str
    tid: int
    sid: int
    lun: int
    cid: int
    host_no: int
    device_type: int
    outgoing: bool
    pack: int
    force: bool
    params: str  # without its NUL


def decode(data: bytes) -> Wire:
    """One request's bytes as tgtd reads them (the length field must count every byte)."""
    mode, op, lld, length, tid, sid, lun, cid, host_no, device_type, ac_dir, pack, force = HEADER.unpack_from(data)
    assert length == len(data), f"len says {length}, {len(data)} bytes sent"
    body = data[HEADER.size:]
    assert body == b"" or (body.endswith(b"\0") and b"\0" not in body[:-1]), body
    assert ac_dir in (0, 1) and force in (0, 1)
    return Wire(MODES[mode], OPS[op], lld.rstrip(b"\0").decode(), tid, sid, lun, cid, host_no, device_type,
                bool(ac_dir), pack, bool(force), body[:-1].decode())


def as_argv(wire: Wire, control_port: Optional[int]) -> List[str]:
    """The tgtadm command line (the option order basalt uses) that sends *wire*."""
    argv = ["tgtadm", *(["-C", str(control_port)] if control_port is not None else []), "--lld", wire.lld,
            "--mode", wire.mode, "--op", wire.op]
    assert (wire.host_no, wire.device_type, wire.pack) == (0, 0, 0)
    argv += ["--force"] if wire.force else []
    argv += ["--tid", str(wire.tid)] if wire.tid != -1 else []
    argv += ["--sid", str(wire.sid), "--cid", str(wire.cid)] if wire.mode == "conn" else []
    assert wire.mode == "conn" or (wire.sid, wire.cid) == (0, 0)
    argv += ["--lun", str(wire.lun)] if wire.lun != NO_LUN else []
    text, ops = wire.params, None
    if "targetOps " in text:
        text, ops = text.split("targetOps ", 1)
        assert ops.endswith(","), ops
        text = text.rstrip(",")
    given = dict(piece.split("=", 1) for piece in text.split(",")) if text else {}
    assert list(given) == [piece[0] for piece in _PIECES if piece[0] in given], f"not tgtadm's order: {wire.params!r}"
    for key, option in _PIECES[:2]:
        argv += [option, given[key]] if key in given else []
    argv += ["--params", ops[:-1]] if ops is not None else []
    for key, option in _PIECES[2:]:
        argv += [option, given[key]] if key in given else []
    return argv + (["--outgoing"] if wire.outgoing else [])


class ScriptedTgtd:
    """tgtd's socket for the scripted tests: each request, read back as its tgtadm command line, goes to
    ``basalt_core.tgt.run`` (the scripted runner, or a test's wrapper of it); the scripted answer comes back
    as tgtd's (rc 22 with tgtadm's text: that error's code)."""

    def __init__(self, control_port: Optional[int]) -> None:
        self.control_port = control_port
        self.requests: List[Wire] = []

    def exchange(self, data: bytes) -> Tuple[int, str]:
        wire = decode(data)
        self.requests.append(wire)
        argv = as_argv(wire, self.control_port)
        secrets = [argv[argv.index("--password") + 1]] if "--password" in argv else []
        try:
            result: Any = tgt.run(argv, what=None, secrets=secrets)
        except CommandFailed as exc:
            text = exc.stderr.removeprefix("tgtadm: ")
            assert exc.rc == 22 and text in CODES, f"tgtd never answers {exc.stderr!r} (a tgtadm-only error)"
            return CODES[text], ""
        return 0, result.stdout


@pytest.fixture(params=["tgtadm", "socket"], autouse=True)
def tgt_transport(request: pytest.FixtureRequest, script: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test of the module twice: requests through tgtadm (the ``script`` fixture's default), and over
    tgtd's socket, answered by :class:`ScriptedTgtd`."""
    if request.param == "socket":
        def client(control_port: Optional[int], timeout: float) -> TgtdSocket:
            sock = TgtdSocket(control_port, timeout)
            sock._exchange = ScriptedTgtd(control_port).exchange  # type: ignore[method-assign]
            return sock
        monkeypatch.setattr(tgt, "socket_client", client)
    return str(request.param)
