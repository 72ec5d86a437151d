"""The storage host's start-up reconciliation as data: live exports + saved grants + records -> actions.

The actions are applied to a real tgtd in tests/iscsi/test_reconcile.py; here
every case of the plan is checked exactly, including what must never be
touched (targets outside the base IQN).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, cast

import pytest

from basalt_agent.publishing import IscsiPublishing
from basalt_agent.reconcile import EXPORT, GRANT, REMOVE, REVOKE, SKIP, Action, Wanted, plan, wanted_of
from basalt_core.exports import ExportSettings
from basalt_core.iscsi_target import Chap, Export, Grant, TargetBackend, initiator_iqn_for, target_iqn_for
from basalt_core.model import READY, Publication, Volume
from basalt_core.tgt import TgtBackend

BASE = "iqn.2026-11.dev.basalt"
T1 = f"{BASE}:vol-1"
T2 = f"{BASE}:vol-2"
A = "iqn.2026-11.dev.basalt.node:node-a"
B = "iqn.2026-11.dev.basalt.node:node-b"
CHAP_A = Chap("user-a", "Secret-Of-A-1234")
CHAP_B = Chap("user-b", "Secret-Of-B-1234")
FOREIGN = "iqn.2003-01.org.example:disk1"
LOOKALIKE = f"{BASE}.other:vol-1"  # shares the base as a string prefix, but is not under it


def live(target: str, *grants: Grant, device: str = "/dev/loop7", read_only: bool = False) -> Export:
    return Export(target, 1, "0123456789abcdef", device, read_only, tuple(grants))


def want(target: str, initiator: Optional[str], node: str = "node-a", read_only: bool = False,
         volume: str = "vol-1") -> Wanted:
    return Wanted(volume, target, node, initiator, read_only)


CASES: Dict[str, Any] = {
    "steady state: nothing to do": (
        [live(T1, Grant(A, CHAP_A))], {T1: {A: CHAP_A}}, [want(T1, A)],
        [],
    ),
    "tgtd restarted empty: export and grant again with the saved secret": (
        [], {T1: {A: CHAP_A}}, [want(T1, A)],
        [Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, CHAP_A, reason="recorded publication to node node-a, grant missing")],
    ),
    "read-only publication is exported read-only": (
        [], {T1: {A: None}}, [want(T1, A, read_only=True)],
        [Action(EXPORT, T1, "vol-1", read_only=True, reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, None, reason="recorded publication to node node-a, grant missing")],
    ),
    "target left without its LUN (crash inside the export)": (
        [live(T1, Grant(A, CHAP_A), device="")], {T1: {A: CHAP_A}}, [want(T1, A)],
        [Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing")],
    ),
    "crash between export and record: the export goes": (
        [live(T1, Grant(A, CHAP_A))], {T1: {A: CHAP_A}}, [],
        [Action(REMOVE, T1, initiators=(A,), reason="no publication record wants it")],
    ),
    "interrupted unpublish of one node: only its grant goes": (
        [live(T1, Grant(A, CHAP_A), Grant(B, CHAP_A))], {T1: {A: CHAP_A, B: CHAP_A}}, [want(T1, A)],
        [Action(REVOKE, T1, "vol-1", B, reason="no publication record wants it")],
    ),
    "a saved grant nobody wants is forgotten (its secret with it)": (
        [live(T1, Grant(A, CHAP_A))], {T1: {A: CHAP_A, B: CHAP_B}}, [want(T1, A)],
        [Action(REVOKE, T1, "vol-1", B, reason="no publication record wants it")],
    ),
    "a saved target that is neither live nor wanted is forgotten": (
        [], {T2: {B: CHAP_B}}, [],
        [Action(REMOVE, T2, initiators=(B,), reason="no publication record wants it")],
    ),
    "no saved secret: the grant is not made up, nor a target nobody can log in to": (
        [], {}, [want(T1, A)],
        [Action(SKIP, T1, "vol-1", A, reason="no saved credentials for node node-a: publish it again")],
    ),
    "one grant restorable, one not: export, grant, report": (
        [], {T1: {A: CHAP_A}}, [want(T1, A), want(T1, B, node="node-b")],
        [Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, CHAP_A, reason="recorded publication to node node-a, grant missing"),
         Action(SKIP, T1, "vol-1", B, reason="no saved credentials for node node-b: publish it again")],
    ),
    "a node with no known initiator IQN is reported": (
        [live(T1, Grant(A, CHAP_A))], {T1: {A: CHAP_A}}, [want(T1, A), want(T1, None, node="node-x")],
        [Action(SKIP, T1, "vol-1", reason="node node-x has no known initiator IQN")],
    ),
    "the LUN is another device than the volume's (loop devices renumbered by a reboot)": (
        [live(T1, Grant(A, CHAP_A), device="/dev/loop3")], {T1: {A: CHAP_A}}, [want(T1, A)],
        [Action(REMOVE, T1, "vol-1", initiators=(A,),
                reason="its LUN is /dev/loop3, but the volume is at /dev/loop5"),
         Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, CHAP_A, reason="recorded publication to node node-a, grant missing")],
        {T1: "/dev/loop5"},
    ),
    "the volume is not attached at all: its target cannot be serving it": (
        [live(T1, Grant(A, CHAP_A), device="/dev/loop3")], {T1: {A: CHAP_A}}, [want(T1, A)],
        [Action(REMOVE, T1, "vol-1", initiators=(A,), reason="its LUN is /dev/loop3, but the volume is at no device"),
         Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, CHAP_A, reason="recorded publication to node node-a, grant missing")],
        {T1: None},
    ),
    "the LUN is the volume's device: nothing to do": (
        [live(T1, Grant(A, CHAP_A), device="/dev/loop3")], {T1: {A: CHAP_A}}, [want(T1, A)], [], {T1: "/dev/loop3"},
    ),
    "targets outside the base IQN are never touched": (
        [live(FOREIGN, Grant(A)), live(LOOKALIKE, Grant(A))], {FOREIGN: {A: None}, LOOKALIKE: {A: None}}, [],
        [],
    ),
    "several targets, each settled on its own": (
        [live(T2, Grant(B, CHAP_B))], {T1: {A: CHAP_A}, T2: {B: CHAP_B}}, [want(T1, A)],
        [Action(EXPORT, T1, "vol-1", reason="recorded publication, target missing"),
         Action(GRANT, T1, "vol-1", A, CHAP_A, reason="recorded publication to node node-a, grant missing"),
         Action(REMOVE, T2, initiators=(B,), reason="no publication record wants it")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan(case: str) -> None:
    current, saved, wanted, expected, *devices = CASES[case]
    assert plan(BASE, current, saved, wanted, *devices) == expected


def test_plan_is_idempotent_once_applied() -> None:
    """After the actions of the restart case, the same inputs with the result applied plan nothing."""
    applied = [live(T1, Grant(A, CHAP_A))]
    assert plan(BASE, applied, {T1: {A: CHAP_A}}, [want(T1, A)]) == []


def _volume(volume_id: str, publications: Dict[str, Publication]) -> Volume:
    return Volume(volume_id, volume_id, 1 << 20, "file", state=READY, publications=publications)


@pytest.mark.parametrize(("initiators", "base", "expected"), [
    ({"node-a": A}, "", [("node-a", A, False), ("node-b", None, True)]),
    ({"node-a": A}, "iqn.2026-11.dev.basalt.node", [("node-a", A, False), ("node-b", B, True)]),
])
def test_wanted_from_records(initiators: Dict[str, str], base: str,
                             expected: Sequence[Any]) -> None:
    """Self-publications are local (no export); read-only modes count as read-only; IQNs map or derive."""
    publishing = IscsiPublishing(cast(Any, None), "storage-1", cast(Any, None),
                                 ExportSettings(BASE, ("127.0.0.1:3260",)), initiators, initiator_base=base)
    volumes = [_volume("vol-1", {
        "storage-1": Publication(False, "SINGLE_NODE_WRITER"),
        "node-a": Publication(False, "MULTI_NODE_MULTI_WRITER"),
        "node-b": Publication(False, "MULTI_NODE_READER_ONLY"),
    })]
    found: List[Wanted] = wanted_of(publishing, volumes)
    assert [(w.node_id, w.initiator_iqn, w.read_only) for w in found] == list(expected)
    assert {w.target_iqn for w in found} == {target_iqn_for(BASE, "vol-1")}


def test_derived_initiator_is_what_the_node_writes() -> None:
    assert initiator_iqn_for("iqn.2026-11.dev.basalt.node", "node-b") == B


def test_tgt_saved_grants_come_from_its_grant_record(tmp_path: Path) -> None:
    """tgtd forgets everything when it stops; the grant record (0600, written with every change) does not."""
    record = tmp_path / "tgt-grants.json"
    record.write_text(json.dumps({"version": 1, "targets": {
        T1: {"grants": {A: {"user": "user-a", "password": "Secret-Of-A-1234", "mutual_user": None,
                            "mutual_password": None}, B: None}},
        T2: {"grants": {}},
    }}))
    backend = TgtBackend(control_port=1, conf_path=str(tmp_path / "basalt.conf"), record_path=str(record))
    assert backend.saved_grants() == {T1: {A: CHAP_A, B: None}, T2: {}}
    assert TgtBackend(record_path=str(tmp_path / "missing.json")).saved_grants() == {}


class _LiveOnly(TargetBackend):
    """The interface's default, as LIO uses it: what the target service holds now (it restores saveconfig)."""

    def __init__(self, live: List[Export]) -> None:
        self.live = live

    def ensure_export(self, target_iqn: str, device: str, serial: str, read_only: bool) -> bool:
        raise AssertionError("not called")

    def ensure_grant(self, target_iqn: str, initiator_iqn: str, chap: Optional[Chap]) -> bool:
        raise AssertionError("not called")

    def revoke_grant(self, target_iqn: str, initiator_iqn: str) -> bool:
        raise AssertionError("not called")

    def remove_export(self, target_iqn: str) -> bool:
        raise AssertionError("not called")

    def exports(self) -> List[Export]:
        return self.live

    def persist(self) -> None:
        raise AssertionError("not called")

    def transaction(self) -> ContextManager[None]:
        return contextlib.nullcontext()

    def ping(self) -> None:
        raise AssertionError("not called")


def test_default_saved_grants_are_the_live_ones() -> None:
    backend = _LiveOnly([live(T1, Grant(A, CHAP_A), Grant(B)), live(T2)])
    assert backend.saved_grants() == {T1: {A: CHAP_A, B: None}, T2: {}}
