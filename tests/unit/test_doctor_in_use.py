"""``basalt doctor`` and ``gc`` never log out a leftover iSCSI session whose disks are in use.

Kernel iSCSI sessions cannot run on this machine (no kernel initiator): ``iscsiadm``'s listings and
its logout/delete are mocked, and the kernel's view of the sessions' disks is the recorded tree of
device_use_testlib (session 7's disk has a mounted partition, session 9's is idle).  The pool is a real
file pool; the real loop-device case is tests/conformance/test_operator.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest
from device_use_testlib import kernel

from basalt_agent import cli
from basalt_agent.main import _orphan_count
from basalt_agent.nodestate import NodeState
from basalt_core import device_use, iscsiadm
from basalt_core.iscsi_target import DEFAULT_BASE_IQN
from basalt_core.pool_factory import open_pool

PORTAL = "127.0.0.1:3260"
HELD, IDLE = f"{DEFAULT_BASE_IQN}:vol-{'a' * 32}", f"{DEFAULT_BASE_IQN}:vol-{'b' * 32}"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, str, str]]:
    """Two stray sessions (7: in use, 9: idle) with their node records; returns the iscsiadm calls made."""
    monkeypatch.setattr(device_use, "HOST", kernel(tmp_path / "kernel"))
    calls: List[Tuple[str, str, str]] = []
    monkeypatch.setattr(iscsiadm, "installed", lambda: True)
    monkeypatch.setattr(iscsiadm, "sessions", lambda: [iscsiadm.Session("tcp", 7, PORTAL, 1, HELD),
                                                       iscsiadm.Session("tcp", 9, PORTAL, 1, IDLE)])
    monkeypatch.setattr(iscsiadm, "nodes", lambda: [(HELD, PORTAL), (IDLE, PORTAL)])

    def recorder(name: str) -> Callable[[str, str], bool]:
        def operation(target: str, portal: str) -> bool:
            calls.append((name, target, portal))
            return True
        return operation

    monkeypatch.setattr(iscsiadm, "logout", recorder("logout"))
    monkeypatch.setattr(iscsiadm, "delete_node", recorder("delete_node"))
    return calls


def basalt(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> Tuple[int, Any]:
    capsys.readouterr()
    status = cli.main([*args, "--endpoint", f"unix://{tmp_path}/no-agent.sock", "--pool", f"file:{tmp_path}/pool",
                       "--state-dir", str(tmp_path / "state"), "--kubelet-root", str(tmp_path / "no-kubelet"),
                       "-o", "json"])
    return status, json.loads(capsys.readouterr().out)


def test_a_session_in_use_is_reported_and_left_by_gc(node: List[Tuple[str, str, str]], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    open_pool(f"file:{tmp_path}/pool")
    held = [f"iSCSI session 7 to {HELD} ({PORTAL}): no node record names it",
            f"iSCSI node record {HELD} ({PORTAL}): no node record names it"]
    idle = [f"iSCSI session 9 to {IDLE} ({PORTAL}): no node record names it",
            f"iSCSI node record {IDLE} ({PORTAL}): no node record names it"]

    status, findings = basalt(capsys, tmp_path, "doctor")
    leftovers = {f["what"]: f for f in findings if f["check"] == "leftovers"}
    assert status == 1 and sorted(leftovers) == sorted(held + idle)
    assert [(leftovers[w]["status"], leftovers[w]["safe_to_remove"]) for w in held] == [("in use", False)] * 2
    assert [(leftovers[w]["status"], leftovers[w]["safe_to_remove"]) for w in idle] == [("leftover", True)] * 2
    assert leftovers[held[0]]["fix"].startswith("in use: /dev/sdq1 is mounted on /mnt/data; find its user")
    assert leftovers[held[1]]["fix"].startswith("in use: its session 7 is in use; find its user")

    status, dry = basalt(capsys, tmp_path, "gc")
    assert status == 1 and [(f["status"], f["what"]) for f in dry] == [
        ("in use", held[0]), ("would remove", idle[0]), ("in use", held[1]), ("would remove", idle[1])]
    assert node == []

    status, done = basalt(capsys, tmp_path, "gc", "--apply")
    assert status == 1 and [(f["status"], f["what"]) for f in done] == [
        ("in use", held[0]), ("removed", idle[0]), ("in use", held[1]), ("removed", idle[1])]
    assert done[0]["fix"].startswith("left in place: in use: /dev/sdq1 is mounted on /mnt/data")
    assert node == [("logout", IDLE, PORTAL), ("delete_node", IDLE, PORTAL)]


def test_a_session_taken_into_use_after_doctor_looked_is_left(node: List[Tuple[str, str, str]], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """gc checks again right before the logout."""
    from basalt_agent import doctor, inventory

    pool_dir = tmp_path / "pool"
    open_pool(f"file:{pool_dir}")
    settings = cli.config.from_args(cli.parser().parse_args(
        ["doctor", "--pool", f"file:{pool_dir}", "--state-dir", str(tmp_path / "state")]))
    found = [f for f in doctor.examine(inventory.Inventory(settings), str(tmp_path / "no-kubelet"))
             if f.what.startswith("iSCSI session 9 ")]
    assert len(found) == 1 and found[0].remove is not None
    Path(device_use.HOST.mountinfo).write_text("104 27 65:48 / /mnt/late rw - ext4 /dev/sdt rw\n")
    with pytest.raises(doctor.InUse, match="/dev/sdt is mounted on /mnt/late"):
        found[0].remove()
    assert node == []


def test_the_orphan_metric_counts_sessions_in_use_too(node: List[Tuple[str, str, str]], tmp_path: Path) -> None:
    state = NodeState(str(tmp_path / "state" / "node"))
    strays = state.stray_sessions(DEFAULT_BASE_IQN)
    assert [(s.session.sid, s.users) for s in strays] == [(7, ("/dev/sdq1 is mounted on /mnt/data",)), (9, ())]
    pool = open_pool(f"file:{tmp_path}/pool")
    assert _orphan_count(pool, None, state, DEFAULT_BASE_IQN)()["session"] == 2
