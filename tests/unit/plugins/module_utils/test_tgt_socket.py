"""basalt_core.tgt_socket without a tgtd: error answers, timeouts, broken answers, secrets, the choice of
socket or tgtadm, against a unix socket of the test's own that answers as scripted (the real tgtd and
tgtadm: tests/iscsi/test_tgt_socket_real.py)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
from tgt_testlib import RW, SHOW, SHOW_T, C, ok

from basalt_core import tgt, tgt_socket
from basalt_core.errors import CommandFailed, InvalidRequest
from basalt_core.tgt_socket import TgtdRefused, TgtdSocket, client_for
from basalt_core.tgt_socket import TgtRequest as Req

PORT = 7
SECRET = "Secret-Of-A-1234"


class FakeTgtd:
    """A unix socket at ``BASE.7`` answering each connection with the next scripted bytes (None: never)."""

    def __init__(self, base: str, answers: List[Optional[bytes]]) -> None:
        self.answers: List[Optional[bytes]] = list(answers)
        self.requests: List[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(f"{base}.{PORT}")
        self.listener.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        silent = []
        while self.answers:
            conn = self.listener.accept()[0]
            self.requests.append(conn.recv(65536))
            answer = self.answers.pop(0)
            if answer is None:
                silent.append(conn)  # open, never answered
                continue
            conn.sendall(answer)
            conn.close()


def answer(code: int, text: str = "") -> bytes:
    body = (text + "\0").encode() if text else b""
    return struct.pack("=II", code, 8 + len(body)) + body


@pytest.fixture
def base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    path = str(tmp_path / "tgtd")
    monkeypatch.setenv("TGT_IPC_SOCKET", path)
    yield path


def test_error_answers_carry_tgtds_code_and_tgtadms_text(base: str) -> None:
    FakeTgtd(base, [answer(9), answer(15), answer(99), answer(0, "Target 1: x\n")])
    client = TgtdSocket(PORT, 5)
    assert client.path == f"{base}.{PORT}"
    request = Req("target", "new", tid=1, targetname=RW)
    with pytest.raises(TgtdRefused) as failure:
        client.request(request, f"create target {RW}")
    assert (failure.value.rc, failure.value.code, failure.value.stderr) == (9, 9, "this target already exists")
    assert str(failure.value) == f"create target {RW}: {client.path} failed (rc=9): this target already exists"
    assert failure.value.argv == [client.path, *request.argv()]
    with pytest.raises(TgtdRefused, match=r"rc=15\): can't find the account"):
        client.request(Req("account", "bind", tid=1, user="nobody"))
    with pytest.raises(TgtdRefused, match=r"rc=99\): \(unknown tgtadm_errno\)"):
        client.request(Req("account", "delete", user="nobody"))
    assert client.request(Req("target", "show")) == "Target 1: x\n"


def test_no_answer_times_out_and_a_broken_answer_fails(base: str) -> None:
    FakeTgtd(base, [None, b"\0\0\0\0", struct.pack("=II", 0, 4)])
    client = TgtdSocket(PORT, 0.3)
    started = time.monotonic()
    with pytest.raises(CommandFailed) as failure:
        client.request(Req("system", "show"), "ask tgtd")
    assert time.monotonic() - started < 1.5
    assert failure.value.rc == -1 and failure.value.stderr == "timed out after 0.3s"
    assert not isinstance(failure.value, TgtdRefused)
    with pytest.raises(CommandFailed, match="closed the connection 4 bytes before the end"):
        client.request(Req("system", "show"))
    with pytest.raises(CommandFailed, match="a response of length 4"):
        client.request(Req("system", "show"))


def test_no_tgtd_is_a_command_failure(base: str) -> None:
    with pytest.raises(CommandFailed) as failure:
        TgtdSocket(PORT, 1).request(Req("system", "show"), "ask tgtd")
    assert failure.value.rc == -1 and "No such file or directory" in failure.value.stderr


def test_the_secret_stays_out_of_errors_and_logs(base: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTgtd(base, [answer(0), answer(14)])
    client = TgtdSocket(PORT, 5)
    request = Req("account", "new", user="node-a", password=SECRET)
    assert request.argv(redacted=True)[-2:] == ["--password", "********"] and request.secrets() == (SECRET,)
    assert SECRET not in repr(request)
    with caplog.at_level(logging.DEBUG, logger="basalt_core.tgt_socket"):
        client.request(request, "create CHAP user node-a")
        with pytest.raises(TgtdRefused) as failure:
            client.request(request, "create CHAP user node-a")
    assert fake.requests[0].endswith(f"user=node-a,password={SECRET}\0".encode())  # tgtd has no other way
    shown = str(failure.value) + repr(failure.value.argv) + failure.value.stderr + caplog.text
    assert "this account already exists" in shown and "sent [" in caplog.text and SECRET not in shown


@pytest.mark.parametrize("field", ["user", "password", "initiator_name", "backing_store"])
def test_a_value_tgtd_would_split_is_refused(field: str) -> None:
    split: Any = {field: "a,b" + SECRET}
    with pytest.raises(InvalidRequest) as failure:
        Req("account", "new", **split).encode()
    assert SECRET not in str(failure.value)
    cut: Any = {field: "a\0b"}
    with pytest.raises(InvalidRequest):
        Req("target", "bind", tid=1, **cut).encode()


def test_the_socket_only_for_a_checked_release_that_answers_as_tgt(base: str) -> None:
    # an unchecked release: not even asked (no socket exists: a request would fail)
    assert client_for(PORT, 1, "1.0.79\n") is None
    with pytest.raises(CommandFailed):  # unreachable: nothing decided
        client_for(PORT, 1, "1.0.85\n")
    fake = FakeTgtd(base, [answer(0, "System:\n    State: ready\n"), answer(17), answer(0, "Something else\n")])
    client = client_for(PORT, 1, "1.0.85\n")
    assert client is not None and client.path == f"{base}.{PORT}"
    assert client_for(PORT, 1, "1.0.85\n") is None  # refused the probe
    assert client_for(PORT, 1, "1.0.85\n") is None  # answered unlike tgt
    assert all(request[:8] == struct.pack("=ii", 0, 2) for request in fake.requests)  # system show, nothing else


def test_the_backend_decides_once_and_runs_tgtadm_while_tgtd_is_unreachable(
        script: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = tgt.TgtBackend(control_port=PORT, conf_path=str(tmp_path / "basalt.conf"),
                             record_path=str(tmp_path / "grants.json"))
    asked: List[int] = []

    def unreachable(control_port: Optional[int], timeout: float) -> Optional[TgtdSocket]:
        asked.append(1)
        raise CommandFailed(["tgtadm", "--version"], 127, "tgtadm: command not found")
    monkeypatch.setattr(tgt, "socket_client", unreachable)
    script([ok(SHOW_T, SHOW)])
    assert [e.target_iqn for e in backend.exports()] == []  # tgtadm ran (scripted); not ours
    assert asked == [1]
    monkeypatch.setattr(tgt, "socket_client", lambda *_args: asked.append(2))  # tgtadm it is, from now on
    script([ok(SHOW_T, SHOW), ok([*C, "--mode", "target", "--op", "show"], SHOW)])
    backend.exports()
    backend.exports()
    assert asked == [1, 2]


def test_the_version_comes_from_the_hosts_tgtadm(script: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[str] = []
    monkeypatch.setattr(tgt_socket, "client_for", lambda port, timeout, version: seen.append(version))
    script([ok(["tgtadm", "--version"], "1.0.85\n")])
    assert tgt_socket.socket_client(PORT, 5) is None and seen == ["1.0.85\n"]


def test_the_timeout_bounds_the_whole_request(base: str) -> None:
    """An answer that trickles in (a byte every 0.1 s) still ends at the timeout, as a tgtadm process would."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{base}.{PORT}")
    listener.listen(1)

    def trickle() -> None:
        conn = listener.accept()[0]
        with conn:
            conn.recv(65536)
            for byte in answer(0, "System:\n    State: ready\n" * 4):
                time.sleep(0.1)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"timed out after 0\.5s"):
        TgtdSocket(PORT, 0.5).request(Req("system", "show"))
    assert time.monotonic() - started < 1.5
    listener.close()
