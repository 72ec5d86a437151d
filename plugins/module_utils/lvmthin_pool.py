"""The ``lvmthin`` pool: each volume is a thin LV in one thin pool, its record in its tags (as ``lvm_pool``).

Snapshots, clones and restores are thin snapshots: instant, sharing blocks.
The thin pool may be over-provisioned up to the pool's ratio, and its volumes
report abnormal once its data or metadata use passes the pool's threshold.
"""

from __future__ import annotations

import threading
from typing import List, Optional, Tuple, Union

from . import lvm
from .errors import InvalidRequest, NotFound, Precondition
from .lvm_index import follows
from .lvm_pool import THIN, LvmPool, lv_name
from .lvm_report import LvAttr, Segment
from .model import Snapshot, Volume
from .pool import Storage
from .pool_spec import DEFAULTS, PoolSettings

#: metadata commits of one thin LV's lvcreate or lvremove: the LV with a message for the thin pool, then the
#: pool's new transaction id with the message gone (lvm2's update_pool_lv; measured on 2.03.16: the seqno moves
#: by two, and ``--nolocking``, which would let the pool hold the VG's lock around it, is refused for thin LVs)
THIN_COMMITS = 2


class LvmThinPool(LvmPool):
    """Thin LVs in one thin pool: instant snapshots, clones and restores (thin snapshots)."""

    kind = "lvmthin"
    allocation_checks_space = False  # LVM lets thin LVs over-provision the pool: the ratio is ours to check

    def __init__(self, vg: str, thin_pool: str, options: PoolSettings = DEFAULTS,
                 settings: lvm.LvmSettings = lvm.DEFAULT_SETTINGS) -> None:
        if options.activation != "dm":
            raise InvalidRequest("thin volumes need device-mapper activation (dm_thin_pool); loop cannot reach them")
        super().__init__(vg, options, settings)
        self.thin_pool = lvm.check_lv_name(thin_pool)
        # (seqno, the thin pool's size, the virtual bytes of every thin LV in it) from one listing at that seqno,
        # kept by the pool's own creates and removes while each moves the seqno by one (as lvm_index)
        self._usage: Optional[Tuple[int, int, int]] = None
        self._usage_lock = threading.Lock()

    @property
    def location(self) -> str:
        return f"{self.vg}/{self.thin_pool}"

    @property
    def snapshot_parameter_keys(self) -> Tuple[str, ...]:
        return ()

    def _pool_lv(self) -> lvm.LogicalVolume:
        found = lvm.logical_volume(self.vg, self.thin_pool, settings=self.settings)
        if found is None or not found.attr.thin_pool:
            raise Precondition(f"{self.vg}/{self.thin_pool} is not a thin pool")
        return found

    def probe(self) -> None:
        super().probe()
        try:
            self._pool_lv()
        except NotFound as error:
            raise Precondition(str(error)) from error

    def _allocate_volume(self, volume: Volume, tags: List[str]) -> None:
        name = lv_name(volume.id)
        if volume.source is None:
            extent = self._extent_size()
            before = self._seqno()
            try:
                size = lvm.create_thin(self.vg, self.thin_pool, name, volume.size, tags, extent_size=extent,
                                       settings=self.settings)
            except BaseException:
                self._untracked()
                raise
            made = self._thin_lv(name, size, tags)
            self._followed(name, made, before, self._seqno(), size)
            self._operation.made = made
        else:
            # A clone or a restore is a thin snapshot of its source: instant, shares blocks.
            origin = self._require_lv(volume.source.id)
            lvm.create_thin_snapshot(self.vg, origin.name, name, tags, activation_skip=False,
                                     settings=self.settings)

    def ready_when_allocated(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> bool:
        return source is None  # unprovisioned thin blocks read as zeroes: one lvcreate, ready at once

    def provision_volume(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> Optional[str]:
        if source is None:
            return None  # unprovisioned thin blocks read as zeroes
        found = self._require_lv(volume.id)
        if found.size < volume.size:
            try:
                lvm.extend(self.vg, found.name, volume.size, extent_size=self._extent_size(),
                           settings=self.settings)
            finally:
                self._changed()
        return THIN

    def _allocate_snapshot(self, snapshot: Snapshot, tags: List[str]) -> None:
        origin = self._require_lv(snapshot.source_volume_id)
        lvm.create_thin_snapshot(self.vg, origin.name, lv_name(snapshot.id), tags, settings=self.settings)

    def take_snapshot(self, snapshot: Snapshot, volume: Volume) -> Optional[str]:
        return THIN  # taken, point in time, by _allocate_snapshot

    def _thin_lv(self, name: str, size: int, tags: List[str]) -> lvm.LogicalVolume:
        """The thin LV ``lvcreate --type thin`` just made, as lvs reports it with device-mapper (active, unopened;
        its uuid and the pool's zeroing flag are not read: nothing uses them)."""
        segment = Segment("thin", 0, size // self._extent_size(), (), "")
        return lvm.LogicalVolume(name=name, vg_name=self.vg, uuid="", size=size, attr=LvAttr.parse("Vwi-a-t---"),
                                 tags=tuple(sorted(tags)), pool_lv=self.thin_pool, origin=None, data_percent=0.0,
                                 metadata_percent=None, path=f"/dev/{self.vg}/{name}", segments=(segment,))

    def _followed(self, name: str, lv: Optional[lvm.LogicalVolume], before: Optional[int], after: Optional[int],
                  change: int) -> None:
        """The pool's thin lvcreate or lvremove made *name* *lv* (None: removed) and changed the virtual bytes in
        the thin pool by *change*: the index and the pool's use follow it when the seqno moved by exactly its
        THIN_COMMITS (lvm_index.follows), else they are read again when next needed."""
        self._placer.free.committed(before, after=after, commits=THIN_COMMITS)
        self._index.committed(name, lv, before, after, commits=THIN_COMMITS)
        with self._usage_lock:
            known = self._usage
            self._usage = (after, known[1], known[2] + change) if (
                known is not None and after is not None and follows(before, after, known[0], THIN_COMMITS)) else None

    def _follow_removal(self, found: lvm.LogicalVolume, before: Optional[int]) -> None:
        self._followed(found.name, None, before, self._seqno(), -found.size if found.pool_lv == self.thin_pool else 0)

    def _untracked(self) -> None:
        super()._untracked()
        with self._usage_lock:
            self._usage = None

    def free_bytes(self) -> int:
        """Virtual bytes left under the over-provisioning ratio (other LVs in the pool count too): from one
        ``lvs`` of the VG, or none while the VG's seqno says nobody else committed since."""
        now = self._seqno()
        with self._usage_lock:
            known = self._usage if self._usage is not None and now is not None and self._usage[0] == now else None
        if known is None:
            every = lvm.logical_volumes(self.vg, None, settings=self.settings)  # the pool and its LVs
            pool = next((lv for lv in every if lv.name == self.thin_pool and lv.attr.thin_pool), None)
            if pool is None:
                raise Precondition(f"{self.vg}/{self.thin_pool} is not a thin pool")
            known = (now or 0, pool.size, sum(lv.size for lv in every if lv.pool_lv == self.thin_pool))
            with self._usage_lock:
                self._usage = known if now is not None and self._seqno() == now else None
        return max(0, int(known[1] * self.options.overprovision) - known[2])

    def storage(self) -> Storage:
        pool = self._pool_lv()
        data = pool.data_percent or 0.0
        return Storage(pool.size, int(pool.size * data / 100), data, pool.metadata_percent or 0.0)

    def busy_reason(self, volume: Volume) -> Optional[str]:
        found = self._lv(volume.id)
        return self._in_use(found) if found else None  # thin snapshots do not depend on their origin

    def _problem(self, volume: Volume, found: Optional[lvm.LogicalVolume]) -> Optional[str]:
        problem = super()._problem(volume, found)
        if problem:
            return problem
        pool = self._pool_lv()
        for what, used in (("data", pool.data_percent), ("metadata", pool.metadata_percent)):
            if used is not None and used >= self.options.full_percent:
                return f"thin pool {pool.full_name} {what} is {used:.1f}% full (threshold {self.options.full_percent}%)"
        return None
