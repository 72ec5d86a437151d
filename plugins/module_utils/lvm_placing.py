"""A new LV made in one LVM commit on extents the pool chose, with its ends zeroed first when asked.

Under LVM's own lock on the VG (lvm_lock), nobody else can change the VG, so
the free extents the pool's map holds at the VG's current seqno (lvm_extents)
are free and stay free: the pool zeroes both ends of the range on the PV
(fsync), then runs one ``lvcreate --nolocking`` onto exactly that range,
carrying the volume's final record (with device-mapper activation, LVM maps
the new LV in that command too).  A crash before lvcreate leaves zeroed free
extents (harmless); after it, a complete LV whose ends are zero (active or
not: a NodeStage activates it either way).

The create returns as soon as lvcreate says it created the LV (its one commit
is done), not at the tool's exit: the rest of lvcreate is awaited in the
background (``runner.run``'s *answered*), and the lock's end is lvcreate's
(lvm_lock ``hand_off``): at once where LVM keeps no backup (loop activation),
else once the VG's backup file is at the commit's seqno, else at the exit.
With device-mapper, lvcreate waits for udev to make the new LV's device names
between its ``created`` line and its backup (``lvcreate -vvvv`` on lvm2
2.03.16: "Syncing device names", the udev cookie "waiting for zero", then
"Creating volume group backup"; 130 ms of a 430 ms lvcreate in the VM tier's
guests), all under the lock, so the next LVM command, a NodeStage's
activation included, waits for the device names.  Only a creating LV (filled
through its device name next, without an LVM command first) answers once the
lock went.

Whenever that is not certain it zeroes nothing before the commit: LVM's
configuration does not guard the VG with file locks (lvmlockd), another of
the agent's creates holds the lock (queueing behind it would serialise
lvcreate processes from their start to their commit), the VG's seqno cannot
be read or is not the map's once the lock is held (someone committed since the
map was read: read again only by a create alone, once), no free range fits,
the range's PV is not one the pool knows, or a loop device already maps that
offset of the PV (a stale one keeps its own cached pages: the pool then zeroes
through it, as after any lvcreate it did not place).  A NoSpace from lvcreate
(the metadata area full, say) also places nothing: the caller then runs the
commands it ran before this existed.  Asked for an LV whose ends it need not
zero first (a creating record, zeroed after its commit), it then places it
beside the lock holder: on the map as the pool knows it, under LVM's own
locking (which refuses extents in use: NoSpace, nothing changed).
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional, Sequence

from . import devices, losetup, lvm
from .errors import AlreadyExists, NoSpace
from .lvm_extents import FreeExtents, placed_lv
from .lvm_index import vg_seqno
from .lvm_lock import Busy, VgLock
from .lvm_report import PeRange
from .runner import Answer

#: told of the placer's commit: (the LV as lvs would report it, the seqno just ahead of the commit, the seqno after)
Committed = Callable[[lvm.LogicalVolume, Optional[int], Optional[int]], None]


class _Stale(Exception):
    """The map of free extents is not the VG as it is now (someone committed since it was read)."""


class Placer:
    """Places new linear LVs of one VG."""

    def __init__(self, vg: str, alloc: str, settings: lvm.LvmSettings) -> None:
        self.vg = vg
        self.alloc = alloc
        self.settings = settings
        self.lock = VgLock(vg, settings)
        self._pvs: Optional[List[lvm.PhysicalVolume]] = None
        self.free = FreeExtents(lambda: lvm.free_extents(vg, settings=settings), self.seqno)
        self._creating = 0  # creates in progress (a stale map is read again only by a create alone)
        self._counting = threading.Lock()

    def pvs(self) -> List[lvm.PhysicalVolume]:
        """The VG's PVs, read once (their data offsets never change; a PV added later makes them read again)."""
        if self._pvs is None:
            self._pvs = lvm.physical_volumes(self.vg, settings=self.settings)
        return self._pvs

    def seqno(self) -> Optional[int]:
        return vg_seqno([pv.name for pv in self.pvs()], self.vg)

    def create(self, name: str, size: int, tags: Sequence[str], *, extent: int, zero_ends: bool, active: bool,
               committed: Committed) -> Optional[lvm.LogicalVolume]:
        """Make LV *name* of *size* bytes carrying *tags* where the map says, its ends zeroed first if
        *zero_ends*; the LV as lvs would report it (*active*: LVM activates it, device-mapper), or None when it
        placed nothing (nothing changed then).

        *committed(lv, seqno before, seqno after)* runs while the lock is still held (the pool's index follows
        the commit); the create returns at lvcreate's ``created`` line, the lock's end then lvcreate's (the
        module's docstring), except a creating LV with device-mapper (not *zero_ends* but *active*), which returns
        once the lock went.
        AlreadyExists when the name is taken (the range goes back to the map).
        """
        if not self.lock.usable:
            return None
        with self._counting:
            self._creating += 1
        try:
            for attempt in range(2):
                try:
                    return self._locked(name, size, tags, extent, zero_ends, active, committed)
                except Busy:
                    break
                except _Stale:
                    if attempt or self._creating > 1:
                        break
                    self.free.refresh()  # alone: read the map (never under the lock), then once more
            # Another create of the agent holds the lock from its lvcreate's start to its commit, or commits
            # beside (the map is not current): LVM's own locking, held only around each commit, lets this one run
            # beside it (measured: a burst of 8 took twice as long queued).  Blank, it is placed the next time,
            # its ends zeroed after the commit (loop activation: device-mapper keeps LVM's choice, as measured).
            return None if zero_ends or active else self._beside(name, size, tags, extent, committed)
        finally:
            with self._counting:
                self._creating -= 1

    def _beside(self, name: str, size: int, tags: Sequence[str], extent: int,
                committed: Committed) -> Optional[lvm.LogicalVolume]:
        """create() while another of the agent's creates holds the lock: an lvcreate under LVM's own locking on
        a range of the map as the pool knows it (LVM refuses one in use: NoSpace, nothing changed), so nothing
        is read back; None when the map has none."""
        place = self.free.take_known(-(-size // extent))
        if place is None:
            return None
        before = self.seqno()
        with Answer() as committed_line:  # its commit done (LVM still holds its own lock for the backup)
            if not self._lvcreate(name, size, tags, extent, place, created=committed_line.set,
                                  answered=committed_line):
                return None
        made = placed_lv(self.vg, name, place, extent, tags, self.alloc)
        after = self.seqno()
        self.free.committed(before, after=after)
        committed(made, before, after)
        return made

    def _locked(self, name: str, size: int, tags: Sequence[str], extent: int, zero_ends: bool, active: bool,
                committed: Committed) -> Optional[lvm.LogicalVolume]:
        """create() under the VG lock; _Stale when the map is not the VG's state."""
        pvs = self.pvs()  # before the lock (it runs pvs the first time): under it, no LVM command but lvcreate
        names = [pv.name for pv in pvs]
        # *answer*: said once the create needs nothing more of lvcreate (its exit awaited in the background)
        with self.lock.held(queue=False) as held, Answer() as answer:
            before = vg_seqno(names, self.vg)
            if before is None or not self.free.current(before):
                raise _Stale()
            place = self.free.take(-(-size // extent), before)
            if place is None:
                return None
            pv = next((found for found in pvs if found.name == place.device), None)
            offset = 0 if pv is None else pv.pe_start + place.first * extent
            if pv is None or (zero_ends and losetup.find(pv.name, offset) is not None):
                self.free.give_back([place])
                if pv is None:
                    self._pvs = None
                return None
            if zero_ends:
                devices.write_zeros(pv.name, devices.end_ranges(place.count * extent), offset)
            made = placed_lv(self.vg, name, place, extent, tags, self.alloc, active)
            followed: List[Optional[int]] = []  # the seqno after the commit, once the pool followed it

            def follow() -> Optional[int]:
                after = vg_seqno(names, self.vg)  # one commit under the lock: before + 1 (else both forget)
                self.free.committed(before, after=after)
                committed(made, before, after)
                followed.append(after)
                return after

            def created() -> None:
                """lvcreate committed (it still runs): follow its commit, then give the lock's end to lvcreate."""
                after = follow()
                # device-mapper: udev makes the device names after this line, then LVM backs up (under the lock):
                # a ready LV needs neither (the next LVM command waits for the lock), a creating one is filled
                # through its device name next, so it answers once the lock went (backup, else exit)
                self.lock.hand_off(held, after, answer, unbacked=not active)
                if zero_ends or not active:
                    answer.set()
            if not self._lvcreate(name, size, tags, extent, place, held, created, answer, self.lock.at_exit(held)):
                return None
            if not followed:  # (lvcreate did not say so: followed at its exit, still under the lock)
                follow()
        return made

    def _lvcreate(self, name: str, size: int, tags: Sequence[str], extent: int, place: PeRange,
                  vg_lock: Optional[int] = None, created: Optional[Callable[[], None]] = None,
                  answered: Optional[Answer] = None, ended: Optional[Callable[[], None]] = None) -> bool:
        """lvcreate on *place* (lvm.create_linear; it returns once *answered* is set, *ended* called at its exit);
        False when LVM refused it (NoSpace: the map is forgotten).  AlreadyExists gives the range back to the map."""
        try:
            lvm.create_linear(self.vg, name, size, tags, alloc=self.alloc, extent_size=extent, zero=False,
                              place=place, vg_lock=vg_lock, created=created, answered=answered, ended=ended,
                              settings=self.settings)
        except AlreadyExists:
            self.free.give_back([place])
            raise
        except NoSpace:
            self.free.forget()
            return False
        except BaseException:
            self.free.forget()  # it may have committed: read the map again
            raise
        return True
