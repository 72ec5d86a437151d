"""Where a new LV goes, chosen by the pool: the VG's free extents as they are at one seqno of the VG.

``lvcreate VG PV:FIRST-LAST`` allocates exactly that range or refuses, so a
create told where to go knows where its LV lies without reading it back (the
loop activation must know it to reach the LV's bytes on the PV).  The map is
read (``pvs --segments``) between two reads of the VG's seqno (lvm_index) and
is the VG's state at that seqno when they agree; the pool's own commits keep
it (its creates and removes change it, any commit moves its seqno), as long
as each moves the seqno by exactly one.  Ranges are taken for zeroing first
only under LVM's lock on the VG (lvm_placing) and only from a map whose
seqno is the VG's at that moment (``take``): they are free, and stay free
until the pool's own lvcreate, so the pool may zero them first.

Anything else (another process's commit, two of the pool's own at once)
leaves the map as the pool last knew it, no longer current: read again before
the next ``take``, and meanwhile good for ``take_known``, whose range LVM
itself checks (lvcreate refuses extents in use: NoSpace, and the map is
forgotten), for an LV whose ends are zeroed only after its commit.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .lvm_index import follows
from .lvm_report import LogicalVolume, LvAttr, PeRange, Segment

#: PV path -> its free extent ranges (first, count), in order
FreeMap = Dict[str, List[Tuple[int, int]]]


def merged(ranges: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """*ranges* sorted, adjacent ones joined."""
    out: List[Tuple[int, int]] = []
    for first, count in sorted(ranges):
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((first, count))
    return out


class FreeExtents:
    """The free extents of one VG at the seqno ``_at`` (None: not known to be any), read by *read*; thread-safe."""

    def __init__(self, read: Callable[[], FreeMap], seqno: Callable[[], Optional[int]]) -> None:
        self._read = read
        self._seqno = seqno
        self._map: Optional[FreeMap] = None
        self._at: Optional[int] = None
        self._lock = threading.Lock()

    def current(self, seqno: Optional[int]) -> bool:
        """Whether the map is the VG's state at *seqno*."""
        with self._lock:
            return self._map is not None and seqno is not None and self._at == seqno

    def refresh(self) -> None:
        """Read the map again unless it is the VG's state now (runs ``pvs``: never while holding the VG's lock)."""
        before = self._seqno()
        if self.current(before):
            return
        found = self._read()
        after = self._seqno()
        with self._lock:
            self._map, self._at = found, (before if before is not None and before == after else None)

    def take(self, count: int, at: Optional[int]) -> Optional[PeRange]:
        """The first free range of *count* extents on one PV, no longer free in the map, when the map is the
        VG's state at seqno *at* (read while holding the VG's lock); None otherwise, or when none fits."""
        with self._lock:
            if at is None or self._at != at:
                return None
            return self._first_fit(count)

    def _first_fit(self, count: int) -> Optional[PeRange]:
        if self._map is None:
            return None
        for pv in sorted(self._map):
            ranges = self._map[pv]
            for index, (first, length) in enumerate(ranges):
                if length >= count:
                    ranges[index:index + 1] = [(first + count, length - count)] if length > count else []
                    return PeRange(pv, first, first + count - 1)
        return None

    def take_known(self, count: int) -> Optional[PeRange]:
        """``take`` from the map as the pool last knew it, current or not (None when there is none): only for an
        lvcreate that LVM locks itself and that zeroes nothing before its commit."""
        with self._lock:
            return self._first_fit(count)

    def give_back(self, ranges: Iterable[PeRange]) -> None:
        """Extents taken but not used (no commit since): free again."""
        with self._lock:
            self._free(ranges)

    def committed(self, before: Optional[int], freed: Iterable[PeRange] = (), after: Optional[int] = None,
                  commits: int = 1) -> None:
        """The pool committed one change to the VG (freeing *freed*; what it created was taken already), the
        seqno having been *before* just ahead of it and *after* since (None: read now): current still when that
        commit is the only one since (*commits*: as lvm_index.follows), else only as the pool knows it."""
        with self._lock:
            if self._map is None:  # (never read: nothing to keep, no seqno to read)
                return
        if after is None:
            after = self._seqno()
        with self._lock:
            if self._map is None:
                return
            current = follows(before, after, self._at, commits)
            self._at = after if current else None
            self._free(freed)

    def _free(self, ranges: Iterable[PeRange]) -> None:
        if self._map is None:
            return
        for item in ranges:
            if item.device not in self._map:  # not one of the PVs listed (a new one, or a sub-LV): read again
                self._map, self._at = None, None
                return
            self._map[item.device] = merged([*self._map[item.device], (item.first, item.count)])

    def forget(self) -> None:
        """The VG changed in a way the map does not follow: read it again when next needed."""
        with self._lock:
            self._map, self._at = None, None


_POLICY_LETTERS = {"normal": "n", "contiguous": "c", "cling": "l", "anywhere": "a", "inherit": "i"}


def placed_lv(vg: str, name: str, place: PeRange, extent_size: int, tags: Iterable[str],
              alloc: str, active: bool = False) -> LogicalVolume:
    """The linear LV ``lvcreate --alloc ALLOC`` just made on *place*, as lvs reports it with activation off
    (measured: ``-wc-XX----`` for contiguous), or *active* (device-mapper: ``-wn-a-----``, unopened); its uuid
    is not read: nothing uses it."""
    segment = Segment("linear", 0, place.count, (place,), f"{place.device}({place.first})")
    state = "a-" if active else "XX"
    return LogicalVolume(name=name, vg_name=vg, uuid="", size=place.count * extent_size,
                         attr=LvAttr.parse(f"-w{_POLICY_LETTERS[alloc]}-{state}----"), tags=tuple(sorted(tags)),
                         pool_lv=None, origin=None,
                         data_percent=None, metadata_percent=None, path=f"/dev/{vg}/{name}", segments=(segment,))
