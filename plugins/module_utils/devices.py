"""Block device facts read straight from the kernel (no tools needed)."""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import struct
from typing import List, Optional, Tuple

_BLKGETSIZE64 = 0x80081272
#: How much of each end of a device must read as zeros for it to count as blank
#: (the pools zero this much of both ends of every new volume).
BLANK_ENDS = 1 << 20


def read_text(path: str) -> str:
    """A kernel attribute file's text (sysfs, /proc), stripped; "" when it cannot be read (the device went)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


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


def nonzero_end(device: str) -> Optional[str]:
    """Which end of *device* (``"first"`` or ``"last"`` BLANK_ENDS bytes) holds a non-zero byte; None if neither.

    *device* may also be a regular file (an image).
    """
    block = is_block_device(device)
    # A device is read around its page cache (sizes are multiples of its sector size, as
    # O_DIRECT needs); an image file through it, which is coherent with the file's writers.
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if block else 0))
    try:
        total = size_bytes(device) if block else os.fstat(fd).st_size
        length = min(BLANK_ENDS, total)
        buffer = mmap.mmap(-1, max(length, mmap.PAGESIZE))  # page-aligned, as O_DIRECT needs
        zeros = bytes(length)
        try:
            for where, offset in (("first", 0), ("last", total - length)):
                found = _read_at(fd, buffer, length, offset)
                if found != zeros[:len(found)]:
                    return where
        finally:
            buffer.close()
    finally:
        os.close(fd)
    return None


def zero_ends(device: str) -> None:
    """Make *device* blank by nonzero_end's rule: zeros over its first and last BLANK_ENDS bytes, synced."""
    with open(device, "r+b", buffering=0) as handle:
        total = size_bytes(device) if is_block_device(device) else os.fstat(handle.fileno()).st_size
        span = min(BLANK_ENDS, total)
        for offset in sorted({0, total - span}):
            handle.seek(offset)
            handle.write(bytes(span))
        os.fsync(handle.fileno())


def _read_at(fd: int, buffer: mmap.mmap, length: int, offset: int) -> bytes:
    done = 0
    while done < length:
        view = memoryview(buffer)[done:length]
        try:
            count = os.preadv(fd, [view], offset + done)
        finally:
            view.release()
        if count == 0:
            break  # the device ended early (it shrank): what was read is all there is
        done += count
    return buffer[:done]


def end_ranges(length: int, after: int = 0) -> List[Tuple[int, int]]:
    """The byte ranges (start, end) of the first and last BLANK_ENDS bytes of a device of *length* bytes that
    lie at or after *after* (what a larger copy left untouched)."""
    span = min(length, BLANK_ENDS)
    return [(start, end) for start, end in ((max(0, after), span), (max(length - span, after), length))
            if start < end]


def write_zeros(device: str, ranges: List[Tuple[int, int]], offset: int = 0) -> None:
    """Zeros over each (start, end) byte range of *device*, counted from *offset* (an LV's start on its PV), synced."""
    with open(device, "r+b", buffering=0) as handle:
        for start, end in ranges:
            handle.seek(offset + start)
            handle.write(bytes(end - start))
        os.fsync(handle.fileno())
