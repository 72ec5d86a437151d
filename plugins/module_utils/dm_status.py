"""Whether an LV is mapped by device-mapper now, and whether something holds it open: one ioctl, no process.

LVM's ``lv_attr`` state and open characters come from the kernel, not from the
VG's metadata, so they change without moving the VG's seqno (lvm_index):
a pool that answers from its index reads them here, as ``lvs`` itself does
(libdevmapper's ``DM_DEV_STATUS`` on ``/dev/mapper/control``, by the LV's
device-mapper name).  Anything unexpected says "cannot tell" (None), and the
caller reads the LV with ``lvs`` as before.

Layout (``linux/dm-ioctl.h``, interface 4): ``struct dm_ioctl`` is 312 bytes:
version[3], data_size, data_start, target_count, open_count, flags, event_nr,
padding (u32 each, open_count signed), dev (u64), name[128], uuid[129], data[7].
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Optional

CONTROL = "/dev/mapper/control"
_IOCTL = struct.Struct("=3IIIIiIIIQ128s129s7s")
_DM_DEV_STATUS = (3 << 30) | (_IOCTL.size << 16) | (0xFD << 8) | 7  # _IOWR(DM_IOCTL, DM_DEV_STATUS_CMD, dm_ioctl)
_SUSPENDED = 1 << 1
_ACTIVE_PRESENT = 1 << 5


@dataclass(frozen=True)
class DmState:
    mapped: bool  # a live table: the LV is active
    open_count: int


def dm_name(vg: str, lv: str) -> str:
    """The device-mapper name LVM gives VG/LV: each ``-`` doubled, the two joined by one."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def state(name: str) -> Optional[DmState]:
    """The device *name*'s state now; not mapped when no such device exists; None when it cannot tell (no
    device-mapper, a suspended device, one without a live table)."""
    encoded = name.encode()
    if len(encoded) >= 128:
        return None
    request = bytearray(_IOCTL.pack(4, 0, 0, _IOCTL.size, _IOCTL.size, 0, 0, 0, 0, 0, 0, encoded, b"", b""))
    try:
        fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.ioctl(fd, _DM_DEV_STATUS, request)
    except OSError as error:
        return DmState(False, 0) if error.errno == errno.ENXIO else None
    finally:
        os.close(fd)
    fields = _IOCTL.unpack(request)
    open_count, flags = fields[6], fields[7]
    if flags & _SUSPENDED or not flags & _ACTIVE_PRESENT:
        return None
    return DmState(True, open_count)
