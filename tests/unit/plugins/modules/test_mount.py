"""basalt.csi.mount: module arguments in, core calls and result out, fstab before and after (data-driven).

The fstab logic runs for real on a temporary file; ``{tmp}`` in a case stands
for the test's temporary directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.blkid import Signature
from ansible_collections.basalt.csi.plugins.module_utils.errors import CommandFailed, Conflict, Precondition
from ansible_collections.basalt.csi.plugins.module_utils.mount import MountEntry
from ansible_collections.basalt.csi.plugins.modules import mount as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

DEV = "/dev/loop3"
MNT = "{tmp}/mnt"
SRC = "{tmp}/src"
FSTAB = "{tmp}/fstab"
UUID = "3b6c2a1e-54f0-4c55-9d6e-0f2d1b8e7a90"
STATE_DIR = "/var/lib/basalt"
MARK = f"{STATE_DIR}/mount/grow-{UUID}"
OTHER_LINE = "UUID=0000 /srv/other xfs defaults 0 0"
HEAD = "# /etc/fstab: static file system information.\n" + OTHER_LINE + "\n"


def entry(source: str = DEV, fs_type: str = "ext4", options: Any = ("rw", "relatime"), root: str = "/") -> MountEntry:
    return MountEntry(mount_id=90, major_minor="7:3", root=root, mount_point=MNT, options=tuple(options),
                      fs_type=fs_type, source=source, super_options=("rw",))


MOUNTED = dict(mounted=True, source=DEV, fstype="ext4", options=["rw", "relatime"])
UNMOUNTED = dict(mounted=False)
FAILED_MOUNT = CommandFailed(["mount", "-t", "ext4", DEV, MNT], 32,
                             "mount: /mnt: wrong fs type, bad option, bad superblock on /dev/loop3.\n",
                             f"mount {DEV} on /mnt")


NOT_EMPTY_AFTER_UNMOUNT = Precondition(f"unmounted {MNT}, but did not remove it: the directory is not empty")
NOT_EMPTY_AFTER_UNMOUNT.changed = True


@dataclass
class MountCase:
    case: Case
    fstab_before: Optional[str] = None
    fstab_after: Optional[str] = None


CASES = [
    MountCase(Case(
        "mount a device (format if blank)",
        dict(device=DEV, path=MNT),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK, returns=True),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=True, path=MNT, mount=MOUNTED, fstab_line=None),
    )),
    MountCase(Case(
        "already mounted: nothing changes",
        dict(device=DEV, path=MNT),
        [
            call("find_mount", MNT, returns=entry()),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK, returns=False),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=False, mount=MOUNTED),
    )),
    MountCase(Case(
        "check mode with diff",
        dict(device=DEV, path=MNT, fstype="xfs"),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "xfs", [], force=False, check_mode=True, grow_mark=MARK, returns=True),
        ],
        dict(changed=True, diff=dict(before=UNMOUNTED, after=dict(mounted=True, source=DEV))),
        check_mode=True, diff=True,
    )),
    MountCase(Case(
        "options split, readonly adds ro",
        dict(device=DEV, path=MNT, opts=["noatime,nodev", "discard"], readonly=True),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", ["noatime", "nodev", "discard", "ro"], force=False,
                 check_mode=False, grow_mark=MARK, returns=True),
            call("find_mount", MNT, returns=entry(options=("ro", "noatime"))),
        ],
        dict(changed=True, mount=dict(MOUNTED, options=["ro", "noatime"])),
    )),
    MountCase(Case(
        "a device holding something else is refused without force",
        dict(device=DEV, path=MNT),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK,
                 raises=Precondition(f"{DEV} holds a xfs filesystem, not ext4; refusing to format a device "
                                     "that holds data")),
        ],
        dict(msg=f"mount {MNT}: {DEV} holds a xfs filesystem, not ext4"),
        failed=True,
    )),
    MountCase(Case(
        "force is passed down",
        dict(device=DEV, path=MNT, force=True),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=True, check_mode=False, grow_mark=MARK, returns=True),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=True),
    )),
    MountCase(Case(
        "mount fails: rc and stderr",
        dict(device=DEV, path=MNT),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK,
                 raises=FAILED_MOUNT),
        ],
        dict(msg=f"mount {MNT}: mount {DEV} on /mnt: mount failed (rc=32)", rc=32,
             stderr="mount: /mnt: wrong fs type, bad option, bad superblock on /dev/loop3."),
        failed=True,
    )),
    MountCase(Case(
        "another device already mounted there",
        dict(device=DEV, path=MNT),
        [
            call("find_mount", MNT, returns=entry(source="/dev/loop9")),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK,
                 raises=Conflict(f"{MNT} already has /dev/loop9 mounted, not {DEV}")),
        ],
        dict(msg="already has /dev/loop9 mounted"),
        failed=True,
    )),
    MountCase(Case(
        "not a block device",
        dict(device="/etc/hostname", path=MNT),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", "/etc/hostname", returns=False),
        ],
        dict(msg="/etc/hostname is not a block device"),
        failed=True,
    )),
    MountCase(Case(
        "mounted needs a device",
        dict(path=MNT),
        [call("find_mount", MNT, returns=None)],
        dict(msg="device is required for state=mounted"),
        failed=True,
    )),
    MountCase(Case(
        "path must be normalised",
        dict(device=DEV, path="/srv/../etc"),
        [],
        dict(msg="must be normalised"),
        failed=True,
    )),
    MountCase(Case(
        "a mount option that could smuggle another",
        dict(device=DEV, path=MNT, opts=["ro;rm"]),
        [],
        dict(msg="mount option #1 is not allowed"),
        failed=True,
    )),
    MountCase(Case(
        "fstab line added by UUID, other lines kept",
        dict(device=DEV, path=MNT, fstab=True, fstab_file=FSTAB, opts=["noatime"]),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", ["noatime"], force=False, check_mode=False, grow_mark=MARK,
                 returns=True),
            call("probe", DEV, returns=Signature("ext4", None, UUID)),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=True, fstab_line=f"UUID={UUID} {MNT} ext4 noatime 0 0"),
    ), HEAD, HEAD + f"UUID={UUID} {MNT} ext4 noatime 0 0\n"),
    MountCase(Case(
        "fstab line already there: nothing changes",
        dict(device=DEV, path=MNT, fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=entry()),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=False, grow_mark=MARK, returns=False),
            call("probe", DEV, returns=Signature("ext4", None, UUID)),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=False, fstab_line=f"UUID={UUID} {MNT} ext4 defaults 0 0"),
    ), f"UUID={UUID} {MNT} ext4 defaults 0 0\n" + HEAD, f"UUID={UUID} {MNT} ext4 defaults 0 0\n" + HEAD),
    MountCase(Case(
        "fstab line with other options replaced in place",
        dict(device=DEV, path=MNT, fstab=True, fstab_file=FSTAB, readonly=True),
        [
            call("find_mount", MNT, returns=entry()),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", ["ro"], force=False, check_mode=False, grow_mark=MARK,
                 returns=False),
            call("probe", DEV, returns=Signature("ext4", None, UUID)),
            call("find_mount", MNT, returns=entry()),
        ],
        dict(changed=True, fstab_line=f"UUID={UUID} {MNT} ext4 ro 0 0"),
    ), f"/dev/loop3 {MNT} ext4 defaults 0 2\n" + HEAD, f"UUID={UUID} {MNT} ext4 ro 0 0\n" + HEAD),
    MountCase(Case(
        "fstab in check mode: file untouched, diff shows the line",
        dict(device=DEV, path=MNT, fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "ext4", [], force=False, check_mode=True, grow_mark=MARK, returns=True),
            call("probe", DEV, returns=Signature(None, None, None)),
        ],
        dict(changed=True, diff=dict(before=dict(mounted=False, fstab_line=None),
                                     after=dict(mounted=True, source=DEV,
                                                fstab_line=f"{DEV} {MNT} ext4 defaults 0 0"))),
        check_mode=True, diff=True,
    ), HEAD, HEAD),
    MountCase(Case(
        "bind a directory read-only, persisted",
        dict(src=SRC, path=MNT, bind=True, readonly=True, fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=None),
            call("is_block_device", SRC, returns=False),
            call("ensure_bind", SRC, MNT, read_only=True, options=[], block=False, check_mode=False, returns=True),
            call("find_mount", MNT, returns=entry(options=("ro",), root="/src")),
        ],
        dict(changed=True, fstab_line=f"{SRC} {MNT} none bind,ro 0 0",
             mount=dict(mounted=True, source=DEV, fstype="ext4", options=["ro"])),
    ), "", f"{SRC} {MNT} none bind,ro 0 0\n"),
    MountCase(Case(
        "bind needs src",
        dict(path=MNT, bind=True),
        [],
        dict(msg="bind is True but all of the following are missing: src"),
        failed=True,
    )),
    MountCase(Case(
        "unmount leaves fstab alone",
        dict(path=MNT, state="unmounted", fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=entry()),
            call("ensure_unmounted", MNT, remove=False, check_mode=False, returns=True),
            call("find_mount", MNT, returns=None),
        ],
        dict(changed=True, mount=UNMOUNTED, fstab_line=f"UUID={UUID} {MNT} ext4 defaults 0 0"),
    ), f"UUID={UUID} {MNT} ext4 defaults 0 0\n", f"UUID={UUID} {MNT} ext4 defaults 0 0\n"),
    MountCase(Case(
        "absent unmounts, removes the mount point and the fstab line",
        dict(path=MNT, state="absent", fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=entry()),
            call("ensure_unmounted", MNT, remove=True, check_mode=False, returns=True),
            call("find_mount", MNT, returns=None),
        ],
        dict(changed=True, mount=UNMOUNTED, fstab_line=None),
    ), HEAD + f"UUID={UUID} {MNT} ext4 defaults 0 0\n", HEAD),
    MountCase(Case(
        "absent in check mode",
        dict(path=MNT, state="absent", fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=entry()),
            call("ensure_unmounted", MNT, remove=True, check_mode=True, returns=True),
        ],
        dict(changed=True, diff=dict(before=dict(MOUNTED, fstab_line=f"UUID={UUID} {MNT} ext4 defaults 0 0"),
                                     after=dict(mounted=False, fstab_line=None))),
        check_mode=True, diff=True,
    ), HEAD + f"UUID={UUID} {MNT} ext4 defaults 0 0\n", HEAD + f"UUID={UUID} {MNT} ext4 defaults 0 0\n"),
    MountCase(Case(
        "absent on a mount point not empty beneath: the unmount is reported as a change, then the failure",
        dict(path=MNT, state="absent", fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=entry()),
            call("ensure_unmounted", MNT, remove=True, check_mode=False, raises=NOT_EMPTY_AFTER_UNMOUNT),
        ],
        dict(changed=True, msg="/mnt, but did not remove it: the directory is not empty"),
        failed=True,
    ), HEAD + f"UUID={UUID} {MNT} ext4 defaults 0 0\n", HEAD + f"UUID={UUID} {MNT} ext4 defaults 0 0\n"),
    MountCase(Case(
        "absent on a directory not empty, nothing mounted: fails unchanged",
        dict(path=MNT, state="absent"),
        [
            call("find_mount", MNT, returns=None),
            call("ensure_unmounted", MNT, remove=True, check_mode=True,
                 raises=Precondition(f"did not remove {MNT}: the directory is not empty")),
        ],
        dict(changed=False, msg="the directory is not empty"),
        check_mode=True, failed=True,
    )),
    MountCase(Case(
        "mounted with another filesystem than asked for: an error naming both",
        dict(device=DEV, path=MNT, fstype="xfs"),
        [
            call("find_mount", MNT, returns=entry()),
            call("is_block_device", DEV, returns=True),
            call("grow_mark_under", STATE_DIR, DEV, returns=MARK),
            call("ensure_mounted", DEV, MNT, "xfs", [], force=False, check_mode=False, grow_mark=MARK,
                 raises=Conflict(f"{MNT} has {DEV} mounted as ext4, not as the xfs asked for")),
        ],
        dict(changed=False, msg="mounted as ext4, not as the xfs asked for"),
        failed=True,
    )),
    MountCase(Case(
        "absent when already gone",
        dict(path=MNT, state="absent", fstab=True, fstab_file=FSTAB),
        [
            call("find_mount", MNT, returns=None),
            call("ensure_unmounted", MNT, remove=True, check_mode=False, returns=False),
            call("find_mount", MNT, returns=None),
        ],
        dict(changed=False, mount=UNMOUNTED),
    ), HEAD, HEAD),
]


def fill(value: Any, tmp: str) -> Any:
    """Put the test's temporary directory where a case says ``{tmp}``."""
    if isinstance(value, str):
        return value.replace("{tmp}", tmp)
    if isinstance(value, dict):
        return {k: fill(v, tmp) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, tmp) for v in value)
    if isinstance(value, MountEntry):
        return MountEntry(**fill(value.__dict__, tmp))
    if isinstance(value, Exception):
        return value  # messages are matched as given
    if hasattr(value, "__dataclass_fields__"):
        return type(value)(**fill(dict(value.__dict__), tmp))
    return value


@pytest.mark.parametrize("mount_case", CASES, ids=[c.case.id for c in CASES])
def test_mount(mount_case: MountCase, tmp_path: Path, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    tmp = str(tmp_path)
    case = fill(mount_case.case, tmp)
    os.makedirs(fill(SRC, tmp))
    fstab_file = fill(FSTAB, tmp)
    if mount_case.fstab_before is not None:
        with open(fstab_file, "w", encoding="utf-8") as handle:
            handle.write(fill(mount_case.fstab_before, tmp))
    run_case(module, case)
    if mount_case.fstab_after is not None:
        with open(fstab_file, encoding="utf-8") as handle:
            assert handle.read() == fill(mount_case.fstab_after, tmp)
    else:
        assert not os.path.exists(fstab_file)
