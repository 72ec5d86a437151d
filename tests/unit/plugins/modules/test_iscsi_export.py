"""basalt.csi.iscsi_export: module arguments in, exact tgtadm argv and tgt's output, result out (data-driven).

The real core runs (exports.py, tgt.py, the grant record and the config file
in a temporary directory); the pool is a stand-in whose volume is attached as
/dev/loop7, and tgtadm is scripted with output in the format tgt 1.0.85
prints (``Target N: IQN`` blocks).
``{tmp}`` in a case stands for the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.iscsi_target import serial_for, target_iqn_for
from ansible_collections.basalt.csi.plugins.module_utils.model import READY, Volume, volume_id_for
from ansible_collections.basalt.csi.plugins.module_utils.tgt_config import record_in
from ansible_collections.basalt.csi.plugins.modules import iscsi_export as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.commands_testlib import Command, install, ok
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

MiB = 1 << 20
SPEC = "file:/pool"
NAME = "pgdata"
VID = volume_id_for(NAME)
BASE = "iqn.2026-11.dev.basalt"
TARGET = target_iqn_for(BASE, VID)
SERIAL = serial_for(VID)
NODE_A = "iqn.1993-08.org.debian:01:node-a"
NODE_B = "iqn.1993-08.org.debian:01:node-b"
PORTAL = "192.0.2.10:3260"
DEV = "/dev/loop7"
SECRET = "s3cret-for-a-12"
C = ["tgtadm", "-C", "3001", "--lld", "iscsi"]
SHOW_TARGETS = [*C, "--mode", "target", "--op", "show"]
RECORD = "{tmp}/state/grants.json"
CONF = "{tmp}/basalt.conf"
TGT = dict(tgt_control_port=3001, tgt_record=RECORD, tgt_conf=CONF)
ARGS = dict(pool=SPEC, volume_name=NAME, initiators=[NODE_A], portals=[PORTAL], **TGT)
CHAP = dict(user="node-a", password=SECRET)


class FakePool:
    kind = "file"
    location = "/pool"

    def attach(self, volume: Volume) -> str:
        assert volume.id == VID
        return DEV

    def load_volume(self, volume_id: str) -> Optional[Volume]:
        return VOLUME if volume_id == VID else None

    def detach(self, volume: Volume) -> bool:
        return True


POOL = FakePool()
VOLUME = Volume(id=VID, name=NAME, size=64 * MiB, pool="file", state=READY)


def target_show(*, lun: bool = True, read_only: bool = False, accounts: Sequence[str] = (),
                acls: Sequence[str] = ()) -> str:
    """``tgtadm --mode target --op show`` for target 1 holding the volume (tgt 1.0.85's layout)."""
    lines = [f"Target 1: {TARGET}", "    System information:", "        Driver: iscsi", "        State: ready",
             "    I_T nexus information:", "    LUN information:",
             "        LUN: 0", "            Type: controller", "            SCSI ID: IET     00010000",
             "            SCSI SN: beaf10", "            Readonly: No", "            Backing store type: null",
             "            Backing store path: None"]
    if lun:
        lines += ["        LUN: 1", "            Type: disk", "            SCSI ID: IET     00010001",
                  f"            SCSI SN: {SERIAL}", "            Size: 67 MB, Block size: 512",
                  f"            Readonly: {'Yes' if read_only else 'No'}", "            Backing store type: rdwr",
                  f"            Backing store path: {DEV}"]
    lines += ["    Account information:", *(f"        {a}" for a in accounts), "    ACL information:",
              *(f"        {a}" for a in acls)]
    return "\n".join(lines) + "\n"


NO_ADDRESS = "255.255.255.255/32"
FULL = target_show(accounts=["node-a"], acls=[NO_ADDRESS, NODE_A])
TWO_OPEN = target_show(acls=[NO_ADDRESS, NODE_A, NODE_B])


def listing(show: str) -> List[Command]:
    """The one listing of tgtd a run makes (the module holds the backend's transaction throughout)."""
    return [ok(SHOW_TARGETS, show)]


def facts(*grants: Dict[str, Any], exported: bool = True, read_only: Optional[bool] = False) -> Dict[str, Any]:
    return dict(target_iqn=TARGET, lun=1, serial=SERIAL, portals=[PORTAL], volume_id=VID, exported=exported,
                read_only=read_only if exported else None, grants=list(grants))


def grant(initiator: str, chap_user: Optional[str] = None) -> Dict[str, Any]:
    return dict(initiator=initiator, chap_user=chap_user, mutual_chap_user=None)


NONE = facts(exported=False)
LOOKUP = [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("find_volume_by_name", POOL, NAME, returns=VOLUME)]
CHECK_LOOKUP = [call("open_pool", SPEC, create_layout=False, returns=POOL),
                call("find_volume_by_name", POOL, NAME, returns=VOLUME)]


@dataclass
class ExportCase:
    case: Case
    commands: List[Command] = field(default_factory=list)
    record_before: Optional[Dict[str, Any]] = None
    #: the grant record afterwards: the config file's when it carries one (the JSON file is gone then), else
    #: the JSON file an older Basalt kept (None: neither exists)
    record_after: Optional[Dict[str, Any]] = None
    #: lines the persisted config must hold (None: it must not have been written)
    conf_lines: Optional[List[str]] = None
    #: what each command got as secrets= (only when given)
    secrets: Optional[List[List[str]]] = None
    without_rtslib: bool = False


def record(grants: Dict[str, Any]) -> Dict[str, Any]:
    """A grant record as an older Basalt kept it (its own JSON file, no LUN)."""
    return {"version": 1, "targets": {TARGET: {"grants": grants}}}


def carried(grants: Dict[str, Any]) -> Dict[str, Any]:
    """The grant record the config file carries: with the target's LUN."""
    return {"version": 2, "targets": {TARGET: {"grants": grants,
                                               "lun": {"device": DEV, "serial": SERIAL, "read_only": False}}}}


CHAP_DOC = {"user": "node-a", "password": SECRET, "mutual_user": None, "mutual_password": None}

NEW_EXPORT = [
    *listing(""),  # before: nothing
    ok([*C, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", TARGET]),
    ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", NO_ADDRESS]),
    ok([*C, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", DEV,
        "--bstype", "rdwr"]),
    ok([*C, "--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", "1", "--params",
        f"scsi_sn={SERIAL},readonly=0"]),
    ok([*C, "--mode", "account", "--op", "new", "--user", "node-a", "--password", SECRET]),
    ok([*C, "--mode", "account", "--op", "bind", "--tid", "1", "--user", "node-a"]),
    ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", NODE_A]),
    # persist and the result come from that listing and these changes: no listing after a change
]

CASES = [
    ExportCase(Case(
        "export a new volume to one node with CHAP, persisted",
        dict(ARGS, chap=CHAP),
        LOOKUP,
        dict(changed=True, export=facts(grant(NODE_A, "node-a"))),
    ), NEW_EXPORT, record_after=carried({NODE_A: CHAP_DOC}),
        conf_lines=[f"<target {TARGET}>", f"    <backing-store {DEV}>", "        lun 1", f"        scsi_sn {SERIAL}",
                    "        readonly 0", f"    initiator-address {NO_ADDRESS}", f"    initiator-name {NODE_A}",
                    f"    incominguser node-a {SECRET}"],
        secrets=[[]] * 5 + [[SECRET]] + [[]] * 2),
    ExportCase(Case(
        "the same again changes nothing and writes nothing",
        dict(ARGS, chap=CHAP),
        LOOKUP,
        dict(changed=False, export=facts(grant(NODE_A, "node-a"))),
    ), [
        *listing(FULL),  # LUN 1 is the device, serial and mode match; node-a is bound with the recorded secret
    ], record_before=record({NODE_A: CHAP_DOC}), record_after=record({NODE_A: CHAP_DOC})),
    ExportCase(Case(
        "check mode with diff: only reads",
        dict(ARGS, chap=CHAP),
        CHECK_LOOKUP,
        dict(changed=True, diff=dict(before=NONE, after=facts(grant(NODE_A, "node-a")))),
        check_mode=True, diff=True,
    ), listing("")),
    ExportCase(Case(
        "check mode: another secret for a granted node is a change",
        dict(ARGS, chap=dict(CHAP, password="an0ther-secret")),
        CHECK_LOOKUP,
        dict(changed=True, export=facts(grant(NODE_A, "node-a"))),
        check_mode=True,
    ), listing(FULL), record_before=record({NODE_A: CHAP_DOC}),
        record_after=record({NODE_A: CHAP_DOC})),
    ExportCase(Case(
        "check mode, exclusive: an unlisted grant would be withdrawn",
        dict(ARGS, exclusive=True),
        CHECK_LOOKUP,
        dict(changed=True, diff=dict(before=facts(grant(NODE_A), grant(NODE_B)), after=facts(grant(NODE_A)))),
        check_mode=True, diff=True,
    ), listing(TWO_OPEN),
        record_before=record({NODE_A: None, NODE_B: None}), record_after=record({NODE_A: None, NODE_B: None})),
    ExportCase(Case(
        "not exclusive: an unlisted grant stays",
        dict(ARGS),
        CHECK_LOOKUP,
        dict(changed=False, export=facts(grant(NODE_A), grant(NODE_B))),
        check_mode=True,
    ), listing(TWO_OPEN),
        record_before=record({NODE_A: None, NODE_B: None}), record_after=record({NODE_A: None, NODE_B: None})),
    ExportCase(Case(
        "withdraw one node of two: its ACL goes, the target stays",
        dict(pool=SPEC, volume_name=NAME, initiators=[NODE_B], state="absent", **TGT),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(changed=True, export=dict(facts(grant(NODE_A)), portals=[])),
    ), [
        *listing(TWO_OPEN),
        ok([*C, "--mode", "target", "--op", "unbind", "--tid", "1", "--initiator-name", NODE_B]),  # NODE_A stays
    ], record_before=record({NODE_A: None, NODE_B: None}), record_after=carried({NODE_A: None}),
        conf_lines=[f"    initiator-name {NODE_A}"]),
    ExportCase(Case(
        "withdraw the whole export in check mode",
        dict(pool=SPEC, volume_id=VID, state="absent", **TGT),
        [call("open_pool", SPEC, create_layout=False, returns=POOL)],
        dict(changed=True, diff=dict(before=dict(facts(grant(NODE_A, "node-a")), portals=[]),
                                     after=dict(NONE, portals=[]))),
        check_mode=True, diff=True,
    ), listing(FULL), record_before=record({NODE_A: CHAP_DOC}),
        record_after=record({NODE_A: CHAP_DOC})),
    ExportCase(Case(
        "withdraw what is not exported",
        dict(pool=SPEC, volume_name=NAME, state="absent", **TGT),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(changed=False, export=dict(NONE, portals=[])),
    ), listing("")),
    ExportCase(Case(
        "check mode: another read-only mode is refused as a real run would be",
        dict(ARGS, read_only=False),
        CHECK_LOOKUP,
        dict(msg=f"target {TARGET} is exported with read-only True, not False"),
        check_mode=True, failed=True,
    ), listing(target_show(read_only=True, acls=[NO_ADDRESS, NODE_A])),
        record_before=record({NODE_A: None}), record_after=record({NODE_A: None})),
    ExportCase(Case(
        "a volume that does not exist",
        dict(ARGS),
        [call("open_pool", SPEC, create_layout=True, returns=POOL),
         call("find_volume_by_name", POOL, NAME, returns=None)],
        dict(msg="there is no volume named 'pgdata' in the file pool at /pool"),
        failed=True,
    ), listing("")),
    ExportCase(Case(
        "a CHAP secret with a blank is refused before any change",
        dict(ARGS, chap=dict(user="node-a", password="two words here")),
        LOOKUP,
        dict(msg="CHAP password must be 1-255 printable ASCII characters without blanks"),
        failed=True,
    ), listing("")),
    ExportCase(Case(
        "mutual CHAP needs both its user and its secret",
        dict(ARGS, chap=dict(CHAP, mutual_user="storage")),
        [],
        dict(msg="parameters are required together: mutual_user, mutual_password"),
        failed=True,
    )),
    ExportCase(Case(
        "an initiator name in upper case is refused",
        dict(ARGS, initiators=["iqn.1993-08.org.debian:01:Node-A"]),
        [],
        dict(msg="is not iqn.YYYY-MM.reverse.domain[:name] in lower case"),
        failed=True,
    )),
    ExportCase(Case(
        "present needs initiators and portals",
        dict(pool=SPEC, volume_name=NAME),
        [],
        dict(msg="state is present but all of the following are missing: initiators, portals"),
        failed=True,
    )),
    ExportCase(Case(
        "name and id together",
        dict(ARGS, volume_id=VID),
        [],
        dict(msg="parameters are mutually exclusive: volume_name|volume_id"),
        failed=True,
    )),
    ExportCase(Case(
        "the LIO backend without rtslib-fb",
        dict(ARGS, backend="lio"),
        [],
        dict(msg="Failed to import the required Python library (rtslib-fb)"),
        failed=True,
    ), without_rtslib=True),
]


def fill(value: Any, tmp: str) -> Any:
    """Put the test's temporary directory where a case says ``{tmp}``."""
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, dict):
        return {k: fill(v, tmp) for k, v in value.items()}
    return value


@pytest.mark.parametrize("export_case", CASES, ids=[c.case.id for c in CASES])
def test_iscsi_export(export_case: ExportCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    tmp = str(tmp_path)
    record_path, conf_path = fill(RECORD, tmp), fill(CONF, tmp)
    if export_case.record_before is not None:
        os.makedirs(os.path.dirname(record_path))
        Path(record_path).write_text(json.dumps(export_case.record_before))
    if export_case.without_rtslib:
        monkeypatch.setattr(module, "rtslib_fb", None)
    commands = install(monkeypatch, export_case.commands, ("tgt",))
    case = export_case.case
    result = run_case(module, Case(case.id, fill(case.args, tmp), case.calls, case.result, case.check_mode,
                                   case.diff, case.failed))
    assert not commands.pending, f"commands expected but not run: {commands.pending}"
    assert SECRET not in json.dumps(result.get("export")) and SECRET not in json.dumps(result.get("diff"))
    in_config = record_in(Path(conf_path).read_text()) if os.path.exists(conf_path) else None
    if export_case.record_after is None:
        assert not os.path.exists(record_path) and in_config is None
    elif in_config is not None:
        assert not os.path.exists(record_path), "the config file's record supersedes the JSON file"
        assert in_config == export_case.record_after
    else:
        assert json.loads(Path(record_path).read_text()) == export_case.record_after
    if export_case.conf_lines is None:
        assert not os.path.exists(conf_path)
    else:
        lines = Path(conf_path).read_text().splitlines()
        assert [line for line in lines if line in export_case.conf_lines] == export_case.conf_lines
        assert stat.S_IMODE(os.stat(conf_path).st_mode) == 0o600
    if export_case.secrets is not None:
        assert commands.secrets == export_case.secrets
