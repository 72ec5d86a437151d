"""LVM2 through its command-line tools, for the ``lvm`` (thick) and ``lvmthin`` pools.

The one LVM face the pools use, in four files as TopoLVM's lvmd/command splits it:
``lvm_names`` (names and the tag codec), ``lvm_command`` (settings, the runner and
error classification), ``lvm_report`` (``pvs``/``vgs``/``lvs`` parsed into typed
values, ``lv_attr`` included) and this module, the changes: one small function each
with an exact argv, every name and tag validated before a command runs.

Behaviour measured on lvm2 2.03.16 (Debian 12), see tests/unit/plugins/module_utils/lvm_recorded:

* ``--size``/``--virtualsize`` in bytes (``1048576b``) must be a multiple of
  512 ("Size is not a multiple of 512"); LVM then rounds up to whole extents.
  We round up ourselves (to the extent size when the caller knows it).
* Tags: characters ``A-Z a-z 0-9 _ + . - / = ! : # &``; 2.03.16 accepts any
  length, older releases stop at 128, so we keep every tag within 128.  LVM
  reports a list of tags sorted, joined with ``,``.
* Without the device-mapper kernel driver (``global{activation=0}``) LVM
  edits metadata only: ``lvchange -ay`` succeeds and does nothing, a new LV
  is not zeroed or wiped (a warning, rc 0), and thin pools, thin LVs and
  snapshots cannot be created ("Can't create thin-pool without using
  device-mapper kernel driver").
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, List, Optional, Sequence

from .errors import CommandFailed, InUse, InvalidRequest
from .lvm_command import (
    CHANGE_TIMEOUT,
    DEFAULT_SETTINGS,
    REMOVE_TIMEOUT,
    LvmSettings,
    classify,
    fail,
    isolated_config,
    line_of,
    run_lvm,
)
from .lvm_names import (
    FULL_NAME_MAX,
    MANAGED_TAG,
    NAME_MAX,
    check_lv_name,
    check_tag,
    check_vg_name,
    decode_tag_value,
    encode_tag_value,
    existing_lv_name,
)
from .lvm_report import (
    DataLocation,
    LogicalVolume,
    LvAttr,
    PeRange,
    PhysicalVolume,
    Segment,
    VolumeGroup,
    free_extents,
    linear_location,
    logical_volume,
    logical_volumes,
    parse_logical_volumes,
    parse_pe_ranges,
    physical_volumes,
    tag_selection,
    volume_group,
)
from .runner import Answer, operand

# The LVM face the pools and tests use: the changes are here, the rest comes from
# lvm_names, lvm_command and lvm_report under the same names.
__all__ = [
    "ALLOCATION_POLICIES",
    "DEFAULT_SETTINGS",
    "FULL_NAME_MAX",
    "MANAGED_TAG",
    "NAME_MAX",
    "DataLocation",
    "LogicalVolume",
    "LvAttr",
    "LvmSettings",
    "PeRange",
    "PhysicalVolume",
    "Segment",
    "VolumeGroup",
    "activate",
    "add_tags",
    "change_tags",
    "change_vg_tags",
    "check_lv_name",
    "check_tag",
    "check_vg_name",
    "classify",
    "create_cow_snapshot",
    "create_linear",
    "create_pv",
    "create_thin",
    "create_thin_pool",
    "create_thin_snapshot",
    "create_vg",
    "deactivate",
    "decode_tag_value",
    "encode_tag_value",
    "extend",
    "free_extents",
    "isolated_config",
    "linear_location",
    "logical_volume",
    "logical_volumes",
    "parse_logical_volumes",
    "parse_pe_ranges",
    "physical_volumes",
    "refresh",
    "remove",
    "remove_pv",
    "remove_tags",
    "remove_vg",
    "round_up",
    "tag_selection",
    "volume_group",
]

SECTOR = 512
ALLOCATION_POLICIES = ("normal", "contiguous", "cling", "anywhere", "inherit")


def _size_arg(size_bytes: int, extent_size: Optional[int], what: str) -> str:
    """``--size`` text in bytes: rounded up to *extent_size* (or to 512, the least LVM takes)."""
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
        raise InvalidRequest(f"{what}: size must be a positive number of bytes, not {size_bytes!r}")
    unit = extent_size or SECTOR
    if unit % SECTOR:
        raise InvalidRequest(f"{what}: extent size {unit} is not a multiple of {SECTOR}")
    return f"{round_up(size_bytes, unit)}b"


def round_up(size_bytes: int, unit: int) -> int:
    return -(-size_bytes // unit) * unit


# -- mutations -------------------------------------------------------------------


def _tag_args(option: str, tags: Iterable[str]) -> List[str]:
    args: List[str] = []
    for tag in tags:
        args += [option, check_tag(tag)]
    return args


def _target(vg: str, name: str) -> str:
    return f"{check_vg_name(vg)}/{existing_lv_name(name)}"


def create_linear(
    vg: str,
    name: str,
    size_bytes: int,
    tags: Sequence[str] = (),
    *,
    alloc: str = "normal",
    extent_size: Optional[int] = None,
    zero: bool = True,
    place: Optional[PeRange] = None,
    vg_lock: Optional[int] = None,
    created: Optional[Callable[[], None]] = None,
    answered: Optional[Answer] = None,
    ended: Optional[Callable[[], None]] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Create a linear LV; return the size asked of LVM (rounded up to *extent_size* when given).

    *place*: exactly those extents of that PV (LVM refuses, NoSpace, when they are not free).
    *vg_lock*: the caller holds the VG's lock on this descriptor (``lvm_command.run_lvm``).
    *created*: called as soon as lvcreate says the LV is created, while it still runs: its one commit is done
    (lvm2 prints that at the end of ``lv_create_single``; only its metadata backup and its exit follow).
    *answered*: set (by *created*, or whoever knows) once the LV needs nothing more of lvcreate: the call
    returns then, its exit awaited in the background (``runner.run``); *ended*: called at that exit.

    *zero* (the default) asks LVM to zero the first 4 KiB and wipe known
    signatures, so blkid sees the new LV blank even when its extents held
    another filesystem.  LVM can only do that through an active device: with
    activation disabled it warns "Skipping zeroing and wipping" [sic] and succeeds
    without zeroing, so such callers must clear the start themselves (or pass
    ``zero=False``, which says so explicitly and avoids the warning).
    """
    what = f"create LV {vg}/{name}"
    check_lv_name(name, vg)
    if alloc not in ALLOCATION_POLICIES:
        raise InvalidRequest(f"{what}: allocation policy {alloc!r} is not one of {', '.join(ALLOCATION_POLICIES)}")
    size = _size_arg(size_bytes, extent_size, what)
    flag = "y" if zero else "n"
    args = ["--yes", "--name", name, "--size", size, "--alloc", alloc, "--zero", flag, "--wipesignatures", flag]
    args += [*_tag_args("--addtag", tags), vg]
    if place is not None:
        args.append(f"{operand(place.device, 'physical volume')}:{place.first}-{place.last}")
    done = f'  Logical volume "{name}" created.\n'
    run_lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT, vg_lock=vg_lock, answered=answered,
            ended=ended, on_line=None if created is None else (lambda line: created() if line == done else None))
    return int(size[:-1])


def create_thin(
    vg: str,
    pool: str,
    name: str,
    virtual_size: int,
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Create a thin LV in thin pool *pool*; return the virtual size asked of LVM.

    New thin LVs read as zeroes (unprovisioned blocks), so nothing to wipe.  Returns as soon as lvcreate says the
    LV is created: both its commits are done (the LV, then the thin pool's transaction once the pool took the
    ``create_thin`` message), and what follows, under LVM's own lock, is udev making the device names (the next
    LVM command waits for them), the metadata backup and the exit (``lvcreate -vvvv`` in the VM tier, lvm2
    2.03.16: 0.2 s of a 1.3 s lvcreate).
    """
    what = f"create thin LV {vg}/{name} in pool {pool}"
    check_lv_name(name, vg)
    existing_lv_name(pool)
    size = _size_arg(virtual_size, extent_size, what)
    args = ["--yes", "--type", "thin", "--name", name, "--virtualsize", size, "--thinpool", pool]
    args += [*_tag_args("--addtag", tags), vg]
    _run_to_line(settings, "lvcreate", args, f'  Logical volume "{name}" created.\n', what=what,
                 timeout=CHANGE_TIMEOUT)
    return int(size[:-1])


def create_thin_pool(vg: str, name: str, size_bytes: Optional[int] = None, *, free_percent: int = 90,
                     settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Create thin pool *name* of *size_bytes*, or of *free_percent* of the VG's free space.

    Without a size some space stays free: LVM keeps a spare metadata LV, and a
    full pool's metadata can then still be grown.
    """
    what = f"create thin pool {vg}/{name}"
    check_lv_name(name, vg)
    if not 1 <= free_percent <= 100:
        raise InvalidRequest(f"{what}: free_percent must be 1 to 100, not {free_percent}")
    size = ["--size", _size_arg(size_bytes, None, what)] if size_bytes else ["--extents", f"{free_percent}%FREE"]
    args = ["--yes", "--type", "thin-pool", "--name", name, *size, check_vg_name(vg)]
    run_lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def create_thin_snapshot(
    vg: str,
    origin: str,
    name: str,
    tags: Sequence[str] = (),
    *,
    activation_skip: bool = True,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Snapshot thin LV *origin* as thin LV *name* (no size: it shares the origin's pool).

    LVM marks thin snapshots "skip activation" by default (lvm.conf
    ``auto_set_activation_skip``); we say so explicitly instead of inheriting
    the host's setting.  Keep the flag (the default) for CSI snapshots, which
    are only ever sources, so ``vgchange -ay`` at boot leaves them alone;
    pass ``activation_skip=False`` when the snapshot becomes a volume (a clone
    or restore).  ``activate`` ignores the flag either way.
    """
    what = f"snapshot {vg}/{origin} as {name}"
    check_lv_name(name, vg)
    args = ["--yes", "--snapshot", "--name", name, "--setactivationskip", "y" if activation_skip else "n"]
    args += [*_tag_args("--addtag", tags), _target(vg, origin)]
    run_lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def create_cow_snapshot(
    vg: str,
    origin: str,
    name: str,
    size_bytes: int,
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Classic (copy-on-write) snapshot of a thick LV with *size_bytes* of COW space.

    The snapshot becomes invalid when its COW space fills; the origin then
    writes slower for as long as the snapshot exists.
    """
    what = f"snapshot {vg}/{origin} as {name}"
    check_lv_name(name, vg)
    size = _size_arg(size_bytes, extent_size, what)
    args = ["--yes", "--snapshot", "--name", name, "--size", size]
    args += [*_tag_args("--addtag", tags), _target(vg, origin)]
    run_lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)
    return int(size[:-1])


def extend(
    vg: str,
    name: str,
    size_bytes: int,
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> bool:
    """Grow *vg*/*name* to *size_bytes*; False when it already has that size (after rounding).

    ``lvextend`` never shrinks: a smaller size raises InvalidRequest.
    """
    what = f"extend LV {vg}/{name}"
    size = _size_arg(size_bytes, extent_size, what)
    argv_args = ["--yes", "--size", size, _target(vg, name)]
    result = run_lvm(settings, "lvextend", argv_args, what=what, timeout=CHANGE_TIMEOUT, check=False)
    if result.rc == 0:
        return True
    if re.search(r"matches existing size", result.stderr):
        return False
    if re.search(r"not larger than existing size", result.stderr):
        raise InvalidRequest(f"{what}: cannot shrink to {size_bytes} bytes: {line_of(result.stderr, 'not larger')}")
    fail(result, what)


def remove(vg: str, name: str, *, at_commit: bool = False, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove *vg*/*name* (NotFound when it does not exist).

    *at_commit*: return as soon as lvremove says the LV is removed: its commit is done (a thin LV's two: the
    LV, then the thin pool's transaction once the pool took the ``delete`` message), the LV deactivated before
    it, and only what LVM does under its own lock, which it still holds, follows: udev removing the device
    names, the metadata backup, then the exit (30-90 ms here, most of it the kernel's ``io_destroy``; 70 ms in
    the VM tier's guests)."""
    what = f"remove LV {vg}/{name}"
    args = ["--yes", _target(vg, name)]
    if not at_commit:
        run_lvm(settings, "lvremove", args, what=what, timeout=REMOVE_TIMEOUT)
        return
    _run_to_line(settings, "lvremove", args, f'  Logical volume "{existing_lv_name(name)}" successfully removed.\n',
                 what=what, timeout=REMOVE_TIMEOUT)


def _run_to_line(settings: LvmSettings, tool: str, args: Sequence[str], done: str, *, what: str,
                 timeout: float) -> None:
    """Run *tool* until it prints *done* (its commit's line), its exit awaited in the background (``runner.run``);
    to its exit when it prints no such line."""
    with Answer() as answered:
        run_lvm(settings, tool, args, what=what, timeout=timeout, answered=answered,
                on_line=lambda line: answered.set() if line == done else None)


def activate(
    vg: str,
    name: str,
    *,
    exclusive: bool = True,
    ignore_skip: bool = True,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Activate *vg*/*name* (exclusively by default; thin snapshots despite their skip flag)."""
    args = ["--activate", "ey" if exclusive else "y"]
    if ignore_skip:
        args.append("--ignoreactivationskip")
    args.append(_target(vg, name))
    run_lvm(settings, "lvchange", args, what=f"activate LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def deactivate(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    run_lvm(settings, "lvchange", ["--activate", "n", _target(vg, name)], what=f"deactivate LV {vg}/{name}",
            timeout=CHANGE_TIMEOUT)


def add_tags(vg: str, name: str, tags: Sequence[str], *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Add *tags* in one metadata commit (adding a tag the LV has is not an error)."""
    if not tags:
        return
    args = [*_tag_args("--addtag", tags), _target(vg, name)]
    run_lvm(settings, "lvchange", args, what=f"tag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def remove_tags(vg: str, name: str, tags: Sequence[str], *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove *tags* in one metadata commit (removing an absent tag is not an error)."""
    if not tags:
        return
    args = [*_tag_args("--deltag", tags), _target(vg, name)]
    run_lvm(settings, "lvchange", args, what=f"untag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def create_pv(device: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Initialise *device* as a PV; refuses (Precondition) a device holding a signature."""
    run_lvm(settings, "pvcreate", [operand(device, "device")], what=f"create PV on {device}", timeout=CHANGE_TIMEOUT)


def remove_pv(device: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    run_lvm(settings, "pvremove", [operand(device, "device")], what=f"remove PV label from {device}",
            timeout=CHANGE_TIMEOUT)


def create_vg(
    vg: str,
    devices: Sequence[str],
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    metadata_size: Optional[int] = None,
    wipe_signatures: bool = False,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Create VG *vg* on *devices* (made PVs by this same command) with *tags*, in one metadata commit.

    A device holding a signature is refused (Precondition) unless *wipe_signatures*;
    *metadata_size* is each new PV's metadata area (LVM's default is 1 MiB).
    """
    what = f"create VG {vg}"
    check_vg_name(vg)
    if not devices:
        raise InvalidRequest(f"{what}: no physical volumes given")
    args: List[str] = ["--yes"] if wipe_signatures else []
    if extent_size is not None:
        args += ["--physicalextentsize", _size_arg(extent_size, None, what)]
    if metadata_size is not None:
        args += ["--metadatasize", _size_arg(metadata_size, None, what)]
    args += _tag_args("--addtag", tags) + [vg] + [operand(device, "device") for device in devices]
    run_lvm(settings, "vgcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def remove_vg(vg: str, *, force: bool = False, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove VG *vg*; with LVs left in it InUse, unless *force* (which removes them too)."""
    what = f"remove VG {vg}"
    args = (["--force", "--force"] if force else []) + [check_vg_name(vg)]
    result = run_lvm(settings, "vgremove", args, what=what, timeout=REMOVE_TIMEOUT, check=False)
    if result.rc == 0:
        return
    if re.search(r"Volume group \S+ not removed", result.stderr):
        failure = CommandFailed(result.argv, result.rc, result.stderr, what)
        raise InUse(f"{what}: it still holds logical volumes") from failure
    fail(result, what)


def change_tags(
    vg: str, name: str, *, add: Sequence[str], remove: Sequence[str], settings: LvmSettings = DEFAULT_SETTINGS
) -> None:
    """Remove and add tags in ONE metadata commit: a record held in tags is never seen half-changed."""
    if not add and not remove:
        return
    args = [*_tag_args("--deltag", remove), *_tag_args("--addtag", add), _target(vg, name)]
    run_lvm(settings, "lvchange", args, what=f"retag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def change_vg_tags(vg: str, *, add: Sequence[str], remove: Sequence[str],
                   settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove and add VG tags in one metadata commit."""
    if not add and not remove:
        return
    args = [*_tag_args("--deltag", remove), *_tag_args("--addtag", add), check_vg_name(vg)]
    run_lvm(settings, "vgchange", args, what=f"retag VG {vg}", timeout=CHANGE_TIMEOUT)


def refresh(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Reload an active LV's kernel mapping (after lvextend, for instance)."""
    run_lvm(settings, "lvchange", ["--refresh", _target(vg, name)], what=f"refresh LV {vg}/{name}",
            timeout=CHANGE_TIMEOUT)
