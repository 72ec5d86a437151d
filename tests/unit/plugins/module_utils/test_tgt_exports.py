"""ControllerPublish / ControllerUnpublish on tgt through basalt_core.exports: what runs beside what.

The volume's device attaches while tgtd is listed and the target made; the publication record is
forgotten while tgtd is listed, and before any change.  Scripted tgtadm (tgt_testlib), a stand-in pool;
every test runs twice (``tgt_transport`` from tgt_wire.py, autouse): through tgtadm and over tgtd's socket.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, List, Optional, cast

import pytest
from tgt_testlib import CHAP_A, NODE_A, RW, SHOW, SHOW_T, C, Call, made_export, ok, old_record, saved
from tgt_wire import tgt_transport  # noqa: F401  # pylint: disable=unused-import

from basalt_core import exports, tgt, tgt_config
from basalt_core.errors import CommandFailed
from basalt_core.iscsi_target import serial_for
from basalt_core.model import Volume

BASE = "iqn.2026-11.io.basalt"


def _backend(tmp_path: Path, base_iqn: Optional[str] = BASE) -> tgt.TgtBackend:
    return tgt.TgtBackend(control_port=7, conf_path=str(tmp_path / "basalt.conf"),
                          record_path=str(tmp_path / "grants.json"), base_iqn=base_iqn)


# -- the target made while the device attaches (ControllerPublish) ------------------------------------


def test_open_export_makes_the_target_and_ensure_export_adds_the_lun(script: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    new = "iqn.2026-11.io.basalt:pvc-new"
    script([
        ok(SHOW_T, SHOW),  # tids in use: 1, 2
        *made_export("3", new, "/dev/loop9", "scsi_sn=0123abcd,readonly=0"),
    ])
    with backend.transaction():
        assert backend.open_export(new) is True
        assert backend.open_export(new) is False  # live now: ensure_export checks what exists
        assert backend.ensure_export(new, "/dev/loop9", "0123abcd", False) is True
    assert saved(backend)[new]["lun"] == {"device": "/dev/loop9", "serial": "0123abcd", "read_only": False}


def test_open_export_leaves_a_target_not_ours_yet_to_ensure_export(script: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path, None)
    script([])  # no base IQN, not in the record: it must be recorded first, with its LUN
    assert backend.open_export("iqn.2026-11.io.basalt:pvc-new") is False


class _Attaching:
    """A pool whose attach waits until *ready* is set (by the scripted tgtadm), then answers or fails."""

    def __init__(self, ready: threading.Event, error: Optional[Exception] = None) -> None:
        self.ready, self.error = ready, error

    def attach(self, volume: Any) -> str:
        assert self.ready.wait(10), "the target was not made while the device attached"
        if self.error is not None:
            raise self.error
        return "/dev/loop9"


def _publish_script(script: Any, monkeypatch: pytest.MonkeyPatch, ready: threading.Event, tail: List[Call]
                    ) -> None:
    """listing, target new, address ACL (which lets the attach finish), then *tail*."""
    runner = script([
        ok(SHOW_T, ""),
        ok([*C, "--mode", "target", "--op", "new", "--tid", "1", "--targetname", f"{BASE}:{VOLUME.id}"]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", tgt_config.NO_ADDRESS]),
        *tail,
    ])
    scripted = runner.__call__

    def run(argv: List[str], **kwargs: Any) -> Any:
        result = scripted(argv, **kwargs)
        if "--initiator-address" in argv:
            ready.set()
        return result
    monkeypatch.setattr(tgt, "run", run)


VOLUME = Volume("vol-0123456789abcdef0123456789abcdef", "pvc-1", 1 << 20, "file")


def test_publish_makes_the_target_while_the_device_attaches(script: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path)
    ready = threading.Event()
    target = f"{BASE}:{VOLUME.id}"
    _publish_script(script, monkeypatch, ready, [
        ok([*C, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", "/dev/loop9",
            "--bstype", "rdwr"]),
        ok([*C, "--mode", "logicalunit", "--op", "update", "--tid", "1", "--lun", "1",
            "--params", f"scsi_sn={serial_for(VOLUME.id)},readonly=0"]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", NODE_A]),
    ])
    info, changed = exports.ensure_exported(cast(Any, _Attaching(ready)), backend, exports.ExportSettings(BASE, ()),
                                            VOLUME, NODE_A, None, False)
    assert changed and info.target_iqn == target and saved(backend)[target]["grants"] == {NODE_A: None}


def test_a_failed_attach_removes_the_target_made_meanwhile(script: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path)
    ready = threading.Event()
    _publish_script(script, monkeypatch, ready,
                    [ok([*C, "--mode", "target", "--op", "delete", "--force", "--tid", "1"])])
    failure = CommandFailed(["LOOP_CTL_GET_FREE", "/dev/loop-control"], 1, "no free loop device", "attach")
    with pytest.raises(CommandFailed, match="no free loop device"):
        exports.ensure_exported(cast(Any, _Attaching(ready, failure)), backend, exports.ExportSettings(BASE, ()),
                                VOLUME, NODE_A, None, False)
    assert not Path(backend.conf_path).exists()  # nothing recorded: the target was never more than made


class _Released:
    """A pool whose volume was deleted meanwhile: nothing to detach."""

    def load_volume(self, volume_id: str) -> None:
        return None


def test_unpublish_reads_tgtd_while_the_record_is_written_and_changes_it_after(
        script: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ControllerUnpublish: the publication record is forgotten (durably) before any change in tgtd, and
    tgtd's listing is read meanwhile."""
    backend = _backend(tmp_path, None)
    old_record(backend, {RW: {NODE_A: CHAP_A}})
    listed, order = threading.Event(), cast(List[str], [])
    runner = script([
        ok(SHOW_T, SHOW),
        ok([*C, "--mode", "target", "--op", "delete", "--force", "--tid", "1"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "node-a"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "target-1"]),
    ])
    scripted = runner.__call__

    def run(argv: List[str], **kwargs: Any) -> Any:
        if argv == SHOW_T:
            listed.set()
        else:
            assert order == ["record"], "a change in tgtd before the publication record is forgotten"
        return scripted(argv, **kwargs)
    monkeypatch.setattr(tgt, "run", run)

    def forget() -> None:
        assert listed.wait(10), "tgtd was not listed while the record was written"
        order.append("record")
    settings = exports.ExportSettings(BASE, ())
    assert exports.ensure_unexported(cast(Any, _Released()), backend, settings, "pvc-5b1fd0c2", NODE_A,
                                     first=forget) is True
    assert order == ["record"] and RW not in saved(backend)
    # a record that cannot be written: nothing changes in tgtd
    script([ok(SHOW_T, SHOW)])

    def unwritable() -> None:
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        exports.ensure_unexported(cast(Any, _Released()), backend, settings, "pvc-5b1fd0c2", NODE_A, first=unwritable)
