"""Make and remove pools themselves: a file pool's directory, or a VG (+ thin pool) on whole disks.

Whoever creates a pool stores its settings with it (``pool_factory.store_settings``),
so the agent, the modules and the roles that open it later all read the same
ones.  Both operations are idempotent, report every action they take (or, in
check mode, would take), and converge after a crash at any point:

- ``vgcreate`` makes the PVs, the VG and its settings tags in one command; a
  crash before it leaves at most orphan PVs on the listed disks, which the
  retry takes (an orphan PV holds no data);
- the thin pool is one ``lvcreate`` after it: a retry finds the VG and makes it;
- removal takes Basalt's LVs, the thin pool, the VG, then the PV labels; a
  retry picks up at whatever is left.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import blkid, devices, lvm
from .errors import InUse, InvalidRequest, NotFound, Precondition
from .lvm_pool import POINT_IN_TIME_PREFIX, SNAPSHOT_LV_PREFIX
from .pool_factory import open_pool, settings_path, store_settings, stored_settings
from .pool_spec import FILE, LVMTHIN, PoolSettings, PoolSpec, parse_pool_spec
from .sizes import MiB, round_up

#: Metadata text per LV, with headroom.  Measured on LVM 2.03 (tags as lvm_pool writes them):
#: 742 bytes for a bare record, 1,229 with the CSI parameters external-provisioner adds and one
#: publication; bench/README.md has the run.
LV_METADATA_BYTES = 2048
#: LVM's own metadata area: about 800 Basalt LVs fit (bench/README.md).
LVM_DEFAULT_METADATA = MiB
DEFAULT_MAX_VOLUMES = 1000
#: a new thin pool takes this share of the VG's free space when no size is given
THIN_POOL_FREE_PERCENT = 90

Actions = List[str]


def metadata_size(max_volumes: int) -> int:
    """Each PV's metadata area for a pool meant to hold *max_volumes* LVs (volumes and snapshots).

    LVM keeps the old and the new metadata text in the area (a ring buffer),
    so the text may fill half of it.
    """
    if max_volumes < 1:
        raise InvalidRequest(f"max_volumes must be at least 1, not {max_volumes}")
    return max(LVM_DEFAULT_METADATA, round_up(2 * max_volumes * LV_METADATA_BYTES, MiB))


@dataclasses.dataclass(frozen=True)
class PoolState:
    """What exists of a pool, as the pool module reports it."""

    spec: str
    exists: bool
    settings: Optional[Dict[str, Any]]
    disks: Tuple[str, ...] = ()
    volumes: int = 0
    snapshots: int = 0
    available_bytes: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def describe_pool(spec: PoolSpec, *, lvm_settings: lvm.LvmSettings = lvm.DEFAULT_SETTINGS) -> PoolState:
    """The pool as it is now: its disks, stored settings, volume count and the capacity the agent reports."""
    if not _exists(spec, lvm_settings):
        return PoolState(spec.text, False, None)
    stored = stored_settings(spec, lvm_settings=lvm_settings)
    disks: Tuple[str, ...] = ()
    if spec.kind != FILE:
        disks = tuple(sorted(pv.name for pv in lvm.physical_volumes(spec.location, settings=lvm_settings)))
    pool = open_pool(spec, create_layout=False, lvm_settings=lvm_settings)
    available = pool.available_bytes() // pool.unit * pool.unit  # as the agent's GetCapacity reports it
    return PoolState(spec.text, True, stored.values(spec.kind) if stored else None, disks,
                     len(pool.volume_ids()), len(pool.snapshot_ids()), available)


def _exists(spec: PoolSpec, lvm_settings: lvm.LvmSettings) -> bool:
    if spec.kind == FILE:
        return os.path.isdir(spec.location)
    try:
        lvm.volume_group(spec.location, settings=lvm_settings)
    except NotFound:
        return False
    if spec.kind == LVMTHIN:
        return _thin_pool(spec, lvm_settings) is not None
    return True


def _thin_pool(spec: PoolSpec, lvm_settings: lvm.LvmSettings) -> Optional[lvm.LogicalVolume]:
    found = lvm.logical_volume(spec.location, spec.thin_pool or "", settings=lvm_settings)
    if found is not None and not found.attr.thin_pool:
        raise Precondition(f"{found.full_name} exists and is not a thin pool")
    return found


def ensure_pool(spec: str, settings: PoolSettings, *, disks: Sequence[str] = (),
                max_volumes: int = DEFAULT_MAX_VOLUMES, thin_pool_size: Optional[int] = None,
                force: bool = False, check_mode: bool = False,
                lvm_settings: lvm.LvmSettings = lvm.DEFAULT_SETTINGS) -> Actions:
    """Make the pool *spec* names exist with *settings* stored; return what was (or would be) done.

    LVM pools are built on *disks*: each must be blank (``blkid.examine``: no
    signature, first and last MiB zeros) or an orphan PV, unless *force*, which
    lets LVM wipe the signatures it finds.  An existing VG is kept as it is: its
    disks must be among *disks* when any are given (disks are never added).
    """
    parsed = parse_pool_spec(spec)
    if parsed.kind == LVMTHIN and settings.activation != "dm":
        raise InvalidRequest("an lvmthin pool needs device-mapper activation (dm)")
    if parsed.kind == FILE:
        if disks:
            raise InvalidRequest("a file pool lives in a directory: disks are for lvm and lvmthin pools")
        actions = _ensure_directory(parsed, check_mode)
    new_vg = False  # vgcreate stores the settings with the VG it makes
    if parsed.kind != FILE:
        actions = _ensure_vg(parsed, settings, disks, max_volumes, force, check_mode, lvm_settings)
        new_vg = bool(actions)
        if parsed.kind == LVMTHIN:
            actions += _ensure_thin_pool(parsed, thin_pool_size, check_mode, new_vg, lvm_settings)
    stored = None if new_vg else stored_settings(parsed, lvm_settings=lvm_settings)
    if not new_vg and (stored is None or stored.values(parsed.kind) != settings.values(parsed.kind)):
        actions.append(f"store settings {settings.values(parsed.kind)} in {_where(parsed)}")
        if not check_mode:
            store_settings(parsed, settings, lvm_settings=lvm_settings)
    return actions


def _where(spec: PoolSpec) -> str:
    return settings_path(spec) if spec.kind == FILE else f"the tags of VG {spec.location}"


def _ensure_directory(spec: PoolSpec, check_mode: bool) -> Actions:
    if os.path.isdir(spec.location):
        actions: Actions = []
    elif os.path.exists(spec.location):
        raise Precondition(f"{spec.location} exists and is not a directory")
    else:
        actions = [f"create directory {spec.location}"]
    if not check_mode:
        os.makedirs(spec.location, mode=0o700, exist_ok=True)
        open_pool(spec)  # makes the layout (volumes/, snapshots/) as the agent would
    return actions


def _ensure_vg(spec: PoolSpec, settings: PoolSettings, disks: Sequence[str], max_volumes: int, force: bool,
               check_mode: bool, lvm_settings: lvm.LvmSettings) -> Actions:
    vg = lvm.check_vg_name(spec.location)
    try:
        lvm.volume_group(vg, settings=lvm_settings)
    except NotFound:
        pass
    else:
        if disks:
            have = {pv.name for pv in lvm.physical_volumes(vg, settings=lvm_settings)}
            missing = sorted(set(map(os.path.realpath, disks)) - set(map(os.path.realpath, have)))
            if missing:
                raise Precondition(f"VG {vg} exists on {', '.join(sorted(have))}; {', '.join(missing)} is not "
                                   "one of its disks, and disks are never added to an existing VG")
        return []
    if not disks:
        raise InvalidRequest(f"VG {vg} does not exist and no disks are given to make it on")
    orphans = {pv.name for pv in lvm.physical_volumes(settings=lvm_settings) if pv.vg_name is None}
    for disk in disks:
        _check_disk(disk, disk in orphans, force)
    size = metadata_size(max_volumes)
    if not check_mode:
        lvm.create_vg(vg, list(disks), settings.to_tags(), metadata_size=size, wipe_signatures=force,
                      settings=lvm_settings)
    return [f"create VG {vg} on {', '.join(disks)} with {size // MiB} MiB of metadata per disk "
            f"(max_volumes {max_volumes}) and settings {settings.values(spec.kind)}"]


def _check_disk(disk: str, orphan_pv: bool, force: bool) -> None:
    if not devices.is_block_device(disk):
        raise InvalidRequest(f"disk {disk} is not a block device")
    if orphan_pv or force:
        return
    found = blkid.examine(disk)
    if not found.blank:
        raise Precondition(f"disk {disk} holds {found.describe()}; refusing to make it a PV "
                           "(force: true takes it anyway, and what it holds is lost)")


def _ensure_thin_pool(spec: PoolSpec, size: Optional[int], check_mode: bool, new_vg: bool,
                      lvm_settings: lvm.LvmSettings) -> Actions:
    if not new_vg and _thin_pool(spec, lvm_settings) is not None:
        return []
    what = f"{size} bytes" if size else f"{THIN_POOL_FREE_PERCENT}% of the VG's free space"
    if not check_mode:
        lvm.create_thin_pool(spec.location, spec.thin_pool or "", size, free_percent=THIN_POOL_FREE_PERCENT,
                             settings=lvm_settings)
    return [f"create thin pool {spec.location}/{spec.thin_pool} of {what}"]


def remove_pool(spec: str, *, disks: Sequence[str] = (), force: bool = False, check_mode: bool = False,
                lvm_settings: lvm.LvmSettings = lvm.DEFAULT_SETTINGS) -> Actions:
    """Remove the pool *spec* names; refused (InUse) while it holds volumes or snapshots, unless *force*.

    *force* deletes Basalt's own volumes and snapshots with the pool, never
    anything else: a VG that still holds other LVs is refused.  The PV labels
    of the VG's disks (and of *disks*, should a crash have left them orphan) are
    removed last, so the disks end blank of LVM.
    """
    parsed = parse_pool_spec(spec)
    state = describe_pool(parsed, lvm_settings=lvm_settings)
    if state.exists and (state.volumes or state.snapshots) and not force:
        raise InUse(f"pool {parsed.text} holds {state.volumes} volumes and {state.snapshots} snapshots; "
                    "delete them first, or force: true deletes them with the pool")
    if parsed.kind == FILE:
        return _remove_directory(parsed, check_mode) if state.exists else []
    return _remove_vg(parsed, disks, check_mode, lvm_settings)


def _remove_directory(spec: PoolSpec, check_mode: bool) -> Actions:
    actions = [f"remove the pool's volumes, snapshots and settings under {spec.location}"]
    if not check_mode:
        for part in ("volumes", "snapshots"):
            shutil.rmtree(os.path.join(spec.location, part), ignore_errors=True)
        try:
            os.unlink(settings_path(spec))
        except FileNotFoundError:
            pass
    try:
        leftover = sorted(os.listdir(spec.location))
    except FileNotFoundError:
        return actions
    if check_mode or leftover:  # other files stay, and so does their directory
        return actions + ([f"keep {spec.location}: it also holds {', '.join(leftover)}"] if leftover else [])
    os.rmdir(spec.location)
    return [*actions, f"remove directory {spec.location}"]


def _remove_vg(spec: PoolSpec, disks: Sequence[str], check_mode: bool, lvm_settings: lvm.LvmSettings) -> Actions:
    vg = spec.location
    actions: Actions = []
    vg_pvs = set()
    try:
        lvm.volume_group(vg, settings=lvm_settings)
    except NotFound:
        pass
    else:
        vg_pvs = {pv.name for pv in lvm.physical_volumes(vg, settings=lvm_settings)}
        ours = lvm.logical_volumes(vg, lvm.MANAGED_TAG, settings=lvm_settings)
        # snapshots (and copies' point-in-time snapshots) before the volumes they may depend on
        ours.sort(key=lambda lv: not lv.name.startswith((SNAPSHOT_LV_PREFIX, POINT_IN_TIME_PREFIX)))
        names = [lv.name for lv in ours]
        if spec.kind == LVMTHIN and _thin_pool(spec, lvm_settings) is not None:
            names.append(spec.thin_pool or "")
        for name in names:
            actions.append(f"remove LV {vg}/{name}")
            if not check_mode:
                lvm.remove(vg, name, settings=lvm_settings)
        actions.append(f"remove VG {vg}")
        if not check_mode:
            lvm.remove_vg(vg, settings=lvm_settings)  # InUse while LVs of others remain
    orphans = {pv.name for pv in lvm.physical_volumes(settings=lvm_settings) if pv.vg_name is None}
    for pv in sorted(vg_pvs | set(disks)):
        if pv in orphans or (check_mode and pv in vg_pvs):
            actions.append(f"remove the PV label from {pv}")
            if not check_mode:
                lvm.remove_pv(pv, settings=lvm_settings)
    return actions
