"""What a pool knows of its own LVs between operations, and how it knows nobody else changed the VG.

Every LVM metadata commit writes the VG's text with a new sequence number
(``seqno``) into each PV's metadata area and then points the area's header
at it.  Reading that header and the first line of the text it points at is
three ``pread`` calls on the PV: microseconds, where ``vgs -o vg_seqno`` is a
process and a VG lock (40-100 ms here).  So a pool that is the VG's usual
writer can keep its LVs in memory: the index is valid while the seqno is the
one it last saw, and after each of its own commits the seqno must be exactly
one more; any other change (another process, or two of its own commits at
once) makes it read the LVs again.  Anything unexpected in the on-disk format
makes the seqno unknown, which makes the index unused: never a wrong answer,
only the ``lvs`` every operation ran before.

On-disk layout (LVM2 text format, ``lib/format_text/layout.h``): a label
sector (``LABELONE``, one of the first four sectors) holds the PV header,
whose lists of data areas and metadata areas end with a zero entry; each
metadata area starts with an ``mda_header`` (magic `` LVM2 x[5A%r0N*>``) whose
first ``raw_locn`` (offset, size, checksum, flags) locates the committed text,
which starts ``VGNAME {\\nid = "..."\\nseqno = N``.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from typing import Dict, List, Optional, Sequence

from .lvm_report import LogicalVolume

_SECTOR = 512
_LABEL = b"LABELONE"
_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
_RAW_LOCN_IGNORED = 1
#: an invalid index is read again (one full listing) at most this often; meanwhile each LV is read alone
RELOAD_INTERVAL = 1.0
_SEQNO = re.compile(rb"^(\S+) \{\nid = \"[^\"]*\"\nseqno = (\d+)\n")


def seqno(pv: str, vg: str) -> Optional[int]:
    """The VG's committed sequence number as *pv*'s first metadata area holds it; None when it cannot tell."""
    try:
        with open(pv, "rb", buffering=0) as handle:
            head = handle.read(4 * _SECTOR)
            label = next((head[i:i + _SECTOR] for i in range(0, len(head), _SECTOR)
                          if head[i:i + 8] == _LABEL), None)
            if label is None:
                return None
            (offset,) = struct.unpack_from("<I", label, 20)
            position = offset + 40  # after the PV's uuid (32 bytes) and size (8)
            areas: List[int] = []
            for _kind in range(2):  # the data areas, then the metadata areas
                areas = []
                while position + 16 <= _SECTOR:
                    start, size = struct.unpack_from("<QQ", label, position)
                    position += 16
                    if start == 0 and size == 0:
                        break
                    areas.append(start)
            if not areas:
                return None
            handle.seek(areas[0])
            header = handle.read(_SECTOR)
            if header[4:20] != _MDA_MAGIC:
                return None
            text_at, text_size, _checksum, flags = struct.unpack_from("<QQII", header, 40)
            if flags & _RAW_LOCN_IGNORED or text_at == 0 or text_size == 0:
                return None
            handle.seek(areas[0] + text_at)
            found = _SEQNO.match(handle.read(min(text_size, _SECTOR)))
    except (OSError, struct.error):
        return None
    if found is None or found.group(1).decode(errors="replace") != vg:
        return None
    return int(found.group(2))


def follows(before: Optional[int], after: Optional[int], known: Optional[int], commits: int = 1) -> bool:
    """Whether what was known at seqno *known*, plus the pool's command that makes *commits* commits, run between
    the seqno reads *before* and *after*, is the VG at *after*: nobody else committed meanwhile."""
    return before is not None and after is not None and before == known and after == before + commits


def vg_seqno(pvs: Sequence[str], vg: str) -> Optional[int]:
    """The VG's committed seqno, when every one of *pvs* that holds a metadata area says the same; else None
    (e.g. a commit interrupted between two PVs, which the next LVM command repairs)."""
    found = {seqno(pv, vg) for pv in pvs} - {None}
    return found.pop() if len(found) == 1 else None


class LvIndex:
    """The pool's own (managed) LVs by name, valid while the VG's seqno is the one last seen."""

    def __init__(self, vg: str) -> None:
        self.vg = vg
        self._lock = threading.Lock()
        self._lvs: Optional[Dict[str, LogicalVolume]] = None
        self._seqno: Optional[int] = None
        self._pvs: Sequence[str] = ()
        # Not read lazily in a pool's first second: a short-lived user (a module run) reads the LVs it needs
        # one by one; the agent's start-up clean-up lists them all, which loads the index.
        self._loaded_at = time.monotonic()

    def _current(self) -> Optional[int]:
        return vg_seqno(self._pvs, self.vg)

    def load(self, pvs: Sequence[str], lvs: Sequence[LogicalVolume], before: Optional[int]) -> None:
        """Adopt a full listing of the managed LVs, taken after the seqno *before* was read (None: unknown);
        kept only when the seqno did not move while listing."""
        with self._lock:
            self._pvs = tuple(pvs)
            self._loaded_at = time.monotonic()
            after = self._current()
            if before is None or after != before:
                self._lvs, self._seqno = None, None
                return
            self._lvs, self._seqno = {lv.name: lv for lv in lvs}, after

    def read_seqno(self, pvs: Sequence[str]) -> Optional[int]:
        with self._lock:
            self._pvs = tuple(pvs)
            return self._current()

    def lookup(self, name: str) -> "tuple[bool, Optional[LogicalVolume]]":
        """(True, the LV or None) when the index is valid now; (False, None) when it must be read."""
        with self._lock:
            if self._lvs is None or self._current() != self._seqno:
                self._lvs, self._seqno = None, None
                return False, None
            return True, self._lvs.get(name)

    def listing(self) -> Optional[List[LogicalVolume]]:
        """All the pool's LVs when the index is valid now, in the order they were listed (then made); None when
        they must be read."""
        with self._lock:
            if self._lvs is None or self._current() != self._seqno:
                self._lvs, self._seqno = None, None
                return None
            return list(self._lvs.values())

    def reload_due(self) -> bool:
        """Whether an invalid index should be read again now (a full listing), rather than one LV alone: not
        more often than RELOAD_INTERVAL, so concurrent commits (which invalidate it) do not make every
        look-up a listing of the whole VG."""
        with self._lock:
            return self._lvs is None and time.monotonic() - self._loaded_at >= RELOAD_INTERVAL

    def valid(self) -> bool:
        with self._lock:
            return self._lvs is not None

    def committed(self, name: str, lv: Optional[LogicalVolume], before: Optional[int],
                  after: Optional[int] = None, commits: int = 1) -> None:
        """This pool changed *name* (now *lv*; None: removed) in one LVM command that makes *commits* commits,
        the seqno having been *before* just ahead of it and *after* since (None: read now): kept when those are
        the only commits since (follows)."""
        with self._lock:
            if self._lvs is None:
                return
            if after is None:
                after = self._current()
            if not follows(before, after, self._seqno, commits):
                self._lvs, self._seqno = None, None
                return
            if lv is None:
                self._lvs.pop(name, None)
            else:
                self._lvs[name] = lv
            self._seqno = after

    def forget(self) -> None:
        with self._lock:
            self._lvs, self._seqno = None, None
