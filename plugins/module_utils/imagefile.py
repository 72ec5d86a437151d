"""Sparse image files: create, grow, and clone (reflink where the filesystem can, copy otherwise)."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from typing import Callable, Optional

from . import progress

log = logging.getLogger(__name__)

# FICLONE from linux/fs.h: share all extents of one file with another.
_FICLONE = 0x40049409
_CHUNK = 4 << 20
_PROGRESS_EVERY = 5.0

REFLINK = "reflink"
COPY = "copy"


def create(path: str, size: int) -> None:
    """Create (or truncate to) a sparse file of *size* bytes, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def grow(path: str, size: int) -> bool:
    """Grow *path* to *size* bytes; never shrinks. True when it grew."""
    if os.path.getsize(path) >= size:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def clone(source: str, target: str, size: Optional[int] = None) -> str:
    """Make *target* a point-in-time copy of *source*, grown to *size* if given.

    Returns the method used: ``reflink`` (instant, shares extents) or ``copy``
    (a sparse byte copy, holes preserved; logged every few seconds, and shown
    where a display is installed: :mod:`.progress`).
    """
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
            method = REFLINK
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                raise
            with progress.tracked(f"copying {os.path.basename(source)}", os.fstat(src.fileno()).st_size) as shown:
                _sparse_copy(src.fileno(), dst.fileno(), _reporter(source, shown))
            method = COPY
        if size is not None and size > os.fstat(dst.fileno()).st_size:
            os.ftruncate(dst.fileno(), size)
        os.fsync(dst.fileno())
    return method


def _reporter(name: str, shown: progress.Update) -> Callable[[int, int], None]:
    """Each chunk to the display (if one is installed), a log line every few seconds."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        shown(done)
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY:
            last[0] = now
            log.info("copying %s: %d of %d bytes (%.0f%%)", name, done, total, 100.0 * done / max(total, 1))

    return report


def _sparse_copy(src: int, dst: int, progress: Callable[[int, int], None]) -> None:
    total = os.fstat(src).st_size
    os.ftruncate(dst, total)
    offset = 0
    while offset < total:
        try:
            data_start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        hole_start = os.lseek(src, data_start, os.SEEK_HOLE)
        position = data_start
        while position < hole_start:
            length = min(_CHUNK, hole_start - position)
            copied = os.copy_file_range(src, dst, length, position, position)
            if copied == 0:
                break
            position += copied
            progress(position, total)
        offset = hole_start
