"""The core pieces the mount module added: forced reformat (exact argv) and fstab lines (real files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from basalt_core import fstab, staging
from basalt_core.errors import CommandFailed, Precondition

DEV = "/dev/loop3"
PROBE = ["blkid", "--probe", "--output", "export", DEV]
XFS = "DEVNAME=/dev/loop3\nUUID=9a1b\nBLOCK_SIZE=512\nTYPE=xfs\nUSAGE=filesystem\n"
EXT4 = "DEVNAME=/dev/loop3\nUUID=3b6c\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n"
GPT = "DEVNAME=/dev/loop3\nPTUUID=77aa\nPTTYPE=gpt\n"
MKFS_EXT4 = ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", DEV]
WIPE = ["wipefs", "--all", DEV]


@pytest.mark.parametrize(
    ("probed", "force", "check_mode", "then", "changed", "refused"),
    [
        (XFS, False, False, [], None, "holds a xfs filesystem, not ext4"),
        (GPT, False, False, [], None, "holds a gpt signature, not ext4"),
        (XFS, True, False, [(WIPE, 0, "", ""), (MKFS_EXT4, 0, "", "")], True, None),
        (GPT, True, False, [(WIPE, 0, "", ""), (MKFS_EXT4, 0, "", "")], True, None),
        (XFS, True, True, [], True, None),
        (EXT4, True, False, [], False, None),  # the wanted filesystem is never reformatted
    ],
    ids=["xfs-refused", "gpt-refused", "xfs-forced", "gpt-forced", "forced-check-mode", "same-fs-kept"],
)
def test_forced_reformat(script: Any, probed: str, force: bool, check_mode: bool, then: Any,
                         changed: Any, refused: Any) -> None:
    runner = script([(PROBE, 0, probed, ""), *then])
    if refused:
        with pytest.raises(Precondition, match=refused):
            staging.ensure_filesystem(DEV, "ext4", force=force, check_mode=check_mode)
    else:
        assert staging.ensure_filesystem(DEV, "ext4", force=force, check_mode=check_mode) is changed
    assert runner.ran == [PROBE] + [step[0] for step in then]


def test_forced_wipe_of_a_busy_device_fails_with_rc_and_stderr(script: Any) -> None:
    script([(PROBE, 0, XFS, ""), (WIPE, 1, "", "wipefs: error: /dev/loop3: probing initialization failed: "
                                               "Device or resource busy\n")])
    with pytest.raises(CommandFailed) as failure:
        staging.ensure_filesystem(DEV, "ext4", force=True)
    assert failure.value.rc == 1 and failure.value.argv == WIPE and "busy" in failure.value.stderr


HEAD = "# static file system information\nUUID=0000 /srv/other xfs defaults 0 0\n\n"


def test_fstab_entry_added_replaced_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "fstab")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(HEAD)
    os.chmod(path, 0o644)
    entry = fstab.Entry("UUID=3b6c", "/srv/my data", "ext4", ["noatime"])
    line = "UUID=3b6c /srv/my\\040data ext4 noatime 0 0"
    assert fstab.ensure_entry(entry, path, check_mode=True) == (True, None, line)
    assert open(path, encoding="utf-8").read() == HEAD
    assert fstab.ensure_entry(entry, path)[0]
    assert fstab.ensure_entry(entry, path) == (False, "UUID=3b6c /srv/my\\040data ext4 noatime 0 0",
                                               "UUID=3b6c /srv/my\\040data ext4 noatime 0 0")
    assert fstab.find_line("/srv/my data", path) == "UUID=3b6c /srv/my\\040data ext4 noatime 0 0"
    changed, _old, new = fstab.ensure_entry(fstab.Entry("UUID=3b6c", "/srv/my data", "ext4"), path)
    assert changed and new == "UUID=3b6c /srv/my\\040data ext4 defaults 0 0"
    assert open(path, encoding="utf-8").read() == HEAD + new + "\n"
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert fstab.remove_entry("/srv/my data/", path) == (True, new)
    assert fstab.remove_entry("/srv/my data", path) == (False, None)
    assert open(path, encoding="utf-8").read() == HEAD
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_fstab_duplicates_for_one_mount_point_collapse_to_one_line(tmp_path: Path) -> None:
    path = str(tmp_path / "fstab")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("/dev/a /srv/x ext4 defaults 0 0\n# keep\n/dev/b /srv/x ext4 defaults 0 0\n")
    changed, old, _new = fstab.ensure_entry(fstab.Entry("UUID=1", "/srv/x", "ext4"), path)
    assert changed and old == "/dev/b /srv/x ext4 defaults 0 0"
    assert open(path, encoding="utf-8").read() == "UUID=1 /srv/x ext4 defaults 0 0\n# keep\n"


def test_fstab_missing_file_is_created(tmp_path: Path) -> None:
    path = str(tmp_path / "fstab")
    assert fstab.find_line("/srv/x", path) is None
    assert fstab.ensure_entry(fstab.Entry("/srv/src", "/srv/x", "none", ["bind", "ro"]), path)[0]
    assert open(path, encoding="utf-8").read() == "/srv/src /srv/x none bind,ro 0 0\n"
    assert os.stat(path).st_mode & 0o777 == 0o644
