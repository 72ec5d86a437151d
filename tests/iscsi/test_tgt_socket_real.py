"""basalt_core.tgt_socket against the real tgt 1.0.85: every request the tgt backend sends is byte for byte
what tgtadm sends for the same command line, tgtd answers it as it answers tgtadm (the same listing, the
same error text), and the backend talks to tgtd's socket here but runs tgtadm when the layout is unknown.

tgtadm's bytes are caught by pointing it (``TGT_IPC_SOCKET``, which tgtadm reads) at a socket of ours.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, List

import pytest
from tgtd_crashpoint import TgtdSocketCrashPoint, as_argv, decode
from tgtd_testlib import Loop, Tgtd, tgtadm

from basalt_core import tgt, tgt_socket
from basalt_core.iscsi_target import Chap
from basalt_core.tgt_socket import TgtdRefused, TgtdSocket
from basalt_core.tgt_socket import TgtRequest as Req

TARGET = "iqn.2026-11.io.basalt:wire-1"
NODE = "iqn.2026-11.io.example:node-a"
# every kind of request basalt_core.tgt sends (tgt.py), with values of each field
REQUESTS = [
    Req("system", "show"),
    Req("target", "show"),
    Req("target", "new", tid=3, targetname=TARGET),
    Req("target", "delete", force=True, tid=3),
    Req("target", "bind", tid=3, initiator_address="255.255.255.255/32"),
    Req("target", "unbind", tid=3, initiator_address="ALL"),
    Req("target", "bind", tid=3, initiator_name=NODE),
    Req("target", "unbind", tid=3, initiator_name=NODE),
    Req("logicalunit", "new", tid=3, lun=1, backing_store="/dev/loop7", bstype="rdwr"),
    Req("logicalunit", "update", tid=3, lun=1, params="scsi_sn=0123abcd,readonly=1"),
    Req("account", "new", user="node-a", password="Secret-Of-A-1234"),
    Req("account", "delete", user="node-a"),
    Req("account", "bind", tid=3, user="node-a"),
    Req("account", "bind", tid=3, user="target-1", outgoing=True),
    Req("account", "unbind", tid=3, user="node-a"),
    Req("account", "unbind", tid=3, user="target-1", outgoing=True),
    Req("conn", "delete", tid=3, sid=281474980708864, cid=0),
]


def _caught(tmp_path: Path, request: Req) -> bytes:
    """The bytes tgtadm sends for *request*'s command line (to a socket of ours that answers success)."""
    base, port = str(tmp_path / "catch"), 9
    got: List[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(f"{base}.{port}")
        listener.listen(1)
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                data = conn.recv(120)
                while len(data) < 120 or len(data) < int.from_bytes(data[72:76], "little"):
                    data += conn.recv(4096)
                got.append(data)
                conn.sendall((0).to_bytes(4, "little") + (8).to_bytes(4, "little"))
        thread = threading.Thread(target=serve)
        thread.start()
        result = subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", *request.argv()], capture_output=True,
                                text=True, timeout=10, env={**os.environ, "TGT_IPC_SOCKET": base}, check=False)
        thread.join(10)
    os.unlink(f"{base}.{port}")
    assert result.returncode == 0, result.stderr
    return got[0]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: " ".join(r.argv(redacted=True)[1::2]))
def test_every_request_is_what_tgtadm_sends(tmp_path: Path, request_: Req) -> None:
    sent = _caught(tmp_path, request_)
    assert request_.encode() == sent
    # the test side's reading of the protocol (tgt_wire: the scripted tests' ScriptedTgtd) agrees with tgtadm
    assert as_argv(decode(sent), 9) == ["tgtadm", "-C", "9", "--lld", "iscsi", *request_.argv()]


def test_tgtd_answers_the_socket_as_it_answers_tgtadm(tgtd: Tgtd, loop: Loop) -> None:
    """The same changes over the socket give the listing tgtadm gives; each refusal names tgtd's code and
    the text tgtadm prints for it (rc 22)."""
    client = TgtdSocket(tgtd.control_port, 10)
    chap = Chap("node-a", "Secret-Of-A-1234", "target-1", "Secret-Of-T-5678")
    for request in (Req("target", "new", tid=1, targetname=TARGET),
                    Req("target", "bind", tid=1, initiator_address="255.255.255.255/32"),
                    Req("logicalunit", "new", tid=1, lun=1, backing_store=loop.device, bstype="rdwr"),
                    Req("logicalunit", "update", tid=1, lun=1, params="scsi_sn=0123abcd,readonly=1"),
                    Req("account", "new", user=chap.user, password=chap.password),
                    Req("account", "new", user="target-1", password="Secret-Of-T-5678"),
                    Req("account", "bind", tid=1, user=chap.user),
                    Req("account", "bind", tid=1, user="target-1", outgoing=True),
                    Req("target", "bind", tid=1, initiator_name=NODE)):
        assert client.request(request) == ""
    listing = client.request(Req("target", "show"))
    assert listing == tgtd.show() and "SCSI SN: 0123abcd" in listing and "Readonly: Yes" in listing
    assert f"        {NODE}\n" in listing and "        target-1 (outgoing)\n" in listing
    refused = [Req("target", "new", tid=1, targetname="iqn.2026-11.io.basalt:other"),
               Req("target", "delete", tid=99),
               Req("logicalunit", "new", tid=1, lun=1, backing_store=loop.device, bstype="rdwr"),
               Req("logicalunit", "new", tid=1, lun=2, backing_store="/nonexistent", bstype="rdwr"),
               Req("account", "new", user=chap.user, password="Another-Secret-99"),
               Req("account", "bind", tid=1, user="nobody"),
               Req("account", "bind", tid=1, user=chap.user, outgoing=True),
               Req("target", "bind", tid=1, initiator_name=NODE),
               Req("target", "unbind", tid=1, initiator_name="iqn.2026-11.io.example:node-b"),
               Req("conn", "delete", tid=1, sid=99, cid=0)]
    for request in refused:
        with pytest.raises(TgtdRefused) as failure:
            client.request(request, "the test's request")
        error = failure.value
        by_tgtadm = tgtadm(tgtd.control_port, *request.argv())
        assert by_tgtadm.returncode == 22 and by_tgtadm.stderr == f"tgtadm: {error.stderr}\n"
        assert error.rc == error.code > 0 and error.stderr == tgt_socket.ERRORS[error.code]
        assert str(error).startswith(f"the test's request: {client.path} failed (rc={error.code}): ")
        assert "Another-Secret-99" not in str(error) + " ".join(error.argv)
    assert client.request(Req("target", "show")) == listing  # refusals changed nothing
    assert client.request(Req("target", "delete", force=True, tid=1)) == ""
    assert tgtd.show() == ""


def test_the_backend_talks_to_tgtds_socket_and_runs_tgtadm_for_an_unknown_layout(
        tgtd: Tgtd, loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: List[List[str]] = []
    real_run = tgt.run

    def counting(argv: List[str], **kwargs: Any) -> Any:
        ran.append(list(argv))
        return real_run(argv, **kwargs)
    monkeypatch.setattr(tgt, "run", counting)
    monkeypatch.setattr(tgt_socket, "run", counting)
    spy = TgtdSocketCrashPoint(str(tmp_path), tgtd.control_port)  # a relay only: never armed
    monkeypatch.setenv("TGT_IPC_SOCKET", spy.base)
    try:
        backend = tgtd.backend(tmp_path / "socket")
        assert backend.ensure_export(TARGET, loop.device, "0123abcd", False) is True
        assert ran == [["tgtadm", "--version"]]  # the one process: which layout tgtd speaks
        assert spy.seen[0][-4:] == ["--mode", "system", "--op", "show"] and len(spy.seen) == 1 + 1 + 4
        assert backend.ensure_export(TARGET, loop.device, "0123abcd", False) is False
        assert len(ran) == 1 and len(spy.seen) == 7  # decided once; a new transaction lists tgtd again
        # a release whose layout is not checked: tgtadm, as before
        monkeypatch.setattr(tgt_socket, "CHECKED_VERSIONS", ("0.9.0",))
        ran.clear()
        other = tgt.TgtBackend(control_port=tgtd.control_port, conf_path=str(tmp_path / "tgtadm" / "basalt.conf"),
                               record_path=str(tmp_path / "tgtadm" / "grants.json"))
        assert [e.target_iqn for e in other.exports()] == []  # not ours: another config file
        assert other.remove_export(TARGET) is True
        assert ran[0] == ["tgtadm", "--version"]
        assert [argv[:9] for argv in ran[1:]] == [
            ["tgtadm", "-C", str(tgtd.control_port), "--lld", "iscsi", "--mode", "target", "--op", op]
            for op in ("show", "show", "delete")]
        assert spy.seen[7:] == ran[1:]  # tgtadm reads TGT_IPC_SOCKET too: its requests, read back, are its argv
    finally:
        monkeypatch.delenv("TGT_IPC_SOCKET")
        spy.close()
    assert tgtd.show() == ""
