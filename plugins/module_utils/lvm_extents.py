"""Where a new LV goes, chosen by the pool: the VG's free extents as the pool last knew them.

``lvcreate VG PV:FIRST-LAST`` allocates exactly that range or refuses, so a
create told where to go knows where its LV lies without reading it back (the
loop activation must know it to reach the LV's bytes on the PV).  The map is
read once (``pvs --segments``), then kept by the pool's own creates and
removes.  Whatever else changes the VG makes it stale: a range someone took
since makes lvcreate refuse (NoSpace), and the pool then forgets the map and
lets lvcreate choose; a range someone freed is only unused until the map is
read again.  LVM, not the map, decides what is free: a stale map never places
an LV on extents in use.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Optional, Tuple

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
    """The free extents of one VG, read by *read* when first needed; thread-safe."""

    def __init__(self, read: Callable[[], FreeMap]) -> None:
        self._read = read
        self._map: Optional[FreeMap] = None
        self._lock = threading.Lock()

    def take(self, count: int) -> Optional[PeRange]:
        """The first free range of *count* extents on one PV, no longer free in the map; None if none fits."""
        with self._lock:
            if self._map is None:
                self._map = self._read()
            for pv in sorted(self._map):
                ranges = self._map[pv]
                for index, (first, length) in enumerate(ranges):
                    if length >= count:
                        ranges[index:index + 1] = [(first + count, length - count)] if length > count else []
                        return PeRange(pv, first, first + count - 1)
        return None

    def give_back(self, ranges: Iterable[PeRange]) -> None:
        """Extents free again (an LV removed, a range taken but not used)."""
        with self._lock:
            if self._map is None:
                return
            for item in ranges:
                if item.device not in self._map:  # not one of the PVs listed (a new one, or a sub-LV): read again
                    self._map = None
                    return
                self._map[item.device] = merged([*self._map[item.device], (item.first, item.count)])

    def forget(self) -> None:
        """The VG changed in a way the map does not follow: read it again when next needed."""
        with self._lock:
            self._map = None


_POLICY_LETTERS = {"normal": "n", "contiguous": "c", "cling": "l", "anywhere": "a", "inherit": "i"}


def placed_lv(vg: str, name: str, place: PeRange, extent_size: int, tags: Iterable[str],
              alloc: str) -> LogicalVolume:
    """The linear LV ``lvcreate --alloc ALLOC`` just made on *place*, as lvs reports it with activation off
    (measured: ``-wc-XX----`` for contiguous; its uuid is not read: nothing uses it)."""
    segment = Segment("linear", 0, place.count, (place,), f"{place.device}({place.first})")
    return LogicalVolume(name=name, vg_name=vg, uuid="", size=place.count * extent_size,
                         attr=LvAttr.parse(f"-w{_POLICY_LETTERS[alloc]}-XX----"), tags=tuple(sorted(tags)),
                         pool_lv=None, origin=None,
                         data_percent=None, metadata_percent=None, path=f"/dev/{vg}/{name}", segments=(segment,))
