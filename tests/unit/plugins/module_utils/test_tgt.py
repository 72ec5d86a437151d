"""basalt_core.tgt and iscsi_target: exact tgtadm argv in, real tgt 1.0.85 output (iscsi_recorded) out.

The recordings come from tests/iscsi/record_tgt.py (a private tgtd, a
libiscsi session held open while ``--op show`` ran).  The same behaviour is
exercised for real by tests/iscsi/test_tgt_real.py.  Every test runs twice (``tgt_transport``, autouse, from
tgt_wire.py): through tgtadm's argv, and over tgtd's socket with each request's bytes read back as that argv.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Any, List

import pytest
from tgt_testlib import CHAP_A, NODE_A, NODE_B, RO, RW, SHOW, SHOW_T, C, Call, made_export, ok, old_record, saved
from tgt_wire import tgt_transport  # noqa: F401  # pylint: disable=unused-import

from basalt_core import tgt, tgt_config, tgt_show
from basalt_core.errors import CommandFailed, Conflict, InUse, InvalidRequest, NotFound, Precondition
from basalt_core.iscsi_target import Chap, Export, Grant, check_iqn, serial_for, target_iqn_for

RECORDED = Path(__file__).parent / "iscsi_recorded"
ACCOUNTS = (RECORDED / "tgtadm_account_show.txt").read_text()
NO_ACCOUNTS = (RECORDED / "tgtadm_account_show_none.txt").read_text()
PORTALS = (RECORDED / "tgtadm_portal_show.txt").read_text()
_ERR_LINES = (RECORDED / "tgtadm_errors.tsv").read_text().splitlines()
ERRORS = {line.split("\t")[0]: line.split("\t")[2] for line in _ERR_LINES}

ACCOUNT_EXISTS = "--mode account --op new --user node-a --password xxxxxxxxxxxx"
NEW_NODE_A_OTHER = [*C, "--mode", "account", "--op", "new", "--user", "node-a", "--password", "another-secret-1"]


@pytest.fixture
def tgt_script(script: Any) -> Any:
    """The shared scripted runner (tests/unit/conftest.py), which also records the secrets= of each call."""
    return script


@pytest.fixture
def backend(tmp_path: Path) -> tgt.TgtBackend:
    return tgt.TgtBackend(control_port=7, conf_path=str(tmp_path / "basalt.conf"),
                          record_path=str(tmp_path / "state" / "grants.json"))


def _without_record(config: str) -> str:
    """The config file as tgt-admin reads it: without the record's comment line (and the blank after it)."""
    return config.replace(next(line for line in config.splitlines() if line.startswith(tgt_config.RECORD_MARK))
                          + "\n\n", "")


def err(argv: List[str], key: str) -> Call:
    return (argv, 22, "", ERRORS[key])


# -- parsing -------------------------------------------------------------------


def test_parse_recorded_show() -> None:
    rw, ro = tgt_show.parse_targets(SHOW)
    assert (rw.tid, rw.iqn, rw.state) == (1, RW, "ready")
    assert [(lu.lun, lu.type, lu.serial, lu.read_only, lu.backing_store, lu.backing_store_type) for lu in rw.luns] == [
        (0, "controller", "beaf10", False, "None", "null"),
        (1, "disk", "5b1fd0c2a1b2c3d4", False, "/dev/loop7", "rdwr"),
    ]
    assert rw.incoming == ("node-a",) and rw.outgoing == ("target-1",)
    assert rw.acls == (tgt_config.NO_ADDRESS, NODE_A) and rw.initiator_acls == (NODE_A,)
    assert rw.sessions == (tgt_show.TgtSession(1, NODE_A, (0,), ("127.0.0.1",)),)
    ro_lun = ro.lun(1)
    assert ro_lun is not None and ro_lun.read_only
    assert (ro.tid, ro.incoming, ro.outgoing, ro.sessions) == (2, (), (), ())
    assert ro.initiator_acls == (NODE_A, NODE_B)


def test_parse_empty_and_lists() -> None:
    assert tgt_show.parse_targets((RECORDED / "tgtadm_target_show_none.txt").read_text()) == []
    assert tgt_show.parse_accounts(ACCOUNTS) == ["target-1", "node-a"]
    assert tgt_show.parse_accounts(NO_ACCOUNTS) == []
    assert tgt_show.parse_portals(PORTALS) == ["127.0.0.1:3260"]


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize("name", [RW, "iqn.2026-11.io.example:node-a", "iqn.1993-08.org.debian:01:5a2ab8e7c1",
                                  "eui.02004567A425678D", "naa.52004567BA64678D",
                                  "naa.62004567BA64678D0123456789ABCDEF", "iqn.2026-11.io.basalt"])
def test_valid_names(name: str) -> None:
    assert check_iqn(name) == name


@pytest.mark.parametrize("name", ["", "-iqn.2026-11.io.x:a", "iqn.2026-11.io.Example:a", "iqn.2026-11.io.x:a b",
                                  "iqn.26-11.io.x:a", "iqn.2026-00.io.x:a", "iqn.2026-11.io.x:a_b", "ALL",
                                  "eui.02004567a425678d", "naa.1234", "iqn.2026-11.io.x:" + "a" * 220,
                                  "iqn.2026-11.-io.x:a", "iqn.2026-11..io:a"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_iqn(name)


def test_target_iqn_and_serial() -> None:
    assert target_iqn_for("iqn.2026-11.io.basalt", "pvc-5b1fd0c2") == RW
    odd = target_iqn_for("iqn.2026-11.io.basalt", "Vol_X")
    assert odd.startswith("iqn.2026-11.io.basalt:vol-x-") and odd != target_iqn_for("iqn.2026-11.io.basalt", "vol-x")
    long = target_iqn_for("iqn.2026-11.io.basalt", "v" * 400)
    assert len(long.encode()) <= 223 and check_iqn(long) == long
    assert target_iqn_for("iqn.2026-11.io.basalt", "v" * 400) != target_iqn_for("iqn.2026-11.io.basalt", "v" * 401)
    with pytest.raises(InvalidRequest):
        target_iqn_for("iqn.2026-11.io.basalt:x", "pvc-1")
    serial = serial_for("pvc-5b1fd0c2")
    assert len(serial) == 16 and int(serial, 16) >= 0 and serial != serial_for("pvc-5b1fd0c3")


def test_chap_hides_secrets_and_validates() -> None:
    assert "secret" not in repr(CHAP_A) and "secret" not in str(CHAP_A)
    assert CHAP_A.secrets() == ("secret-a-0123456", "secret-t-6543210")
    for bad in (("", "x" * 12), ("-u", "x" * 12), ("u", "has space12"), ("u", "x" * 256), ("u", "has#hash1234")):
        with pytest.raises(InvalidRequest):
            Chap(*bad)
    with pytest.raises(InvalidRequest):
        Chap("u", "secret-a-0123456", "m", None)
    with pytest.raises(InvalidRequest):
        Chap("u", "same-secret-12", "m", "same-secret-12")


# -- commands ------------------------------------------------------------------------


def test_ensure_export_new(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    new = "iqn.2026-11.io.basalt:pvc-new"
    runner = tgt_script([
        ok(SHOW_T, SHOW),  # does it exist? tids in use: 1, 2
        *made_export("3", new, "/dev/loop9", "scsi_sn=0123abcd,readonly=1"),
    ])
    assert backend.ensure_export(new, "/dev/loop9", "0123abcd", True) is True
    assert runner.secrets == [[]] * 5
    lun = {"device": "/dev/loop9", "serial": "0123abcd", "read_only": True}
    assert saved(backend) == {new: {"grants": {}, "lun": lun}}
    assert stat.S_IMODE(Path(backend.conf_path).stat().st_mode) == 0o600


def test_ensure_export_tid_race(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    new = "iqn.2026-11.io.basalt:pvc-new"
    tgt_script([
        ok(SHOW_T, ""),
        err([*C, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", new],
            "--mode target --op new --tid 1 --targetname iqn.2026-11.io.basalt:pvc-5b1fd0c2"),
        ok(SHOW_T, SHOW),  # someone else took tid 1 (another target): listed again
        *made_export("3", new, "/dev/loop9", "scsi_sn=0123abcd,readonly=0"),
    ])
    assert backend.ensure_export(new, "/dev/loop9", "0123abcd", False) is True


def test_ensure_export_existing_is_a_no_op(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    tgt_script([ok(SHOW_T, SHOW)])
    assert backend.ensure_export(RO, "/dev/loop7", "7a3e9d41e5f60718", True) is False


@pytest.mark.parametrize("device,serial,read_only", [("/dev/loop8", "7a3e9d41e5f60718", True),
                                                     ("/dev/loop7", "ffff", True),
                                                     ("/dev/loop7", "7a3e9d41e5f60718", False)])
def test_ensure_export_conflict(tgt_script: Any, backend: tgt.TgtBackend, device: str, serial: str,
                                read_only: bool) -> None:
    tgt_script([ok(SHOW_T, SHOW)])
    with pytest.raises(Conflict):
        backend.ensure_export(RO, device, serial, read_only)


@pytest.mark.parametrize("device,serial,iqn", [("-o", "abc", RW), ("/dev/loop7", "a b", RW),
                                               ("/dev/loop7", "abc", "iqn.2026-11.io.basalt:A")])
def test_ensure_export_rejects_bad_input(tgt_script: Any, backend: tgt.TgtBackend, device: str, serial: str,
                                         iqn: str) -> None:
    tgt_script([])
    with pytest.raises(InvalidRequest):
        backend.ensure_export(iqn, device, serial, False)


def test_ensure_grant_with_mutual_chap(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {}})
    runner = tgt_script([
        ok(SHOW_T, SHOW),
        ok([*C, "--mode", "account", "--op", "new", "--user", "node-c", "--password", "secret-c-0123456"]),
        ok([*C, "--mode", "account", "--op", "bind", "--tid", "2", "--user", "node-c"]),
        ok([*C, "--mode", "account", "--op", "new", "--user", "target-2", "--password", "secret-t-6543210"]),
        ok([*C, "--mode", "account", "--op", "bind", "--tid", "2", "--user", "target-2", "--outgoing"]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", "iqn.2026-11.io.example:node-c"]),
    ])
    # RO already grants node-a and node-b without CHAP in the recording, but the record says it grants nobody
    chap = Chap("node-c", "secret-c-0123456", "target-2", "secret-t-6543210")
    assert backend.ensure_grant(RO, "iqn.2026-11.io.example:node-c", chap) is True
    assert runner.secrets[1] == ["secret-c-0123456"] and runner.secrets[3] == ["secret-t-6543210"]
    grants = saved(backend)[RO]["grants"]
    assert grants["iqn.2026-11.io.example:node-c"]["password"] == "secret-c-0123456"


def test_ensure_grant_existing_is_a_no_op(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RW: {NODE_A: CHAP_A}})
    tgt_script([ok(SHOW_T, SHOW)])  # both accounts show as bound: nothing to create
    assert backend.ensure_grant(RW, NODE_A, CHAP_A) is False


def test_ensure_grant_conflicts(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RW: {NODE_A: CHAP_A}, RO: {NODE_A: None}})
    tgt_script([ok(SHOW_T, SHOW)])
    with pytest.raises(Conflict, match="CHAP per target"):
        backend.ensure_grant(RW, NODE_B, None)
    tgt_script([ok(SHOW_T, SHOW)])
    with pytest.raises(Conflict, match="one mutual CHAP user"):
        backend.ensure_grant(RW, NODE_B, Chap("node-b", "secret-b-0123456", "other", "secret-o-0123456"))
    old_record(backend, {RW: {NODE_A: CHAP_A}, RO: {}})
    tgt_script([ok(SHOW_T, SHOW), err(NEW_NODE_A_OTHER, ACCOUNT_EXISTS)])
    with pytest.raises(Conflict, match="in use on"):  # node-a's account, another secret, another grant
        backend.ensure_grant(RO, NODE_B, Chap("node-a", "another-secret-1"))
    assert saved(backend)[RO]["grants"] == {}, "rolled back"
    tgt_script([ok(SHOW_T, "")])
    with pytest.raises(NotFound):
        backend.ensure_grant("iqn.2026-11.io.basalt:gone", NODE_A, None)


def test_foreign_account_is_not_taken_over(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {}})
    tgt_script([ok(SHOW_T, SHOW),
                err([*C, "--mode", "account", "--op", "new", "--user", "admin", "--password", "secret-x-0123456"],
                    ACCOUNT_EXISTS)])
    with pytest.raises(Conflict, match="not created by basalt"):
        backend.ensure_grant(RO, "iqn.2026-11.io.example:node-c", Chap("admin", "secret-x-0123456"))


def test_revoke_grant_unbinds_deletes_account_and_closes_sessions(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RW: {NODE_A: CHAP_A}})
    tgt_script([
        ok(SHOW_T, SHOW),
        ok([*C, "--mode", "target", "--op", "unbind", "--tid", "1", "--initiator-name", NODE_A]),
        ok([*C, "--mode", "account", "--op", "unbind", "--tid", "1", "--user", "node-a"]),
        ok([*C, "--mode", "account", "--op", "unbind", "--tid", "1", "--user", "target-1", "--outgoing"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "node-a"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "target-1"]),
        ok([*C, "--mode", "conn", "--op", "delete", "--tid", "1", "--sid", "1", "--cid", "0"]),
    ])
    assert backend.revoke_grant(RW, NODE_A) is True
    assert saved(backend)[RW]["grants"] == {}


def test_revoke_grant_tolerates_vanished_session(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {NODE_A: None, NODE_B: None}})
    shown = SHOW.replace("Target 2: " + RO + "\n    System information:\n        Driver: iscsi\n        State: ready\n"
                         "    I_T nexus information:\n",
                         "Target 2: " + RO + "\n    System information:\n        Driver: iscsi\n        State: ready\n"
                         "    I_T nexus information:\n        I_T nexus: 99\n            Initiator: " + NODE_B +
                         " alias: none\n            Connection: 0\n                IP Address: 127.0.0.1\n")
    tgt_script([
        ok(SHOW_T, shown),
        ok([*C, "--mode", "target", "--op", "unbind", "--tid", "2", "--initiator-name", NODE_B]),
        err([*C, "--mode", "conn", "--op", "delete", "--tid", "2", "--sid", "99", "--cid", "0"],
            "--mode conn --op delete --tid 1 --sid 99 --cid 0"),
    ])
    assert backend.revoke_grant(RO, NODE_B) is True
    tgt_script([ok(SHOW_T, SHOW.replace("        " + NODE_B + "\n", ""))])
    assert backend.revoke_grant(RO, NODE_B) is False


def test_remove_export(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {NODE_A: None, NODE_B: None}})
    tgt_script([ok(SHOW_T, SHOW)])
    with pytest.raises(InUse):
        backend.remove_export(RO)
    old_record(backend, {RO: {}})
    bare = SHOW.replace("        " + NODE_A + "\n        " + NODE_B + "\n", "")
    tgt_script([ok(SHOW_T, bare), ok([*C, "--mode", "target", "--op", "delete", "--force", "--tid", "2"])])
    assert backend.remove_export(RO) is True
    assert saved(backend) == {}
    tgt_script([ok(SHOW_T, "")])
    assert backend.remove_export(RO) is False


def test_unexpected_errors_propagate(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {}})
    tgt_script([
        ok(SHOW_T, ""),
        ok([*C, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", RO]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "255.255.255.255/32"]),
        err([*C, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", "/nonexistent",
             "--bstype", "rdwr"], "--mode logicalunit --op new --tid 1 --lun 2 --backing-store /nonexistent"),
    ])
    with pytest.raises(CommandFailed, match="invalid request"):
        backend.ensure_export(RO, "/nonexistent", "abc", False)


def test_exports_and_persist(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RW: {NODE_A: CHAP_A}, RO: {NODE_A: None, NODE_B: None}})
    tgt_script([ok(SHOW_T, SHOW)])
    assert backend.exports() == [
        Export(RW, 1, "5b1fd0c2a1b2c3d4", "/dev/loop7", False, (Grant(NODE_A, CHAP_A),)),
        Export(RO, 1, "7a3e9d41e5f60718", "/dev/loop7", True, (Grant(NODE_A, None), Grant(NODE_B, None))),
    ]
    tgt_script([ok(SHOW_T, SHOW)])
    backend.persist()
    conf = Path(backend.conf_path)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert _without_record(conf.read_text()) == (RECORDED / "tgt_basalt.conf").read_text()
    # the record's LUNs came from tgtd (a record of version 1 has none): the next call needs no listing for them
    assert saved(backend)[RW]["lun"] == {"device": "/dev/loop7", "serial": "5b1fd0c2a1b2c3d4", "read_only": False}


def test_persist_refuses_to_drop_unknown_chap(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RW: {NODE_A: None}})  # the record lost node-a's secret
    tgt_script([ok(SHOW_T, SHOW)])
    with pytest.raises(Precondition, match="node-a"):
        backend.persist()
    assert not Path(backend.conf_path).exists()


def test_ensure_export_removes_stray_address_acl(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    shown = SHOW.replace("        255.255.255.255/32\n        " + NODE_A + "\n        " + NODE_B,
                         "        ALL\n        " + NODE_A + "\n        " + NODE_B)
    tgt_script([ok(SHOW_T, shown),
                ok([*C, "--mode", "target", "--op", "unbind", "--tid", "2", "--initiator-address", "ALL"]),
                ok([*C, "--mode", "target", "--op", "bind", "--tid", "2", "--initiator-address",
                    tgt_config.NO_ADDRESS])])
    assert backend.ensure_export(RO, "/dev/loop7", "7a3e9d41e5f60718", True) is True


def test_exports_skip_foreign_targets(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    old_record(backend, {RO: {}})
    tgt_script([ok(SHOW_T, SHOW)])
    assert [e.target_iqn for e in backend.exports()] == [RO]
    by_prefix = tgt.TgtBackend(control_port=7, conf_path=backend.conf_path, record_path=backend.record_path,
                               base_iqn="iqn.2026-11.io.basalt")
    tgt_script([ok(SHOW_T, SHOW)])
    assert [e.target_iqn for e in by_prefix.exports()] == [RW, RO]


def test_system_daemon_has_no_control_port(tgt_script: Any, tmp_path: Path) -> None:
    system = tgt.TgtBackend(conf_path=str(tmp_path / "c"), record_path=str(tmp_path / "r"))
    tgt_script([ok(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"], "")])
    assert system.targets() == [] and system.lun == 1


def test_render_rejects_unsafe_values() -> None:
    with pytest.raises(InvalidRequest):
        tgt_config.render_config([Export(RW, 1, "abc", "/dev/with space", False)])


# -- one listing, one durable write per call -----------------------------------


def _writes(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The paths write_atomic writes, in order (the config file, which carries the record)."""
    written: List[str] = []
    real = tgt.write_atomic

    def counting(path: str, data: bytes, mode: int = 0o600) -> None:
        written.append(path)
        real(path, data, mode)
    monkeypatch.setattr(tgt, "write_atomic", counting)
    return written


def test_publish_lists_once_and_writes_once(tgt_script: Any, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ControllerPublish's backend part: one listing, then only the seven commands that change something;
    the grant (with its secret) and the target's LUN on disk, in the config file, before the account exists;
    one write for the record and the config in all."""
    backend = tgt.TgtBackend(control_port=7, conf_path=str(tmp_path / "basalt.conf"),
                             record_path=str(tmp_path / "grants.json"), base_iqn="iqn.2026-11.io.basalt")
    new, chap = "iqn.2026-11.io.basalt:pvc-new", Chap("node-c", "secret-c-0123456")
    written = _writes(monkeypatch)
    order: List[str] = []
    runner = tgt_script([
        ok(SHOW_T, ""),
        *made_export("1", new, "/dev/loop9", "scsi_sn=0123abcd,readonly=0"),
        ok([*C, "--mode", "account", "--op", "new", "--user", "node-c", "--password", "secret-c-0123456"]),
        ok([*C, "--mode", "account", "--op", "bind", "--tid", "1", "--user", "node-c"]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", NODE_B]),
    ])
    real_run = runner.__call__

    def run(argv: List[str], **kwargs: Any) -> Any:
        order.append("account new" if "--password" in argv else "tgtadm")
        if "--password" in argv:
            assert written == [backend.conf_path], "the secret must be recorded before the account exists"
            assert "incominguser node-c secret-c-0123456" in Path(backend.conf_path).read_text()
        return real_run(argv, **kwargs)
    monkeypatch.setattr(tgt, "run", run)
    with backend.transaction():
        assert backend.ensure_export(new, "/dev/loop9", "0123abcd", False) is True
        assert backend.ensure_grant(new, NODE_B, chap) is True
        backend.persist()
    assert runner.script == [] and len(order) == 8
    assert written == [backend.conf_path]
    conf = Path(backend.conf_path).read_text()
    assert f"<target {new}>" in conf and "incominguser node-c secret-c-0123456" in conf
    assert f"initiator-name {NODE_B}" in conf and "<backing-store /dev/loop9>" in conf


def test_withdrawing_the_last_grant_deletes_the_target_outright(tgt_script: Any, backend: tgt.TgtBackend,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """ControllerUnpublish of the last grant: no unbinds before a delete that drops them anyway; the
    orphaned accounts go; the config file with the record is written once, after the commands."""
    old_record(backend, {RW: {NODE_A: CHAP_A}, RO: {NODE_A: None, NODE_B: None}})
    written = _writes(monkeypatch)
    tgt_script([
        ok(SHOW_T, SHOW),
        ok([*C, "--mode", "target", "--op", "delete", "--force", "--tid", "1"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "node-a"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "target-1"]),
    ])
    with backend.transaction():
        assert backend.withdraw(RW, NODE_A) == (True, True)
        backend.persist()
    assert written == [backend.conf_path]
    assert saved(backend) == {RO: {"grants": {NODE_A: None, NODE_B: None},
                                   "lun": {"device": "/dev/loop7", "serial": "7a3e9d41e5f60718", "read_only": True}}}
    assert f"<target {RW}>" not in Path(backend.conf_path).read_text()
    # another grant remains: a plain revoke, the target stays
    tgt_script([ok(SHOW_T, SHOW), ok([*C, "--mode", "target", "--op", "unbind", "--tid", "2",
                                      "--initiator-name", NODE_B])])
    assert backend.withdraw(RO, NODE_B) == (True, False)
    # gone already (the target service restarted empty): nothing to do, but the target counts as gone
    tgt_script([ok(SHOW_T, "")])
    assert backend.withdraw(RW, NODE_A) == (False, True)


def test_a_half_made_target_is_left_out_of_the_config_file() -> None:
    made = Export(RW, 1, "5b1fd0c2a1b2c3d4", "/dev/loop7", False, (Grant(NODE_A, None),))
    half = Export(RO, 1, "", "", False)  # a crash between target new and logicalunit new
    text = tgt_config.render_config([made, half])
    assert f"<target {RW}>" in text and RO not in text


def test_ping_asks_tgtd_without_waiting_for_the_transaction(tgt_script: Any, backend: tgt.TgtBackend) -> None:
    """Probe's check: a publish or a reconciliation holding the target service must not make Probe wait."""
    tgt_script([ok([*C, "--mode", "system", "--op", "show"], "System:\n    State: ready\n")])
    answered = threading.Event()

    def probe() -> None:
        backend.ping()
        answered.set()
    with backend.transaction():  # held by another call meanwhile
        thread = threading.Thread(target=probe)
        thread.start()
        assert answered.wait(10)
    thread.join(10)


def test_the_record_line_survives_tgt_admins_parser() -> None:
    """tgt-admin's Config::General reads /* and */ as C comments even in a '#' line; a CHAP secret may hold
    them, so the record line carries none (base64url) and reads back as written."""
    chap = Chap("node-a", "se/*cret-0123*/4")
    record: tgt_config.Record = {RW: {"grants": {NODE_A: tgt_config.chap_to_json(chap)},
                                      "lun": {"device": "/dev/loop7", "serial": "abc", "read_only": False}}}
    doc = tgt_config.record_doc(record)
    exported = tgt_config.recorded_exports(record, lambda iqn: None)
    text = tgt_config.render_config(exported, doc)
    line = next(line for line in text.splitlines() if line.startswith(tgt_config.RECORD_MARK))
    assert not any(c in line[len(tgt_config.RECORD_MARK):] for c in "/*#\"'")
    assert tgt_config.record_in(text) == doc
    assert exported == [Export(RW, 1, "abc", "/dev/loop7", False, (Grant(NODE_A, chap),))]


def test_a_damaged_record_line_refuses_every_call(backend: tgt.TgtBackend) -> None:
    Path(backend.conf_path).write_text(tgt_config.RECORD_MARK + "not base64 at all!\n")
    with pytest.raises(Precondition, match="grant record"):
        backend.saved_grants()
