"""LIO's saved configuration, one export at a time (basalt_core.lio_config, LioBackend.persist), against the fake
rtslib_fb of lio_testlib (no configfs here: tests/vm's check_agent_iscsi.py restores a saved export for real
with ``targetctl restore``)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

import pytest
from lio_testlib import CHAP_A, SERIAL, A, B, T, make_fake, taken

from basalt_core import exports, lio, lio_config
from basalt_core.iscsi_target import Chap

FOREIGN_SO = {"plugin": "fileio", "name": "admin-disk", "dev": "/srv/disk.img", "attributes": {"block_size": 512}}
FOREIGN_TARGET = {"wwn": "iqn.2003-01.org.linux-iscsi.admin:sn.1", "fabric": "iscsi",
                  "tpgs": [{"tag": 1, "luns": [{"index": 0, "storage_object": "/backstores/fileio/admin-disk"}]}]}
FABRICS = [{"name": "iscsi", "discovery_enable_auth": True, "discovery_userid": "d"}]


@pytest.fixture
def rts() -> SimpleNamespace:
    return make_fake()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A saved configuration with the host's own target and an old entry of T (rtslib's whole form)."""
    path = tmp_path / "saveconfig.json"
    path.write_text(json.dumps({
        "fabric_modules": FABRICS,
        "storage_objects": [FOREIGN_SO, {"plugin": "block", "name": "basalt-" + SERIAL, "dev": "/dev/old"}],
        "targets": [FOREIGN_TARGET, {"wwn": T, "fabric": "iscsi", "tpgs": [
            {"tag": 1, "luns": [{"index": 0, "storage_object": f"/backstores/block/basalt-{SERIAL}"}]}]}],
    }))
    return path


def _backend(rts: SimpleNamespace, saved: Path) -> lio.LioBackend:
    return lio.LioBackend(portals=("192.0.2.10:3260",), save_file=str(saved), lock_path=str(saved) + ".lock",
                          rtslib=rts)


def _doc(saved: Path) -> Dict[str, Any]:
    return dict(json.loads(saved.read_text()))


def test_a_save_replaces_the_changed_exports_entries_and_keeps_the_rest(rts: SimpleNamespace, saved: Path) -> None:
    backend = _backend(rts, saved)
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    backend.ensure_grant(T, A, CHAP_A)
    taken(rts)
    backend.persist()
    assert taken(rts) == []  # no rtslib save: nothing dumped
    doc = _doc(saved)
    assert doc["fabric_modules"] == FABRICS
    assert doc["storage_objects"] == [FOREIGN_SO, {"plugin": "block", "name": "basalt-" + SERIAL,
                                                   "dev": "/dev/vg/pvc-1", "wwn": SERIAL, "readonly": False,
                                                   "write_back": False}]
    assert doc["targets"][0] == FOREIGN_TARGET
    assert doc["targets"][1] == {"wwn": T, "fabric": "iscsi", "tpgs": [{
        "tag": 1, "enable": True,
        "attributes": {"generate_node_acls": "0", "demo_mode_write_protect": "1", "authentication": "1"},
        "portals": [{"ip_address": "192.0.2.10", "port": 3260}],
        "luns": [{"index": 0, "storage_object": f"/backstores/block/basalt-{SERIAL}"}],
        "node_acls": [{"node_wwn": A, "chap_userid": "node-a", "chap_password": "secret-a-0123456",
                       "chap_mutual_userid": "target-1", "chap_mutual_password": "secret-t-6543210",
                       "mapped_luns": [{"index": 0, "tpg_lun": 0, "write_protect": False}]}]}]}
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600  # CHAP secrets
    assert [p.name for p in saved.parent.iterdir() if p.name.startswith(".tmp-")] == []

    assert backend.withdraw(T, A) == (True, True)
    backend.persist()
    assert _doc(saved) == {"fabric_modules": FABRICS, "storage_objects": [FOREIGN_SO], "targets": [FOREIGN_TARGET]}


def test_a_second_grant_is_saved_beside_the_first(rts: SimpleNamespace, saved: Path) -> None:
    backend = _backend(rts, saved)
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, True)
    backend.ensure_grant(T, B, Chap("node-b", "secret-b-0123456"))
    backend.ensure_grant(T, A, Chap("node-a", "secret-a-0123456"))
    backend.persist()
    [tpg] = _doc(saved)["targets"][1]["tpgs"]
    assert [(acl["node_wwn"], acl["chap_userid"], acl["mapped_luns"][0]["write_protect"])
            for acl in tpg["node_acls"]] == [(A, "node-a", True), (B, "node-b", True)]
    assert "chap_mutual_userid" not in tpg["node_acls"][0]
    assert backend.withdraw(T, A) == (True, False)
    backend.persist()
    [tpg] = _doc(saved)["targets"][1]["tpgs"]
    assert [acl["node_wwn"] for acl in tpg["node_acls"]] == [B]


@pytest.mark.parametrize("content", [None, "{not json", "[]", '{"targets": {}}'])
def test_without_a_readable_saved_file_rtslib_saves_everything(rts: SimpleNamespace, tmp_path: Path,
                                                               content: Any) -> None:
    saved = tmp_path / "saveconfig.json"
    if content is not None:
        saved.write_text(content)
    backend = _backend(rts, saved)
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    taken(rts)
    backend.persist()
    assert taken(rts) == [("save_to_file", str(saved))]


def test_a_save_with_no_change_seen_is_rtslibs_whole_save(rts: SimpleNamespace, saved: Path) -> None:
    _backend(rts, saved).persist()
    assert taken(rts) == [("save_to_file", str(saved))]


def test_a_crash_between_a_change_and_its_save_is_saved_by_the_retry(rts: SimpleNamespace, saved: Path) -> None:
    """The process that changed LIO died before its save (its memory of the change with it): the retry finds
    LIO as wanted but the file otherwise, reports a change and saves; a second retry finds both agree."""
    first = _backend(rts, saved)
    first.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    first.ensure_grant(T, A, CHAP_A)
    retry = _backend(rts, saved)  # a new process: nothing unsaved in memory
    assert retry.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False) is False
    assert retry.ensure_grant(T, A, CHAP_A) is True
    retry.persist()
    assert _doc(saved)["targets"][1]["tpgs"][0]["node_acls"][0]["node_wwn"] == A
    assert _backend(rts, saved).ensure_grant(T, A, CHAP_A) is False

    first.withdraw(T, A)  # and dies before its save
    retry = _backend(rts, saved)
    assert retry.withdraw(T, A) == (True, True)
    retry.persist()
    assert [t["wwn"] for t in _doc(saved)["targets"]] == [FOREIGN_TARGET["wwn"]]
    assert _backend(rts, saved).withdraw(T, A) == (False, True)


def test_a_failed_save_is_tried_again_by_the_next(rts: SimpleNamespace, saved: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(rts, saved)
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    real_write = lio_config.write

    def full_disk(path: str, document: Dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(lio_config, "write", full_disk)
    with pytest.raises(OSError):
        backend.persist()
    monkeypatch.setattr(lio_config, "write", real_write)
    backend.persist()
    assert [t["wwn"] for t in _doc(saved)["targets"]] == [FOREIGN_TARGET["wwn"], T]


def test_interrupted_saves_are_swept(rts: SimpleNamespace, saved: Path) -> None:
    leftover = saved.parent / f".tmp-{saved.name}-abc123"
    leftover.write_text("{}")
    other = saved.parent / ".tmp-other.json-abc123"
    other.write_text("{}")
    assert _backend(rts, saved).sweep_interrupted_writes() == [str(leftover)]
    assert not leftover.exists() and other.exists()


def test_credentials_set_by_hand_are_saved_as_they_are(rts: SimpleNamespace, saved: Path) -> None:
    """An ACL on a Basalt target given a secret Basalt itself would refuse (a blank in it) is saved as LIO
    holds it, as rtslib's dump would: the save never fails on what it only copies."""
    backend = _backend(rts, saved)
    backend.ensure_export(T, "/dev/vg/pvc-1", SERIAL, False)
    backend.ensure_grant(T, A, CHAP_A)
    backend.persist()
    [target] = rts.FabricModule("iscsi").targets
    target.tpgs[0].node_acls[0].chap_password = "by hand secret"
    assert backend.ensure_grant(T, B, Chap("node-b", "secret-b-0123456")) is True
    backend.persist()
    acls = _doc(saved)["targets"][1]["tpgs"][0]["node_acls"]
    assert [(acl["node_wwn"], acl["chap_password"]) for acl in acls] == [(A, "by hand secret"),
                                                                         (B, "secret-b-0123456")]


class _Pool:
    def attach(self, volume: Any) -> str:
        return "/dev/vg/" + volume.id


def test_a_second_run_after_rtslibs_whole_save_changes_nothing(rts: SimpleNamespace, tmp_path: Path) -> None:
    """The iscsi_export module twice on a host with no saved file yet: the first run's save is rtslib's whole
    one (its own form: every attribute, numbers, aliases); the second run finds the export saved, changes
    nothing and writes nothing (Ansible's changed: false)."""
    saved = tmp_path / "saveconfig.json"
    backend = _backend(rts, saved)
    settings = exports.ExportSettings("iqn.2026-11.io.basalt", ("192.0.2.10:3260",))
    volume = SimpleNamespace(id="pvc-1")
    assert exports.ensure_exported(_Pool(), backend, settings, volume, A, CHAP_A, False)[1] is True  # type: ignore[arg-type]
    assert ("save_to_file", str(saved)) in taken(rts)
    written = saved.read_text()
    again = _backend(rts, saved)  # the module's second run: another process
    assert exports.ensure_exported(_Pool(), again, settings, volume, A, CHAP_A, False)[1] is False  # type: ignore[arg-type]
    assert taken(rts) == [] and saved.read_text() == written

    [target] = _doc(saved)["targets"]
    target["tpgs"][0]["node_acls"] = []  # the file lost the grant (a crash before its save, say)
    saved.write_text(json.dumps({**_doc(saved), "targets": [target]}))
    assert exports.ensure_exported(_Pool(), _backend(rts, saved), settings, volume, A, CHAP_A, False)[1] is True  # type: ignore[arg-type]
    assert [acl["node_wwn"] for acl in _doc(saved)["targets"][0]["tpgs"][0]["node_acls"]] == [A]
