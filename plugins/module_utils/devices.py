"""Block device facts read straight from the kernel (no tools needed)."""

from __future__ import annotations

import fcntl
import os
import stat
import struct

_BLKGETSIZE64 = 0x80081272


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def device_number(device: str) -> str:
    """``major:minor`` of a device node, as the mount table names devices."""
    rdev = os.stat(device).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def size_bytes(device: str) -> int:
    """The size of a block device, as the kernel sees it now."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
    finally:
        os.close(fd)
    return int(struct.unpack("Q", raw)[0])
