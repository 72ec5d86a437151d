"""basalt_core.iscsi_attach: which device a staged iSCSI volume is, with and without dm-multipath.

The node records and logins (iscsiadm, tested in test_iscsiadm.py) are
recorded calls here; the disks and the map are the sysfs tree captured in
the VM tier (tests/unit/plugins/module_utils/multipath_recorded/sysfs.json: a LIO target logged
in on two portals under multipathd), rebuilt in a temporary directory;
multipath-tools' commands go through the shared scripted runner.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
from multipath_testlib import SHOW_DAEMON, build_tree, recorded, sysfs_tree, the_map

from basalt_core import iscsi_attach, iscsiadm, multipath
from basalt_core.errors import NotFound

T = "iqn.2026-11.dev.basalt:vol-0354cf3bcf0c5b1e9d9f82c7db11937a"
PORTALS = ["127.0.0.1:3260", "127.0.0.2:3260"]
SERIAL = "0354cf3bcf0c5b1e"


def _vpd80(serial: str) -> bytes:
    return bytes([0x00, 0x80]) + len(serial).to_bytes(2, "big") + serial.encode()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, Any]:
    """The recorded sysfs tree plus each path's VPD serial; the iscsiadm node steps recorded as calls."""
    tree = sysfs_tree()
    build_tree(tmp_path, tree)
    mp = the_map(tree)
    for disk in mp.paths:
        (tmp_path / "block" / disk / "device").mkdir(parents=True, exist_ok=True)
        (tmp_path / "block" / disk / "device" / "vpd_pg80").write_bytes(_vpd80(SERIAL))
    calls: List[Any] = []

    def recorder(step: str) -> Callable[..., bool]:
        def record(target: str, portal: str, *_: Any) -> bool:
            assert target == T
            calls.append((step, portal))
            return True
        return record

    for step, name in (("node", "ensure_node"), ("login", "login"), ("logout", "logout"), ("delete", "delete_node")):
        monkeypatch.setattr(iscsiadm, name, recorder(step))
    # every sysfs reader iscsi_attach reaches, pointed at the recorded tree
    for module, names in ((iscsiadm, ("find_disks", "wait_for_disks", "wait_for_device")),
                          (multipath, ("map_for", "map_names", "wait_for_map", "flush"))):
        for name in names:
            monkeypatch.setattr(module, name, functools.partial(getattr(module, name), sys_root=str(tmp_path)))
    return {"root": tmp_path, "map": mp, "calls": calls}


def test_several_portals_with_multipathd_give_the_map(script: Any, host: Dict[str, Any]) -> None:
    script([(SHOW_DAEMON, 0, recorded("show_daemon_running.txt"), "")])
    device, changed = iscsi_attach.ensure_attached(T, PORTALS, None, SERIAL, timeout=1)
    assert (device, changed) == (f"/dev/{host['map'].kernel_name}", True)
    assert host["calls"] == [("node", PORTALS[0]), ("login", PORTALS[0]), ("node", PORTALS[1]),
                             ("login", PORTALS[1])]
    assert iscsi_attach.attached_device(SERIAL) == device


def test_several_portals_without_multipathd_give_the_first_disk(script: Any, host: Dict[str, Any]) -> None:
    # no map in sysfs and no daemon: the first path, as before multipath was handled
    for disk in host["map"].paths:
        (host["root"] / "block" / disk / "holders" / host["map"].kernel_name).rmdir()
    script([(SHOW_DAEMON, 1, recorded("show_daemon_not_running.txt"), "")])
    device, _changed = iscsi_attach.ensure_attached(T, PORTALS, None, SERIAL, timeout=1)
    assert device == f"/dev/{host['map'].paths[0]}"


def test_one_portal_does_not_ask_multipathd(script: Any, host: Dict[str, Any]) -> None:
    script([])  # no multipathd call at all; the disk already sits under a map: that map is the device
    device, _changed = iscsi_attach.ensure_attached(T, PORTALS[:1], None, SERIAL, timeout=1)
    assert device == f"/dev/{host['map'].kernel_name}"


def test_detach_flushes_the_map_before_logging_out(script: Any, host: Dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runner = script([(["multipath", "-f", host["map"].name], 0, "", "")])

    def run(argv: List[str], **kw: Any) -> Any:
        host["calls"].append(argv)
        return runner(argv, **kw)

    monkeypatch.setattr(multipath, "run", run)
    assert iscsi_attach.ensure_detached(T, PORTALS, serial=SERIAL)
    assert host["calls"] == [["multipath", "-f", host["map"].name], ("logout", PORTALS[0]), ("delete", PORTALS[0]),
                             ("logout", PORTALS[1]), ("delete", PORTALS[1])]


def test_rescan_every_live_portal_then_resize_the_map(script: Any, host: Dict[str, Any]) -> None:
    # one path was lost: iscsiadm says rc 21 for its portal; the other is rescanned, then the map resized
    node = ["iscsiadm", "-m", "node", "-T", T, "-p"]
    runner = script([([*node, PORTALS[0], "--rescan"], 0, recorded("iscsiadm_rescan.txt"), ""),
                     ([*node, PORTALS[1], "--rescan"], 21, "", recorded("iscsiadm_rescan_no_session.txt")),
                     (["multipathd", "resize", "map", host["map"].name], 0, recorded("resize_map_again.txt"), "")])
    iscsi_attach.rescan(T, PORTALS, serial=SERIAL)
    assert len(runner.ran) == 3


def test_rescan_without_any_session_is_not_found(script: Any, host: Dict[str, Any]) -> None:
    node = ["iscsiadm", "-m", "node", "-T", T, "-p"]
    script([([*node, p, "--rescan"], 21, "", recorded("iscsiadm_rescan_no_session.txt")) for p in PORTALS])
    with pytest.raises(NotFound, match="no session"):
        iscsi_attach.rescan(T, PORTALS, serial=SERIAL)


def _lose_every_path(host: Dict[str, Any]) -> None:
    """What the kernel shows once every path is gone: the disks vanish, the map stays with no slaves."""
    root, mp = host["root"], host["map"]
    for disk in mp.paths:
        shutil.rmtree(root / "block" / disk)
        (root / "block" / mp.kernel_name / "slaves" / disk).rmdir()


def test_the_recorded_map_is_flushed_when_every_path_is_lost(script: Any, host: Dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    script([(SHOW_DAEMON, 0, recorded("show_daemon_running.txt"), "")])
    device, _changed = iscsi_attach.ensure_attached(T, PORTALS, None, SERIAL, timeout=5)
    staged = multipath.map_at(device, sys_root=str(host["root"]))
    assert staged is not None and staged == host["map"]  # what NodeStage records: the map's name and uuid
    _lose_every_path(host)
    assert iscsiadm.find_disks(SERIAL) == [] and multipath.map_for(host["map"].paths) is None
    host["calls"].clear()
    runner = script([(["multipath", "-f", staged.name], 0, "", "")])

    def run(argv: List[str], **kw: Any) -> Any:
        host["calls"].append(argv)
        return runner(argv, **kw)
    monkeypatch.setattr(multipath, "run", run)
    recorded_map = multipath.Map(staged.name, "", staged.uuid, ())  # as the node record gives it back
    assert iscsi_attach.ensure_detached(T, PORTALS, serial=SERIAL, staged_map=recorded_map)
    assert host["calls"] == [["multipath", "-f", staged.name], ("logout", PORTALS[0]), ("delete", PORTALS[0]),
                             ("logout", PORTALS[1]), ("delete", PORTALS[1])]


def test_a_recorded_name_now_on_another_volumes_map_is_left_alone(script: Any, host: Dict[str, Any]) -> None:
    mp = host["map"]
    _lose_every_path(host)
    runner = script([])  # no multipath -f
    elsewhere = multipath.Map(mp.name, "", "mpath-3600140500000000000000000000000aa", ())
    assert iscsi_attach.ensure_detached(T, PORTALS, serial=SERIAL, staged_map=elsewhere)  # the logouts
    assert runner.ran == [] and multipath.map_names(sys_root=str(host["root"])) == [mp.name]


def test_map_at_a_device_that_is_no_multipath_map(host: Dict[str, Any]) -> None:
    root = str(host["root"])
    assert multipath.map_at("/dev/sda", sys_root=root) is None
    assert multipath.map_at("/dev/dm-77", sys_root=root) is None
