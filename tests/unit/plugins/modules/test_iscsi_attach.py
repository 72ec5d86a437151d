"""basalt.csi.iscsi_attach: module arguments in, exact iscsiadm argv and its output, result out (data-driven).

The real core runs (iscsi_attach.py, iscsiadm.py); ``iscsiadm`` is scripted
with output in the format open-iscsi 2.1.8 prints (node records, session
lines, the "No ... found" refusals with rc 21, see
tests/unit/plugins/module_utils/iscsi_recorded/README.md).  Where the disk appears after a login
(the kernel's part: this machine has no iSCSI initiator), the core's
``find_device``/``wait_for_device`` are scripted too; their own tests are in
tests/unit/plugins/module_utils/test_iscsiadm.py, and the VM tier runs all of it for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.modules import iscsi_attach as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.commands_testlib import (
    Command,
    fails,
    install,
    ok,
)
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

TARGET = "iqn.2026-11.dev.basalt:vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21"
PORTAL = "192.0.2.10:3260"
SERIAL = "5c1e0f4a9b3d7e21"
DISK = "/dev/sdb"
SECRET = "s3cret-for-a-12"
CHAP = dict(user="node-a", password=SECRET)
NODE = ["iscsiadm", "-m", "node", "-T", TARGET, "-p", PORTAL]
SESSIONS = ["iscsiadm", "-m", "session"]
NO_SESSIONS = fails(SESSIONS, 21, "iscsiadm: No active sessions.\n")
LOGGED_IN = ok(SESSIONS, f"tcp: [3] {PORTAL},1 {TARGET} (non-flash)\n")
SHOW = [*NODE, "-o", "show", "-S"]
NO_RECORD = fails(SHOW, 21, "iscsiadm: No records found\n")
ARGS = dict(target_iqn=TARGET, portals=[PORTAL], serial=SERIAL)


def record(password: str = SECRET, user: str = "node-a") -> str:
    """``iscsiadm -m node -T .. -p .. -o show -S``: the settings the core compares (open-iscsi 2.1.8 layout)."""
    return "\n".join([
        "# BEGIN RECORD 2.1.8", f"node.name = {TARGET}", "node.tpgt = 1", "node.startup = automatic",
        "iface.iscsi_ifacename = default", "iface.initiatorname = <empty>",
        "node.session.auth.authmethod = CHAP", f"node.session.auth.username = {user}",
        f"node.session.auth.password = {password}", "node.session.auth.username_in = <empty>",
        "node.session.auth.password_in = <empty>", "node.conn[0].address = 192.0.2.10",
        "node.conn[0].port = 3260", "# END RECORD",
    ]) + "\n"


def update(name: str, value: str) -> Command:
    return ok([*NODE, "-o", "update", "-n", name, "-v", value])


@dataclass
class AttachCase:
    case: Case
    commands: List[Command] = field(default_factory=list)


CASES = [
    AttachCase(Case(
        "log in with CHAP: node record, login, the disk by its serial",
        dict(ARGS, chap=CHAP),
        [call("iscsiadm.find_device", SERIAL, returns=None),
         call("iscsiadm.wait_for_device", SERIAL, 60, returns=DISK)],
        dict(changed=True, device=DISK, sessions=[PORTAL], target_iqn=TARGET),
    ), [
        NO_SESSIONS, NO_RECORD, ok([*NODE, "-o", "new"], f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] "
                                                         f"192.0.2.10,3260,-1 {TARGET}] added\n"),
        update("node.startup", "automatic"), update("node.session.auth.authmethod", "CHAP"),
        update("node.session.auth.username", "node-a"), update("node.session.auth.password", SECRET),
        update("node.session.auth.username_in", ""), update("node.session.auth.password_in", ""),
        ok([*NODE, "--login"], f"Logging in to [iface: default, target: {TARGET}, portal: 192.0.2.10,3260]\n"
                               f"Login to [iface: default, target: {TARGET}, portal: 192.0.2.10,3260] successful.\n"),
        LOGGED_IN,
    ]),
    AttachCase(Case(
        "already logged in with these credentials: nothing changes",
        dict(ARGS, chap=CHAP),
        [call("iscsiadm.find_device", SERIAL, returns=DISK),
         call("iscsiadm.wait_for_device", SERIAL, 60, returns=DISK)],
        dict(changed=False, device=DISK, sessions=[PORTAL]),
    ), [
        LOGGED_IN, ok(SHOW, record()),
        fails([*NODE, "--login"], 15, "iscsiadm: default: 1 session requested, but 1 already present.\n"),
        LOGGED_IN,
    ]),
    AttachCase(Case(
        "check mode with diff: a login is predicted, nothing runs but reads",
        dict(ARGS, chap=CHAP),
        [call("iscsiadm.find_device", SERIAL, returns=None), call("iscsiadm.find_device", SERIAL, returns=None)],
        dict(changed=True, diff=dict(before=dict(sessions=[], device=None),
                                     after=dict(sessions=[PORTAL], device=None))),
        check_mode=True, diff=True,
    ), [NO_SESSIONS, NO_SESSIONS]),
    AttachCase(Case(
        "check mode: logged in, but the record holds another secret",
        dict(ARGS, chap=CHAP),
        [call("iscsiadm.find_device", SERIAL, returns=DISK), call("iscsiadm.find_device", SERIAL, returns=DISK)],
        dict(changed=True, device=DISK, sessions=[PORTAL]),
        check_mode=True,
    ), [LOGGED_IN, LOGGED_IN, ok(SHOW, record(password="old-secret-0123"))]),
    AttachCase(Case(
        "check mode: logged in, record as wanted, a portal without its port",
        dict(ARGS, chap=CHAP, portals=["192.0.2.10"]),
        [call("iscsiadm.find_device", SERIAL, returns=DISK), call("iscsiadm.find_device", SERIAL, returns=DISK)],
        dict(changed=False, device=DISK, sessions=[PORTAL]),
        check_mode=True,
    ), [LOGGED_IN, LOGGED_IN, ok(["iscsiadm", "-m", "node", "-T", TARGET, "-p", "192.0.2.10", "-o", "show", "-S"],
                                 record())]),
    AttachCase(Case(
        "log out and forget the record",
        dict(target_iqn=TARGET, portals=[PORTAL], state="absent"),
        [],
        dict(changed=True, device=None, sessions=[]),
    ), [
        LOGGED_IN,
        ok([*NODE, "--logout"], f"Logging out of session [sid: 3, target: {TARGET}, portal: 192.0.2.10,3260]\n"
                                f"Logout of [sid: 3, target: {TARGET}, portal: 192.0.2.10,3260] successful.\n"),
        ok([*NODE, "-o", "delete"]),
        NO_SESSIONS,
    ]),
    AttachCase(Case(
        "absent when nothing is there: no change",
        dict(target_iqn=TARGET, portals=[PORTAL], state="absent", serial=SERIAL),
        [call("iscsiadm.find_device", SERIAL, returns=None)],
        dict(changed=False, device=None, sessions=[]),
    ), [
        NO_SESSIONS,
        fails([*NODE, "--logout"], 21, "iscsiadm: No matching sessions found\n"),
        fails([*NODE, "-o", "delete"], 21, "iscsiadm: No records found\n"),
        NO_SESSIONS,
    ]),
    AttachCase(Case(
        "absent in check mode: a record without a session is still a change",
        dict(target_iqn=TARGET, portals=[PORTAL], state="absent"),
        [],
        dict(changed=True, diff=dict(before=dict(sessions=[], device=None), after=dict(sessions=[], device=None))),
        check_mode=True, diff=True,
    ), [NO_SESSIONS, NO_SESSIONS, ok(SHOW, record())]),
    AttachCase(Case(
        "a CHAP refusal names the target, with iscsiadm's rc and stderr",
        dict(ARGS, chap=CHAP),
        [call("iscsiadm.find_device", SERIAL, returns=None)],
        dict(msg=f"iSCSI target {TARGET}: log in to {TARGET}: iscsiadm failed (rc=24)", rc=24,
             cmd=[*NODE, "--login"]),
        failed=True,
    ), [
        NO_SESSIONS, ok(SHOW, record()),
        fails([*NODE, "--login"], 24,
              f"iscsiadm: Could not login to [iface: default, target: {TARGET}, portal: 192.0.2.10,3260].\n"
              "iscsiadm: initiator reported error (24 - iSCSI login failed due to authorization failure)\n"
              "iscsiadm: Could not log into all portals\n"),
    ]),
    AttachCase(Case(
        "a portal that would be an option is refused before any command",
        dict(ARGS, portals=["-o"]),
        [],
        dict(msg="portal '-o' is not ADDRESS[:PORT]"),
        failed=True,
    )),
    AttachCase(Case(
        "present needs the serial",
        dict(target_iqn=TARGET, portals=[PORTAL]),
        [],
        dict(msg="state is present but all of the following are missing: serial"),
        failed=True,
    )),
    AttachCase(Case(
        "a target name that is not an IQN",
        dict(ARGS, target_iqn="--op=delete"),
        [call("iscsiadm.find_device", SERIAL, returns=None)],
        dict(msg="target IQN '--op=delete' is not an iqn., eui. or naa. name"),
        failed=True,
    ), [NO_SESSIONS]),
]


@pytest.mark.parametrize("attach_case", CASES, ids=[c.case.id for c in CASES])
def test_iscsi_attach(attach_case: AttachCase, monkeypatch: pytest.MonkeyPatch,
                      run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    commands = install(monkeypatch, attach_case.commands, ("iscsiadm",))
    result = run_case(module, attach_case.case)
    assert not commands.pending, f"commands expected but not run: {commands.pending}"
    for (argv, *_rest), secrets in zip(attach_case.commands, commands.secrets):
        if SECRET in argv:  # a secret on a command line is always handed over for redaction
            assert SECRET in secrets, argv
    assert SECRET not in repr({k: v for k, v in result.items() if k != "invocation"})
