"""ControllerPublish / ControllerUnpublish on tgt through basalt_core.exports: the order of their steps.

The volume's device attaches before tgtd hears of the export, and a failed attach leaves tgtd untouched. Each step
runs alone (no helper thread: beside tgtd's socket a thread cost more than it overlapped, bench/README.md).
Scripted tgtadm (tgt_testlib), a stand-in pool; every test runs twice (``tgt_transport`` from tgt_wire.py,
autouse): through tgtadm and over tgtd's socket. The publication record forgotten before any change in tgtd:
tests/unit/test_controller_unpublish.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, cast

import pytest
from tgt_testlib import CHAP_A, NODE_A, RW, SHOW, SHOW_T, C, made_export, ok, old_record, saved
from tgt_wire import tgt_transport  # noqa: F401  # pylint: disable=unused-import

from basalt_core import exports, tgt
from basalt_core.errors import CommandFailed
from basalt_core.iscsi_target import serial_for
from basalt_core.model import Volume

BASE = "iqn.2026-11.io.basalt"
VOLUME = Volume("vol-0123456789abcdef0123456789abcdef", "pvc-1", 1 << 20, "file")


def _backend(tmp_path: Path, base_iqn: Optional[str] = BASE) -> tgt.TgtBackend:
    return tgt.TgtBackend(control_port=7, conf_path=str(tmp_path / "basalt.conf"),
                          record_path=str(tmp_path / "grants.json"), base_iqn=base_iqn)


# -- ControllerPublish: the device, then the target ------------------------------------------------------

class _Attaching:
    """A pool whose attach notes itself in *order* (where the tgtd requests go too), then answers or fails."""

    def __init__(self, order: List[str], error: Optional[Exception] = None) -> None:
        self.order, self.error = order, error

    def attach(self, volume: Any) -> str:
        self.order.append("attach")
        if self.error is not None:
            raise self.error
        return "/dev/loop9"


def test_publish_attaches_the_device_before_tgtd_hears_of_the_export(script: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(tmp_path)
    target = f"{BASE}:{VOLUME.id}"
    order: List[str] = []
    runner = script([
        ok(SHOW_T, ""),
        *made_export("1", target, "/dev/loop9", f"scsi_sn={serial_for(VOLUME.id)},readonly=0"),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", NODE_A]),
    ])
    scripted = runner.__call__

    def run(argv: List[str], **kwargs: Any) -> Any:
        order.append(argv[argv.index("--op") + 1])
        return scripted(argv, **kwargs)
    monkeypatch.setattr(tgt, "run", run)
    info, changed = exports.ensure_exported(cast(Any, _Attaching(order)), backend, exports.ExportSettings(BASE, ()),
                                            VOLUME, NODE_A, None, False)
    assert order == ["attach", "show", "new", "bind", "new", "update", "bind"]
    assert changed and info.target_iqn == target and saved(backend)[target]["grants"] == {NODE_A: None}


def test_a_failed_attach_leaves_tgtd_and_the_config_file_untouched(script: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    script([])  # any request to tgtd fails the test
    failure = CommandFailed(["LOOP_CTL_GET_FREE", "/dev/loop-control"], 1, "no free loop device", "attach")
    with pytest.raises(CommandFailed, match="no free loop device"):
        exports.ensure_exported(cast(Any, _Attaching([], failure)), backend, exports.ExportSettings(BASE, ()),
                                VOLUME, NODE_A, None, False)
    assert not Path(backend.conf_path).exists()


# -- ControllerUnpublish ------------------------------------------------------------------------------------

class _Released:
    """A pool whose volume was deleted meanwhile: nothing to detach."""

    def load_volume(self, volume_id: str) -> None:
        return None


def test_unpublish_of_the_last_grant_deletes_the_target_then_the_accounts_no_grant_uses(
        script: Any, tmp_path: Path) -> None:
    backend = _backend(tmp_path, None)
    old_record(backend, {RW: {NODE_A: CHAP_A}})
    script([
        ok(SHOW_T, SHOW),
        ok([*C, "--mode", "target", "--op", "delete", "--force", "--tid", "1"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "node-a"]),
        ok([*C, "--mode", "account", "--op", "delete", "--user", "target-1"]),
    ])
    settings = exports.ExportSettings(BASE, ())
    assert exports.ensure_unexported(cast(Any, _Released()), backend, settings, "pvc-5b1fd0c2", NODE_A) is True
    assert RW not in saved(backend)
