"""TgtBackend against a real tgtd, with libiscsi (ctypes) as the initiator.

Measured behaviour these tests pin down (tgt 1.0.85, libiscsi 1.19):
wrong CHAP secret -> "Authentication failure(513)"; initiator not in the
ACL -> "Target not found(515)"; WRITE to a readonly=1 LUN -> CHECK CONDITION,
sense key DATA PROTECT, ASC/ASCQ 0x2700 WRITE PROTECTED.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from libiscsi_client import (
    ASCQ_WRITE_PROTECTED,
    SCSI_STATUS_CHECK_CONDITION,
    SENSE_KEY_DATA_PROTECTION,
    IscsiError,
    Session,
)
from tgtd_testlib import Loop, Tgtd, accounts, load_config, start_tgtd

from basalt_core import tgt
from basalt_core.errors import Conflict, InUse
from basalt_core.iscsi_target import Chap, serial_for, target_iqn_for
from basalt_core.tgt_config import NO_ADDRESS

BASE = "iqn.2026-11.io.basalt.test"
NODE_A = "iqn.2026-11.io.example:node-a"
NODE_B = "iqn.2026-11.io.example:node-b"
CHAP_A = Chap("node-a", "secret-a-0123456")
BLOCK = 512


def _export(backend: tgt.TgtBackend, loop: Loop, name: str = "pvc-1", read_only: bool = False) -> str:
    iqn = target_iqn_for(BASE, name)
    assert backend.ensure_export(iqn, loop.device, serial_for(name), read_only) is True
    assert backend.ensure_export(iqn, loop.device, serial_for(name), read_only) is False
    return iqn


def test_chap_grant_write_read_and_refusals(tgtd: Tgtd, loop: Loop, tmp_path: Path) -> None:
    backend = tgtd.backend(tmp_path)
    iqn = _export(backend, loop)
    # exported but nobody granted: refused
    with pytest.raises(IscsiError, match=r"Target not found\(515\)"):
        Session(tgtd.portal, iqn, NODE_A)
    assert backend.ensure_grant(iqn, NODE_A, CHAP_A) is True
    assert backend.ensure_grant(iqn, NODE_A, CHAP_A) is False

    payload = os.urandom(4 * BLOCK)
    with Session(tgtd.portal, iqn, NODE_A, user=CHAP_A.user, password=CHAP_A.password) as session:
        assert session.write(8, payload).good
        result = session.read(8, len(payload))
        assert result.good and result.data == payload
    with open(loop.backing_file, "rb") as handle:
        handle.seek(8 * BLOCK)
        assert handle.read(len(payload)) == payload, "the bytes must land in the backing file"

    with pytest.raises(IscsiError, match=r"Authentication failure\(513\)"):
        Session(tgtd.portal, iqn, NODE_A, user=CHAP_A.user, password="wrong-secret-000")
    with pytest.raises(IscsiError, match=r"Authentication failure\(513\)"):
        Session(tgtd.portal, iqn, NODE_A)  # no CHAP at all
    with pytest.raises(IscsiError, match=r"Target not found\(515\)"):
        Session(tgtd.portal, iqn, NODE_B, user=CHAP_A.user, password=CHAP_A.password)

    [export] = backend.exports()
    assert (export.target_iqn, export.lun, export.serial, export.read_only) == (iqn, 1, serial_for("pvc-1"), False)
    assert export.device == loop.device
    assert [g.initiator_iqn for g in export.grants] == [NODE_A] and export.grants[0].chap == CHAP_A

    # a session that stays open is closed by revoke
    held = Session(tgtd.portal, iqn, NODE_A, user=CHAP_A.user, password=CHAP_A.password)
    try:
        assert backend.ensure_export(iqn, loop.device, serial_for("pvc-1"), False) is False
        with pytest.raises(InUse):
            backend.remove_export(iqn)
        assert backend.revoke_grant(iqn, NODE_A) is True
        assert not held.read(0, BLOCK).good, "the revoked node's session must be closed"
    finally:
        held.close(logout=False)
    assert backend.revoke_grant(iqn, NODE_A) is False
    with pytest.raises(IscsiError, match=r"Target not found\(515\)"):
        Session(tgtd.portal, iqn, NODE_A, user=CHAP_A.user, password=CHAP_A.password)
    assert "node-a" not in accounts(tgtd.control_port), "an account no grant uses is deleted"

    assert backend.remove_export(iqn) is True
    assert backend.remove_export(iqn) is False
    assert backend.targets() == [] and backend.exports() == []


def test_read_only_export_refuses_writes(tgtd: Tgtd, loop: Loop, tmp_path: Path) -> None:
    with open(loop.backing_file, "r+b") as handle:
        handle.write(b"R" * BLOCK)
    backend = tgtd.backend(tmp_path)
    iqn = _export(backend, loop, "pvc-ro", read_only=True)
    backend.ensure_grant(iqn, NODE_A, None)
    with Session(tgtd.portal, iqn, NODE_A) as session:
        result = session.write(0, b"W" * BLOCK)
        assert result.status == SCSI_STATUS_CHECK_CONDITION
        assert (result.sense_key, result.ascq) == (SENSE_KEY_DATA_PROTECTION, ASCQ_WRITE_PROTECTED)
        read = session.read(0, BLOCK)
        assert read.good and read.data == b"R" * BLOCK
    with pytest.raises(Conflict):
        backend.ensure_export(iqn, loop.device, serial_for("pvc-ro"), False)
    with pytest.raises(Conflict):  # tgt CHAP is per target: no mixing with a CHAP-less grant
        backend.ensure_grant(iqn, NODE_B, CHAP_A)
    assert backend.revoke_grant(iqn, NODE_A) is True
    assert backend.remove_export(iqn) is True


def test_mutual_chap(tgtd: Tgtd, loop: Loop, tmp_path: Path) -> None:
    backend = tgtd.backend(tmp_path)
    iqn = _export(backend, loop, "pvc-mutual")
    chap = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
    assert backend.ensure_grant(iqn, NODE_A, chap) is True
    with Session(tgtd.portal, iqn, NODE_A, user=chap.user, password=chap.password,
                 mutual_user=chap.mutual_user, mutual_password=chap.mutual_password) as session:
        assert session.read(0, BLOCK).good
    with pytest.raises(IscsiError, match="Invalid CHAP_R response from the target"):
        Session(tgtd.portal, iqn, NODE_A, user=chap.user, password=chap.password,
                mutual_user="target-1", mutual_password="not-the-secret-1")
    # a new initiator secret for the same grant replaces the account's password
    rotated = Chap("node-a", "secret-a-rotated", "target-1", "secret-t-6543210")
    assert backend.ensure_grant(iqn, NODE_A, rotated) is True
    with pytest.raises(IscsiError, match=r"Authentication failure\(513\)"):
        Session(tgtd.portal, iqn, NODE_A, user=chap.user, password=chap.password)
    with Session(tgtd.portal, iqn, NODE_A, user=rotated.user, password=rotated.password) as session:
        assert session.read(0, BLOCK).good
    backend.revoke_grant(iqn, NODE_A)
    assert accounts(tgtd.control_port) == []
    backend.remove_export(iqn)


def test_persist_reloads_into_a_fresh_tgtd(tgtd: Tgtd, loop: Loop, tmp_path: Path) -> None:
    backend = tgtd.backend(tmp_path)
    rw = _export(backend, loop, "pvc-rw")
    ro = _export(backend, loop, "pvc-ro", read_only=True)
    chap = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
    backend.ensure_grant(rw, NODE_A, chap)
    backend.ensure_grant(ro, NODE_A, None)
    backend.ensure_grant(ro, NODE_B, None)
    backend.persist()
    conf = Path(backend.conf_path)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert not Path(backend.record_path).exists(), "the grant record is in the config file"
    text = conf.read_text()
    assert "initiator-address ALL" not in text and f"initiator-address {NO_ADDRESS}" in text

    fresh = start_tgtd()
    try:
        # -f: the live tgtd holds the loop device open, which tgt-admin's lsof check would skip
        load_config(str(conf), fresh.control_port, force=True)
        # the config file alone restores everything, CHAP secrets included: it carries the grant record
        other = tgt.TgtBackend(control_port=fresh.control_port, conf_path=str(conf),
                               record_path=str(tmp_path / "no-such-record.json"))

        def state(b: tgt.TgtBackend) -> object:
            return sorted((e.target_iqn, e.lun, e.serial, e.device, e.read_only, e.grants) for e in b.exports())
        assert state(other) == state(backend)
        live = {t.iqn: t for t in backend.targets()}
        for target in other.targets():
            assert (target.acls, target.incoming, target.outgoing) == (
                live[target.iqn].acls, live[target.iqn].incoming, live[target.iqn].outgoing)
        # and the restored target enforces the same rules
        with Session(fresh.portal, rw, NODE_A, user=chap.user, password=chap.password,
                     mutual_user=chap.mutual_user, mutual_password=chap.mutual_password) as session:
            assert session.read(0, BLOCK).good
        with pytest.raises(IscsiError, match=r"Target not found\(515\)"):
            Session(fresh.portal, rw, NODE_B, user=chap.user, password=chap.password)
        with Session(fresh.portal, ro, NODE_B) as session:
            assert session.write(0, b"x" * BLOCK).sense_key == SENSE_KEY_DATA_PROTECTION
    finally:
        fresh.stop()
    for iqn in (rw, ro):
        for node in (NODE_A, NODE_B):
            backend.revoke_grant(iqn, node)
        backend.remove_export(iqn)
    backend.persist()
    assert "<target" not in conf.read_text()
