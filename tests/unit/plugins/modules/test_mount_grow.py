"""basalt.csi.mount growing ext4 offline through the core's ext4_grow: the exact commands, e2fsprogs' recorded output.

The module runs the real storage core (staging, ext4_grow, filesystem, mount); only ``runner.run`` in those
wrappers is scripted (commands_testlib), and what needs a real block device (blkid's verdict, the device's
size, the process's capability to grow a mounted ext4) is given.  The kill and the re-run on a real loop device
are in tests/unit/plugins/module_utils/test_mount_grow_kill.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils import devices, ext4_grow, filesystem, staging
from ansible_collections.basalt.csi.plugins.module_utils.blkid import Signature
from ansible_collections.basalt.csi.plugins.module_utils.mount import MountEntry
from ansible_collections.basalt.csi.plugins.modules import mount as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.commands_testlib import (
    CORE,
    Command,
    Commands,
    install,
    ok,
)
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

DEV = "/dev/loop3"
UUID = "3b6c2a1e-54f0-4c55-9d6e-0f2d1b8e7a90"
GROWN = 32 << 20
RECORDED = Path(__file__).parent / "ext4_grow_recorded"
EXT4 = Signature("ext4", None, UUID)
NOZEROOUT = {"UNIX_IO_NOZEROOUT": "1"}


def recorded(name: str, undo: str = "") -> str:
    return (RECORDED / name).read_text(encoding="utf-8").replace("{undo}", undo)


def dumpe2fs() -> Command:
    return ok(["dumpe2fs", "-h", DEV], recorded("dumpe2fs_small.stdout"))


def grow_commands(undo: str) -> List[Command]:
    return [ok(["e2fsck", "-f", "-p", DEV], recorded("e2fsck.stdout")),
            ok(["resize2fs", "-z", undo, DEV], recorded("resize2fs.stdout", undo))]


class Paths:
    def __init__(self, tmp: Path) -> None:
        self.mnt = str(tmp / "mnt")
        self.state = str(tmp / "state")
        self.mark = os.path.join(self.state, "mount", f"grow-{UUID}")


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """What the host would say about DEV: an ext4 of 16 MiB (dumpe2fs, recorded) on a 32 MiB device, and a
    process without CAP_SYS_RESOURCE (this host's sandbox): the grow runs offline."""
    monkeypatch.setattr(staging, "examine", lambda device: EXT4)
    monkeypatch.setattr(staging, "probe", lambda device: EXT4)
    monkeypatch.setattr(ext4_grow, "probe", lambda device: EXT4)
    monkeypatch.setattr(devices, "size_bytes", lambda device: GROWN)
    monkeypatch.setattr(filesystem, "online_grow_allowed", lambda fs_type: fs_type != "ext4")
    return Paths(tmp_path)


class Scripted(List[Dict[str, Any]]):
    """The environment each scripted command ran with; ``done()`` checks that every command ran."""

    def __init__(self, commands: Commands) -> None:
        super().__init__()
        self.commands = commands

    def done(self) -> bool:
        return not self.commands.pending


def script(monkeypatch: pytest.MonkeyPatch, commands: List[Command]) -> Scripted:
    """Script the commands (in place of ``run`` in the core's filesystem, ext4_grow and mount wrappers)."""
    scripted = install(monkeypatch, commands, ("filesystem", "ext4_grow", "mount"))
    envs = Scripted(scripted)

    def run(argv: Any, **kwargs: Any) -> Any:
        envs.append(dict(kwargs.get("env") or {}))
        return scripted(argv, **kwargs)

    for tool in ("filesystem", "ext4_grow", "mount"):
        monkeypatch.setattr(f"{CORE}.{tool}.run", run)
    return envs


def mounted(paths: Paths) -> MountEntry:
    return MountEntry(mount_id=90, major_minor="7:3", root="/", mount_point=paths.mnt, options=("rw",),
                      fs_type="ext4", source=DEV, super_options=("rw",))


def case(paths: Paths, name: str, found: Any = None, check_mode: bool = False) -> Case:
    after = [] if check_mode else [call("find_mount", paths.mnt, returns=mounted(paths))]
    return Case(name, dict(device=DEV, path=paths.mnt, state_dir=paths.state),
                [call("find_mount", paths.mnt, returns=found), call("is_block_device", DEV, returns=True), *after],
                dict(changed=True), check_mode=check_mode)


def test_offline_grow_runs_with_an_undo_file_and_leaves_nothing(
        paths: Paths, monkeypatch: pytest.MonkeyPatch, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    undo = ext4_grow.undo_file(paths.mark, 1)
    envs = script(monkeypatch, [dumpe2fs(), *grow_commands(undo), ok(["mount", "-t", "ext4", DEV, paths.mnt])])
    run_case(module, case(paths, "grow offline, then mount"))
    assert envs.done() and envs[2] == NOZEROOUT  # resize2fs -z: zero through libext2fs' cache (e2fsprogs 1.47.0)
    assert os.listdir(os.path.dirname(paths.mark)) == []


def test_a_rerun_after_a_killed_grow_rolls_it_back_and_grows_again(
        paths: Paths, monkeypatch: pytest.MonkeyPatch, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    """What a task killed during resize2fs leaves (the mark, an undo file written for this filesystem) makes the
    re-run replay it with e2undo, check the filesystem, and grow again under the next attempt's undo file."""
    os.makedirs(os.path.dirname(paths.mark))
    Path(paths.mark + ext4_grow.MARK_SUFFIX).write_text(json.dumps({"attempt": 1, "uuid": UUID,
                                                                    "target_bytes": GROWN}))
    killed = ext4_grow.undo_file(paths.mark, 1)
    Path(killed).write_bytes((RECORDED / "undo_head.bin").read_bytes())
    envs = script(monkeypatch, [ok(["e2undo", "-f", killed, DEV]), *grow_commands(ext4_grow.undo_file(paths.mark, 2)),
                                ok(["mount", "-t", "ext4", DEV, paths.mnt])])
    run_case(module, case(paths, "replay, then grow and mount"))
    assert envs.done() and envs[2] == NOZEROOUT  # the second attempt too
    assert os.listdir(os.path.dirname(paths.mark)) == []


def test_check_mode_reports_the_offline_grow_without_running_it(
        paths: Paths, monkeypatch: pytest.MonkeyPatch, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    envs = script(monkeypatch, [])
    run_case(module, case(paths, "check mode: nothing runs", check_mode=True))
    assert envs == []
    assert not os.path.exists(paths.state)


def test_check_mode_reports_the_online_grow_of_a_mounted_filesystem_without_running_it(
        paths: Paths, monkeypatch: pytest.MonkeyPatch, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    """Already mounted, where the process may grow it online: check mode measures (dumpe2fs) and reports the
    grow as a change; resize2fs never runs."""
    monkeypatch.setattr(filesystem, "online_grow_allowed", lambda fs_type: True)
    monkeypatch.setattr(f"{CORE}.mount.find_mount", lambda path: mounted(paths))
    monkeypatch.setattr(staging, "device_number", lambda device: "7:3")
    envs = script(monkeypatch, [dumpe2fs()])
    run_case(module, case(paths, "check mode, mounted", found=mounted(paths), check_mode=True))
    assert envs.done() and len(envs) == 1
