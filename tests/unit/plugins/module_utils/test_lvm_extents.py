"""lvm_extents.FreeExtents: the pool's map of free extents (first fit, given back merged, forgotten)."""

from __future__ import annotations

from typing import Dict, List, Tuple

from basalt_core.lvm_extents import FreeExtents, merged
from basalt_core.lvm_report import PeRange


def test_first_fit_takes_and_gives_back_merged() -> None:
    reads: List[int] = []

    def read() -> Dict[str, List[Tuple[int, int]]]:
        reads.append(1)
        return {"/dev/loop1": [(0, 2), (5, 10)], "/dev/loop2": [(0, 100)]}
    free = FreeExtents(read)
    assert free.take(3) == PeRange("/dev/loop1", 5, 7)  # the first range that holds it, on the first PV
    assert free.take(2) == PeRange("/dev/loop1", 0, 1)
    assert free.take(8) == PeRange("/dev/loop2", 0, 7)  # loop1 has 7 left at 8
    free.give_back([PeRange("/dev/loop1", 0, 1), PeRange("/dev/loop1", 5, 7)])
    assert free.take(10) == PeRange("/dev/loop1", 5, 14)  # 5-7 and 8-14 joined
    assert len(reads) == 1, "read once, then kept"
    free.give_back([PeRange("/dev/new", 0, 0)])  # a PV the map does not know: read again
    free.take(1)
    assert len(reads) == 2
    free.forget()
    assert free.take(1000) is None and len(reads) == 3


def test_merged_joins_adjacent_ranges_only() -> None:
    assert merged([(10, 5), (0, 3), (3, 2), (20, 1)]) == [(0, 5), (10, 5), (20, 1)]
