"""The ``lvmthin`` pool: each volume is a thin LV in one thin pool, its record in its tags (as ``lvm_pool``).

Snapshots, clones and restores are thin snapshots: instant, sharing blocks.
The thin pool may be over-provisioned up to the pool's ratio, and its volumes
report abnormal once its data or metadata use passes the pool's threshold.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

from . import lvm
from .errors import InvalidRequest, NotFound, Precondition
from .lvm_pool import THIN, LvmPool, lv_name
from .model import Snapshot, Volume
from .pool import Storage
from .pool_spec import DEFAULTS, PoolSettings


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
            lvm.create_thin(self.vg, self.thin_pool, name, volume.size, tags, extent_size=self._extent_size(),
                            settings=self.settings)
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

    def free_bytes(self) -> int:
        """Virtual bytes left under the over-provisioning ratio (other LVs in the pool count too)."""
        every = lvm.logical_volumes(self.vg, None, settings=self.settings)  # one lvs: the pool and its LVs
        pool = next((lv for lv in every if lv.name == self.thin_pool and lv.attr.thin_pool), None)
        if pool is None:
            raise Precondition(f"{self.vg}/{self.thin_pool} is not a thin pool")
        virtual = sum(lv.size for lv in every if lv.pool_lv == self.thin_pool)
        return max(0, int(pool.size * self.options.overprovision) - virtual)

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
