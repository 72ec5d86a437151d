"""basalt_core.multipath against what multipath-tools 0.9.4 and the kernel showed in the VM tier.

tests/unit/plugins/module_utils/multipath_recorded/ (see its README) holds the output of
``multipathd show daemon`` with and without a daemon, and ``sysfs.json``: the
sysfs entries of a real map over two iSCSI paths (LIO target on 127.0.0.1
and 127.0.0.2), captured by tests/vm/guest/check_agent_multipath.py.  The
tests rebuild that tree in a temporary directory and point ``sys_root`` at
it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest
from multipath_testlib import SHOW_DAEMON, build_tree, recorded, sysfs_tree, the_map

from basalt_core import multipath
from basalt_core.errors import CommandFailed, Precondition


@pytest.fixture
def tree() -> Dict[str, Any]:
    return sysfs_tree()


@pytest.fixture
def sys_root(tmp_path: Path, tree: Dict[str, Any]) -> Path:
    build_tree(tmp_path, tree)
    return tmp_path


def test_map_of_each_path_is_the_recorded_map(sys_root: Path, tree: Dict[str, Any]) -> None:
    expected = the_map(tree)
    assert expected.uuid.startswith("mpath-") and len(expected.paths) == 2
    for disk in expected.paths:
        assert multipath.map_of(disk, sys_root=str(sys_root)) == expected
    assert expected.device == f"/dev/{expected.kernel_name}"
    assert multipath.map_for(["sdz", expected.paths[1]], sys_root=str(sys_root)) == expected
    assert multipath.map_names(sys_root=str(sys_root)) == [expected.name]


def test_a_disk_without_a_multipath_holder(sys_root: Path, tree: Dict[str, Any]) -> None:
    assert multipath.map_of("sdz", sys_root=str(sys_root)) is None  # no such disk
    build_tree(sys_root, {"block/sdy/holders": ["dm-9"], "block/dm-9/dm/uuid": "LVM-abc\n",
                          "block/dm-9/dm/name": "vg-lv\n", "block/sdx/holders": []})
    assert multipath.map_of("sdy", sys_root=str(sys_root)) is None  # an LV on the disk is not a map
    assert multipath.map_of("sdx", sys_root=str(sys_root)) is None
    assert multipath.map_names(sys_root=str(sys_root)) == [the_map(tree).name]


def test_wait_for_map_waits_until_it_holds_every_path(tmp_path: Path, tree: Dict[str, Any]) -> None:
    expected = the_map(tree)
    first, second = expected.paths
    # multipathd first builds the map over one path, then adds the second
    partial = {k: ([first] if k.endswith("/slaves") else v) for k, v in tree.items() if second not in k}
    build_tree(tmp_path, partial)
    timer = threading.Timer(0.3, build_tree, args=(tmp_path, tree))
    timer.start()
    try:
        found = multipath.wait_for_map([first, second], 5, sys_root=str(tmp_path), poll_interval=0.05)
    finally:
        timer.cancel()
    assert found == expected
    with pytest.raises(Precondition, match=f"holds {first}, {second}.*find_multipaths"):
        multipath.wait_for_map([first, second, "sdq"], 0.2, sys_root=str(tmp_path), poll_interval=0.05)


def test_daemon_running(script: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    script([(SHOW_DAEMON, 0, recorded("show_daemon_running.txt"), "")])
    assert multipath.daemon_running()
    script([(SHOW_DAEMON, 1, recorded("show_daemon_not_running.txt"), "")])
    assert not multipath.daemon_running()

    def missing(argv: List[str], **_: Any) -> Any:  # what runner.run raises for a missing program
        raise CommandFailed(argv, 127, "multipathd: command not found")

    monkeypatch.setattr(multipath, "run", missing)
    assert not multipath.daemon_running()


def test_flush_only_an_existing_map(script: Any, sys_root: Path, tree: Dict[str, Any]) -> None:
    name = the_map(tree).name
    runner = script([(["multipath", "-f", name], 0, "", "")])
    assert multipath.flush(name, sys_root=str(sys_root))
    assert multipath.flush("not-a-map", sys_root=str(sys_root)) is False
    assert multipath.flush("-f", sys_root=str(sys_root)) is False  # never reaches a command line
    assert runner.ran == [["multipath", "-f", name]]


def test_resize(script: Any) -> None:
    runner = script([(["multipathd", "resize", "map", "mpatha"], 0, recorded("resize_map_again.txt"), "")])
    multipath.resize("mpatha")
    assert runner.ran == [["multipathd", "resize", "map", "mpatha"]]
