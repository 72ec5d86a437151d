"""lvm_extents.FreeExtents: the pool's map of free extents at one seqno of the VG (first fit, given back merged,
kept by the pool's own commits, read again after anyone else's)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from basalt_core.lvm_extents import FreeExtents, merged
from basalt_core.lvm_report import PeRange


class Vg:
    """A VG whose seqno the test moves, and whose free extents it says."""

    def __init__(self) -> None:
        self.seqno: Optional[int] = 7
        self.reads = 0

    def read(self) -> Dict[str, List[Tuple[int, int]]]:
        self.reads += 1
        return {"/dev/loop1": [(0, 2), (5, 10)], "/dev/loop2": [(0, 100)]}


def test_first_fit_takes_and_gives_back_merged() -> None:
    vg = Vg()
    free = FreeExtents(vg.read, lambda: vg.seqno)
    free.refresh()
    assert free.take(3, 7) == PeRange("/dev/loop1", 5, 7)  # the first range that holds it, on the first PV
    assert free.take(2, 7) == PeRange("/dev/loop1", 0, 1)
    assert free.take(8, 7) == PeRange("/dev/loop2", 0, 7)  # loop1 has 7 left at 8
    free.give_back([PeRange("/dev/loop1", 0, 1), PeRange("/dev/loop1", 5, 7)])
    assert free.take(10, 7) == PeRange("/dev/loop1", 5, 14)  # 5-7 and 8-14 joined
    free.refresh()
    assert vg.reads == 1, "read once, then kept while the seqno stays"
    free.give_back([PeRange("/dev/new", 0, 0)])  # a PV the map does not know: read again
    assert free.take(1, 7) is None
    free.refresh()
    assert vg.reads == 2


def test_only_a_map_of_the_vg_as_it_is_gives_extents() -> None:
    """take() answers only at the seqno the map is of: under the VG's lock, that is the VG as it is."""
    vg = Vg()
    free = FreeExtents(vg.read, lambda: vg.seqno)
    assert free.take(1, 7) is None  # never read
    free.refresh()
    assert free.take(1, 8) is None  # someone committed since it was read
    vg.seqno = 8
    free.refresh()
    assert vg.reads == 2 and free.take(1, 8) == PeRange("/dev/loop1", 0, 0)
    vg.seqno = None  # the seqno cannot be read (an unknown format): nothing is ever taken
    free.refresh()
    assert free.take(1, None) is None


def test_own_commits_keep_the_map_anyone_elses_make_it_read_again() -> None:
    vg = Vg()
    free = FreeExtents(vg.read, lambda: vg.seqno)
    free.refresh()
    taken = free.take(2, 7)
    assert taken == PeRange("/dev/loop1", 0, 1)
    vg.seqno = 8
    free.committed(7)  # the pool's lvcreate on it: the only commit since
    vg.seqno = 9
    free.committed(8, [taken])  # its lvremove: free again
    assert free.take(2, 9) == PeRange("/dev/loop1", 0, 1) and vg.reads == 1
    vg.seqno = 11
    free.committed(9)  # a retag, but someone else committed too
    assert free.take(1, 11) is None
    free.refresh()
    assert vg.reads == 2 and free.take(1, 11) is not None
    free.forget()
    assert free.take(1, 11) is None


def test_merged_joins_adjacent_ranges_only() -> None:
    assert merged([(10, 5), (0, 3), (3, 2), (20, 1)]) == [(0, 5), (10, 5), (20, 1)]
