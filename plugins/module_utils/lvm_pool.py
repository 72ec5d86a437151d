"""The ``lvm`` (thick) and ``lvmthin`` pools: each volume is an LV, its record lives in its tags.

An LV is ours only if it carries ``basalt.managed``; every listing selects on that tag, so other LVs in a shared VG
are never touched or counted.  The record (CSI name, state, source, parameters, publications) is JSON stored in
tags; ``basalt.state=ready`` is the provisioning-complete marker.  A record is replaced in one ``lvchange`` (one
metadata commit), so a crash never leaves half of it.

LV names derive from ids: ``csi-<hex>`` for volumes, ``csi-snap-<hex>`` for
snapshots, where ``<hex>`` is the 32 hex digits of the id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
from typing import Callable, Collection, Dict, Iterator, List, Optional, Tuple, Union

from . import device_use, devices, losetup, lvm, progress, runner
from .activation import ACTIVATORS, Activator, LoopActivator, active
from .errors import InvalidRequest, NotFound, Precondition
from .lvm_index import LvIndex
from .lvm_placing import Placer
from .model import (
    CREATING,
    READY,
    SNAPSHOT_PREFIX,
    SOURCE_VOLUME,
    VOLUME_PREFIX,
    Snapshot,
    Volume,
    is_snapshot_id,
    is_volume_id,
)
from .pool import Orphan, Pool, Storage
from .pool_spec import DEFAULTS, PoolSettings

log = logging.getLogger(__name__)

KIND_TAG = "basalt.kind="
STATE_TAG = "basalt.state="
RECORD_KEY = "basalt.record"
VOLUME_LV_PREFIX = "csi-"
SNAPSHOT_LV_PREFIX = "csi-snap-"
COPY_CHUNK = 4 << 20

# Short-lived COW snapshots that make a copy of an LV in use point in time.
POINT_IN_TIME_PREFIX = "csi-pit-"
POINT_IN_TIME_TAG = "basalt.point-in-time"

SNAPSHOT_MODE_KEY = "basalt.dev/snapshot-mode"
COW = "cow"
COPY = "copy"
THIN = "thin"


def lv_name(object_id: str) -> str:
    if is_volume_id(object_id):
        return VOLUME_LV_PREFIX + object_id[len(VOLUME_PREFIX):]
    if is_snapshot_id(object_id):
        return SNAPSHOT_LV_PREFIX + object_id[len(SNAPSHOT_PREFIX):]
    raise InvalidRequest(f"{object_id!r} is not a Basalt volume or snapshot id")


class LvmPool(Pool):
    kind = "lvm"
    allocation_checks_space = True  # lvcreate refuses with "insufficient free space": NoSpace
    probe_runs_commands = True  # vgs
    releases_record_with_data = True  # the LV is the record: one lvremove drops both
    creates_exclusively = True  # lvcreate refuses an existing LV name

    def __init__(self, vg: str, options: PoolSettings = DEFAULTS,
                 settings: lvm.LvmSettings = lvm.DEFAULT_SETTINGS) -> None:
        super().__init__(options.capacity_limit)
        self.vg = lvm.check_vg_name(vg)
        self._extent: Optional[int] = None
        #: the pool's own settings (pool_spec); *settings* say how the LVM tools run
        self.options = options
        self.settings = settings
        self.activator: Activator = ACTIVATORS[options.activation](settings)
        # Per thread: the LVs read during the current operation (None outside one).
        self._operation = threading.local()
        # Where new LVs go, chosen here so that where they lie is known without a read-back (lvm_placing), and
        # this pool's LVs between operations while nobody else commits to the VG (lvm_index).
        self._placer = Placer(self.vg, options.alloc, settings)
        self._index = LvIndex(self.vg)

    @property
    def location(self) -> str:
        return self.vg

    @property
    def unit(self) -> int:
        """LVs are whole extents: sizes handed out are exactly what LVM allocates."""
        return self._extent_size()

    @property
    def snapshot_parameter_keys(self) -> Tuple[str, ...]:
        return (SNAPSHOT_MODE_KEY,)

    def probe(self) -> None:
        try:
            lvm.volume_group(self.vg, settings=self.settings)
        except NotFound as error:
            raise Precondition(f"volume group {self.vg} is not available: {error}") from error

    # -- records -------------------------------------------------------------
    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """Read each LV once per operation (an LVM command costs 50-100 ms, most of an RPC): the caller holds the
        objects' locks, so nobody else changes their LVs meanwhile, and what we read stays true until we change it
        ourselves (a retag updates what we know; any other change forgets it all)."""
        if self._seen() is not None:  # nested: the outermost operation owns the reads
            yield
            return
        self._operation.lvs = {}
        try:
            yield
        finally:
            self._operation.lvs = None

    def _seen(self) -> Optional[Dict[str, Optional[lvm.LogicalVolume]]]:
        seen: Optional[Dict[str, Optional[lvm.LogicalVolume]]] = getattr(self._operation, "lvs", None)
        return seen

    def _changed(self) -> None:
        """An LV was created, removed, resized or (de)activated: read again what the operation needs
        (except an LV just created where the pool placed it: known as lvcreate was told to make it)."""
        seen = self._seen()
        made: Optional[lvm.LogicalVolume] = getattr(self._operation, "made", None)
        self._operation.made = None
        if seen is not None:
            seen.clear()
            if made is not None:
                seen[made.name] = made

    def _lvs(self) -> List[lvm.LogicalVolume]:
        """The pool's own LVs: from the index while nobody else committed (ListVolumes, GetCapacity, the metrics
        and the clean-up would each list the whole VG again, 2 s per lvs at 10,000 LVs), else with lvs."""
        known = self._index.listing()
        if known is not None:
            current = [self.activator.current(found) for found in known]  # (dm: activation is no commit)
            if None not in current:
                return [found for found in current if found is not None]
        before = self._seqno()
        found = lvm.logical_volumes(self.vg, lvm.MANAGED_TAG, settings=self.settings)
        if before is not None:
            self._index.load(self._pvs(), found, before)
        return found

    def _pvs(self) -> List[str]:
        return [pv.name for pv in self._placer.pvs()]

    def _seqno(self) -> Optional[int]:  # off the PVs (three preads each): loop devices or not, they are readable
        return self._index.read_seqno(self._pvs())

    def _untracked(self) -> None:
        """A change the free-extent map and the index do not follow: both are read again when needed."""
        self._placer.free.forget()
        self._index.forget()

    def _lv(self, object_id: str, fresh: bool = False) -> Optional[lvm.LogicalVolume]:
        """*fresh*: read with lvs, not from the index (dm: an LV's health is the kernel's, which moves no seqno)."""
        name = lv_name(object_id)
        seen = self._seen()
        if seen is not None and name in seen and not fresh:
            return seen[name]
        if not fresh and self._index.reload_due() and self._seqno() is not None:
            self._lvs()  # e.g. someone else committed: read them all again, then answer from the index
        known, found = self._index.lookup(name) if not fresh else (False, None)
        if found is not None:  # (dm: whether it is active and open now, from the kernel)
            known = (found := self.activator.current(found)) is not None
        if not known:
            found = lvm.logical_volume(self.vg, name, settings=self.settings)
        managed = found if found is not None and lvm.MANAGED_TAG in found.tags else None
        if seen is not None:
            seen[name] = managed
        return managed

    def _require_lv(self, object_id: str) -> lvm.LogicalVolume:
        found = self._lv(object_id)
        if found is None:
            raise NotFound(f"logical volume {self.vg}/{lv_name(object_id)} for {object_id} does not exist")
        return found

    @staticmethod
    def _record_tags(kind: str, record: Union[Volume, Snapshot]) -> List[str]:
        document = record.to_dict()
        # A volume's size is its LV's (lvextend changes it); a snapshot keeps its own, because
        # a classic COW snapshot LV reports its COW space, not the size of its data, as lv_size.
        for derived in ("id", "state", "pool", *(("size",) if kind == "volume" else ())):
            document.pop(derived, None)
        text = json.dumps(document, separators=(",", ":"), sort_keys=True)
        return [lvm.MANAGED_TAG, KIND_TAG + kind, STATE_TAG + record.state,
                *lvm.encode_tag_value(RECORD_KEY, text)]

    def _decode(self, found: lvm.LogicalVolume, object_id: str) -> Dict[str, object]:
        text = lvm.decode_tag_value(found.tags, RECORD_KEY)
        states = [t[len(STATE_TAG):] for t in found.tags if t.startswith(STATE_TAG)]
        if text is None or len(states) != 1:
            raise Precondition(f"{found.full_name} carries {lvm.MANAGED_TAG} but no complete Basalt record")
        document: Dict[str, object] = json.loads(text)
        document.update(id=object_id, state=states[0], pool=self.kind)
        if is_volume_id(object_id) or "size" not in document:  # (snapshot records once lacked it)
            document["size"] = found.size
        return document

    def _object_id(self, found: lvm.LogicalVolume) -> Optional[str]:
        if found.name.startswith(SNAPSHOT_LV_PREFIX):
            return SNAPSHOT_PREFIX + found.name[len(SNAPSHOT_LV_PREFIX):]
        if found.name.startswith(VOLUME_LV_PREFIX):
            return VOLUME_PREFIX + found.name[len(VOLUME_LV_PREFIX):]
        return None

    def load_volume(self, volume_id: str) -> Optional[Volume]:
        found = self._lv(volume_id) if is_volume_id(volume_id) else None
        return Volume.from_dict(self._decode(found, volume_id)) if found else None

    def load_snapshot(self, snapshot_id: str) -> Optional[Snapshot]:
        found = self._lv(snapshot_id) if is_snapshot_id(snapshot_id) else None
        return Snapshot.from_dict(self._decode(found, snapshot_id)) if found else None

    def all_volumes(self) -> List[Volume]:
        return [Volume.from_dict(self._decode(lv, oid)) for lv, oid in self._owned(is_volume_id)]

    def all_snapshots(self) -> List[Snapshot]:
        return [Snapshot.from_dict(self._decode(lv, oid)) for lv, oid in self._owned(is_snapshot_id)]

    def _owned(self, kind_of: Callable[[str], bool]) -> List[Tuple[lvm.LogicalVolume, str]]:
        pairs = []
        for found in self._lvs():
            object_id = self._object_id(found)
            if object_id is not None and kind_of(object_id):
                pairs.append((found, object_id))
        return pairs

    def provisioned_bytes(self) -> int:
        """What Basalt's LVs take (a COW snapshot: its COW space), from one listing for both kinds."""
        return sum(found.size for found, _oid in self._owned(lambda _oid: True))

    def volume_ids(self) -> List[str]:
        return sorted(oid for _lv, oid in self._owned(is_volume_id))

    def snapshot_ids(self) -> List[str]:
        return sorted(oid for _lv, oid in self._owned(is_snapshot_id))

    def _save(self, kind: str, record: Union[Volume, Snapshot], create: Callable[[List[str]], None]) -> None:
        found = self._lv(record.id)
        wanted = self._record_tags(kind, record)
        if found is None:
            if record.state != CREATING:
                return  # the LV is gone: nothing left to describe
            try:
                create(wanted)
            finally:
                self._changed()
            return
        add, stale = [t for t in wanted if t not in found.tags], [t for t in found.tags if t not in wanted]
        retagged = dataclasses.replace(found, tags=tuple(sorted(wanted)))
        if add or stale:
            before = self._seqno()
            try:
                lvm.change_tags(self.vg, found.name, add=add, remove=stale, settings=self.settings)
            except BaseException:
                self._untracked()
                raise
            after = self._seqno()
            self._placer.free.committed(before, after=after)
            self._index.committed(found.name, retagged, before, after)
        seen = self._seen()
        if seen is not None:
            seen[found.name] = retagged

    def save_volume(self, volume: Volume) -> None:
        self._save("volume", volume, lambda tags: self._allocate_volume(volume, tags))

    def create_volume(self, volume: Volume) -> None:
        """One lvcreate carrying the whole record (``--addtag``): no lookup first, no read-back.

        A blank volume the pool places (loop activation, lvm_placing) is ready in that same commit, its ends
        zeroed on the PV just before it: ``volume.state`` then says ready, and nothing is left to provision.
        """
        try:
            if volume.source is None and volume.state == CREATING:
                ready = dataclasses.replace(volume, state=READY)
                if self._place(ready, self._record_tags("volume", ready), zero_ends=True):
                    volume.state = READY
                    return
            self._allocate_volume(volume, self._record_tags("volume", volume))
        finally:
            self._changed()

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._save("snapshot", snapshot, lambda tags: self._allocate_snapshot(snapshot, tags))

    def forget_volume(self, volume_id: str) -> None:
        """The LV was the record; release_volume removed both."""

    def forget_snapshot(self, snapshot_id: str) -> None:
        """The LV was the record; release_snapshot removed both."""

    # -- data ----------------------------------------------------------------
    def _extent_size(self) -> int:
        # A VG's extent size never changes once it exists: read it once.
        if self._extent is None:
            self._extent = lvm.volume_group(self.vg, settings=self.settings).extent_size
        return self._extent

    def _allocate_volume(self, volume: Volume, tags: List[str]) -> None:
        """Claim the volume's space: a new LV carrying its creating record."""
        if volume.source is not None and volume.source.kind == SOURCE_VOLUME:
            self._check_copyable(self._require_lv(volume.source.id), volume.source.id)  # before claiming space
        if self._place(volume, tags, zero_ends=False):
            return
        try:  # LVM chooses: where it went is read back when needed
            lvm.create_linear(self.vg, lv_name(volume.id), volume.size, tags, alloc=self.options.alloc,
                              extent_size=self._extent_size(), zero=self.activator.name == "dm",
                              settings=self.settings)
        finally:
            self._untracked()

    def _place(self, volume: Volume, tags: List[str], zero_ends: bool) -> bool:
        """Make its LV where the pool chooses, which saves reading back where it went (lvm_placing); False when it
        placed nothing.  With device-mapper that lvcreate maps it too (measured in the VM: bench/README.md)."""
        name = lv_name(volume.id)
        try:
            made = self._placer.create(name, volume.size, tags, extent=self._extent_size(), zero_ends=zero_ends,
                                       active=self.activator.name == "dm",
                                       committed=functools.partial(self._index.committed, name))
        except BaseException:
            self._index.forget()
            raise
        self._operation.made = made
        return made is not None

    def provision_volume(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> Optional[str]:
        target = self._require_lv(volume.id)
        if source is None:
            # The new LV's extents may hold an old volume's data, and LVM zeroes at most its first 4 KiB (nothing
            # without device-mapper): clear both ends ourselves, so blkid.examine sees a blank device, never old data.
            self._clear_ends(target)
            return None
        origin = self._require_lv(source.id)
        # A classic snapshot LV reports its COW space as its size: copy the size of the record
        # (copying the COW space's length truncated restored filesystems: seen on a real kernel).
        self._copy(origin, target, source if isinstance(source, Volume) else None, length=source.size)
        self._clear_ends(target, after=source.size)  # a larger copy's tail holds old data too
        return COPY

    def _clear_ends(self, target: lvm.LogicalVolume, after: int = 0) -> None:
        """Zero the first and last BLANK_ENDS bytes of *target*, except what lies before *after*."""
        ranges = devices.end_ranges(target.size, after)
        if not ranges:
            return
        location = self.activator.unmapped_location(target)
        if location is not None:  # loop activation, nothing attached: straight on the PV, 4 losetup calls fewer
            devices.write_zeros(location.device, ranges, location.offset)
            return
        with active(self.activator, target) as device:
            devices.write_zeros(device, ranges)

    def _copy(self, origin: lvm.LogicalVolume, target: lvm.LogicalVolume, volume: Optional[Volume],
              length: int = 0) -> None:
        """Copy every byte of *origin* into *target* (a crash midway leaves a creating record: retried).

        An origin in use is copied through a short-lived COW snapshot taken while its filesystem is frozen for an
        instant: the copy is point in time, and the origin pays the COW cost only while the copy runs."""
        if volume is not None:
            self._check_copyable(origin, volume.id)
        in_use = self.activator.device(origin)
        if in_use is None or volume is None:  # idle, or a snapshot (already point in time)
            self._copy_bytes(origin, target, length)
            return
        pit = POINT_IN_TIME_PREFIX + target.name[len(VOLUME_LV_PREFIX):]
        self._remove_if_present(pit)  # left by a crash during an earlier attempt
        cow = max(origin.size * self.options.cow_percent // 100, 1 << 20)
        # Device-mapper suspends the origin, which freezes its filesystem, for the instant
        # of the snapshot (freezing it ourselves first makes that suspend fail: measured).
        self._untracked()
        lvm.create_cow_snapshot(self.vg, origin.name, pit, cow, [POINT_IN_TIME_TAG],
                                extent_size=self._extent_size(), settings=self.settings)
        try:
            snapshot = lvm.logical_volume(self.vg, pit, settings=self.settings)
            if snapshot is None:
                raise Precondition(f"the point-in-time snapshot {self.vg}/{pit} vanished")
            self._copy_bytes(snapshot, target, length=origin.size)
            after = lvm.logical_volume(self.vg, pit, settings=self.settings)
            if after is None or after.attr.state == "invalid snapshot":
                raise Precondition(f"the COW space of {self.vg}/{pit} filled up while {origin.full_name} was "
                                   "copied; raise --lvm-cow-percent or copy while the volume is idle")
        finally:
            self._remove_if_present(pit)

    def _copy_bytes(self, origin: lvm.LogicalVolume, target: lvm.LogicalVolume, length: int = 0) -> None:
        total = length or origin.size
        with active(self.activator, origin) as source, active(self.activator, target) as dest:
            with open(source, "rb", buffering=0) as src, open(dest, "r+b", buffering=0) as dst, \
                    progress.tracked(f"copying {origin.name}", total) as shown:
                copied = 0
                while copied < total:
                    chunk = src.read(min(COPY_CHUNK, total - copied))
                    if not chunk:  # never hand out a silently truncated copy
                        raise Precondition(f"{source} ({origin.full_name}) ended after {copied} of {total} bytes")
                    dst.write(chunk)
                    copied += len(chunk)
                    shown(copied)
                os.fsync(dst.fileno())
        log.info("copied %d bytes from %s to %s", copied, origin.full_name, target.full_name)

    def _remove_if_present(self, name: str) -> None:
        found = lvm.logical_volume(self.vg, name, settings=self.settings)
        if found is not None and POINT_IN_TIME_TAG in found.tags:
            # No deactivation first: for a COW snapshot LVM would take its origin down too.
            self._untracked()
            lvm.remove(self.vg, name, settings=self.settings)

    def orphans(self) -> List[Orphan]:
        """Loop activation: loop devices over this VG's PVs at an offset where no LV lies any more, with what
        uses them (device_use).  A mapping that matches an LV (Basalt's or not) is that LV's and stays."""
        if not isinstance(self.activator, LoopActivator):
            return []
        group = lvm.volume_group(self.vg, settings=self.settings)
        pvs = lvm.physical_volumes(self.vg, settings=self.settings)
        if not pvs:
            return []
        mapped = set()
        for lv in lvm.logical_volumes(self.vg, None, settings=self.settings):
            try:
                location = lvm.linear_location(lv, pvs, group.extent_size)
            except (Precondition, NotFound):  # not one byte range: never loop-mapped
                continue
            mapped.add((location.device, location.offset))
        return [Orphan("loop device", loop.device, f"maps {loop.backing_file} at offset {loop.offset}, where "
                       f"no LV of {self.vg} lies", tuple(device_use.users([loop.device])))
                for loop in losetup.list_devices()
                if loop.backing_file in {pv.name for pv in pvs} and loop.offset >= min(pv.pe_start for pv in pvs)
                and (loop.backing_file, loop.offset) not in mapped]

    def _remove_orphan(self, orphan: Orphan) -> None:
        losetup.detach(orphan.name)

    def clean_leftovers(self) -> List[str]:
        """Point-in-time snapshots a crash left behind (they carry their own tag, never basalt.managed)."""
        leftovers = lvm.logical_volumes(self.vg, POINT_IN_TIME_TAG, settings=self.settings)
        for found in leftovers:
            self._remove_if_present(found.name)
        return [found.full_name for found in leftovers]

    def _in_use(self, found: lvm.LogicalVolume) -> Optional[str]:
        device = self.activator.device(found)
        if device and self.activator.name == "dm" and found.attr.device_open:
            # udev reads a new LV (blkid) while the lvcreate answered at its line waits for it: look again once
            # the LVM tools answered before their exit have ended (each within its own deadline)
            runner.settle()
            found = self.activator.current(found) or found
        # Device-mapper leaves new LVs active: only an open one is in use.
        if device and (self.activator.name != "dm" or found.attr.device_open):
            return f"in use as {device}"
        return None

    def _check_copyable(self, origin: lvm.LogicalVolume, volume_id: str) -> None:
        if self.activator.name != "dm" and self.activator.device(origin) is not None:
            raise Precondition(
                f"volume {volume_id} is in use on this node; a point-in-time copy of an LV in use needs the "
                "device-mapper snapshot target (dm_snapshot), which this kernel lacks"
            )

    def release_volume(self, volume: Volume) -> None:
        found = self._lv(volume.id)
        if found is not None:
            self.activator.release(found)
            self._remove(found)

    def _remove(self, found: lvm.LogicalVolume) -> None:
        before = self._seqno()
        try:
            # nothing LVM does after its commit concerns the pool; what it does under its lock, the next LVM
            # command waits for (its teardown is awaited aside)
            lvm.remove(self.vg, found.name, at_commit=True, settings=self.settings)
        except BaseException:
            self._untracked()
            raise
        finally:
            self._changed()  # (a COW snapshot's origin changes type too)
        self._follow_removal(found, before)

    def _follow_removal(self, found: lvm.LogicalVolume, before: Optional[int]) -> None:
        """The index and the free map follow the pool's lvremove of *found* (the seqno *before* it), or forget."""
        if found.segtype == "linear" and not (found.attr.origin or found.attr.snapshot):
            after = self._seqno()
            self._placer.free.committed(before, [r for segment in found.segments for r in segment.pe_ranges], after)
            self._index.committed(found.name, None, before, after)
        else:
            self._untracked()

    def resize_volume(self, volume: Volume, size: int) -> None:
        found = self._require_lv(volume.id)
        self._untracked()
        try:
            lvm.extend(self.vg, found.name, size, extent_size=self._extent_size(), settings=self.settings)
        finally:
            self._changed()
        grown = self._require_lv(volume.id)
        # The new extents may hold old data, and a volume grown before its first format
        # must stay blank (blkid.examine reads its last MiB); its filesystem, if any, ends
        # before the old size. A loop-attached volume keeps its old size until refreshed:
        # it is in use, so formatted, and its filesystem grows over the new space.
        if grown.pool_lv is None and (self.activator.name == "dm" or self.activator.device(grown) is None):
            self._clear_ends(grown, after=found.size)

    def _allocate_snapshot(self, snapshot: Snapshot, tags: List[str]) -> None:
        origin = self._require_lv(snapshot.source_volume_id)
        mode = snapshot.parameters.get(SNAPSHOT_MODE_KEY, self.options.snapshot_mode)
        if mode not in (COW, COPY):
            raise InvalidRequest(f"{SNAPSHOT_MODE_KEY} {mode!r} is not cow or copy")
        self._untracked()
        if mode == COW:
            cow = max(origin.size * self.options.cow_percent // 100, 1 << 20)
            lvm.create_cow_snapshot(self.vg, origin.name, lv_name(snapshot.id), cow, tags,
                                    extent_size=self._extent_size(), settings=self.settings)
        else:
            self._check_copyable(origin, snapshot.source_volume_id)  # before claiming any space
            lvm.create_linear(self.vg, lv_name(snapshot.id), origin.size, tags, alloc=self.options.alloc,
                              extent_size=self._extent_size(), zero=False, settings=self.settings)

    def take_snapshot(self, snapshot: Snapshot, volume: Volume) -> Optional[str]:
        found = self._require_lv(snapshot.id)
        if found.attr.snapshot:
            return COW
        self._copy(self._require_lv(volume.id), found, volume)
        return COPY

    def release_snapshot(self, snapshot: Snapshot) -> None:
        found = self._lv(snapshot.id)
        if found is not None:
            if not found.attr.snapshot:  # a copy: its copy's device, if any, goes first (a COW one has none)
                self.activator.release(found)
            self._remove(found)

    def free_bytes(self) -> int:
        return lvm.volume_group(self.vg, settings=self.settings).free

    def storage(self) -> Storage:
        group = lvm.volume_group(self.vg, settings=self.settings)
        return Storage(group.size, group.size - group.free)

    def busy_reason(self, volume: Volume) -> Optional[str]:
        found = self._lv(volume.id)
        if found is None:
            return None
        in_use = self._in_use(found)
        if in_use:
            return in_use
        if not found.attr.origin:  # its own lv_attr says whether any COW snapshot depends on it
            return None
        dependants = [lv.name for lv in self._lvs() if lv.origin == found.name and lv.attr.snapshot]
        if dependants:
            return f"it has COW snapshots {', '.join(dependants)}; delete them first"
        return None

    def volume_problem(self, volume: Volume) -> Optional[str]:
        return self._problem(volume, self._lv(volume.id, fresh=self.activator.name == "dm"))  # (dm: see _lv)

    def volume_problems(self, volumes: List[Volume]) -> Dict[str, Optional[str]]:
        found = {self._object_id(lv): lv for lv in self._lvs()}  # one lvs for them all
        return {volume.id: self._problem(volume, found.get(volume.id)) for volume in volumes}

    def _problem(self, volume: Volume, found: Optional[lvm.LogicalVolume]) -> Optional[str]:
        if found is None:
            return f"logical volume {self.vg}/{lv_name(volume.id)} is missing"
        if found.attr.partial or found.attr.failed:
            return f"logical volume {found.full_name} is {found.attr.health}"
        if found.size < volume.size:
            return f"logical volume {found.full_name} is {found.size} bytes, smaller than the volume's {volume.size}"
        return None

    # -- node side -----------------------------------------------------------
    def attach(self, volume: Volume) -> str:
        try:
            return self.activator.activate(self._require_lv(volume.id))
        finally:
            self._changed()

    def attached_device(self, volume: Volume) -> Optional[str]:
        found = self._lv(volume.id)
        return self.activator.device(found) if found else None

    def detach(self, volume: Volume) -> bool:
        found = self._lv(volume.id)
        try:
            return self.activator.deactivate(found) if found else False
        finally:
            self._changed()

    def refresh(self, volume: Volume) -> None:
        found = self._lv(volume.id)
        if found is not None and self.activator.device(found):
            self.activator.refresh(found)

    def detach_strays(self, wanted: Collection[str]) -> List[str]:
        names = {lv_name(object_id) for object_id in wanted}
        owned = [lv for lv, _oid in self._owned(lambda _oid: True)]  # one listing, not one per volume
        return self.activator.detach_strays(self.vg, owned, [lv for lv in owned if lv.name in names])
