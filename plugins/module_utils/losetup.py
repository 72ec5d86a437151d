"""Loop devices: attach a file (or a range of a device), find, refresh, detach.

The one home of loop-device lookups.  Attached devices are read from the kernel's
own attributes in sysfs, what ``losetup --list`` itself reads (util-linux 2.38:
``loop/backing_file``, ``loop/offset``, ``loop/sizelimit``, ``ro``), without a process;
attach, detach and capacity refresh run ``losetup``.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import struct
import time
from typing import Collection, List, Optional

from . import device_wait
from .errors import CommandFailed, Precondition
from .runner import operand, run

#: where the kernel keeps loop devices (they have no parent device; /sys/block only links here, and each
#: link costs a lookup: 0.6 against 1.5 ms for 209 devices); a bound one has a ``loop`` directory
SYS_BLOCK = "/sys/devices/virtual/block"
# struct loop_info64 (linux/loop.h) and its ioctls: util-linux cannot change
# the size limit of an attached device, the kernel can.
_LOOP_INFO64 = "<5Q4I64s64s32s2Q"
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
# How losetup shows a backing file that was unlinked while attached.
_DELETED = " (deleted)"


@dataclasses.dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str
    offset: int
    size_limit: int
    read_only: bool
    #: a detach of the device while something held it open: the kernel unbinds it (autoclear) at that last close
    detaching: bool = False

    @property
    def backing_path(self) -> str:
        """The backing file's path, also when it has been unlinked since (``backing_file`` then says so)."""
        return self.backing_file[:-len(_DELETED)] if self.backing_file.endswith(_DELETED) else self.backing_file


def list_devices() -> List[LoopDevice]:
    """Every attached loop device, by device number (as ``losetup --list`` orders them).

    The backing file's name is the kernel's full path (``d_path``), never the 64-byte
    name of ``LOOP_GET_STATUS64``, with " (deleted)" once it was unlinked: what losetup shows.
    A device detached while it is read is not listed, as it would not be a moment later.
    """
    directory = os.open(SYS_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        numbers = sorted(int(name[4:]) for name in os.listdir(directory) if name[:4] == "loop" and name[4:].isdigit())
        found = (_read_device(directory, number) for number in numbers)
        return [device for device in found if device is not None]
    finally:
        os.close(directory)


def _read_device(directory: int, number: int) -> Optional[LoopDevice]:
    name = f"loop{number}"
    try:
        backing_file = _attribute(directory, f"{name}/loop/backing_file")
        offset = int(_attribute(directory, f"{name}/loop/offset"))
        size_limit = int(_attribute(directory, f"{name}/loop/sizelimit"))
        read_only = _attribute(directory, f"{name}/ro") == "1"
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):  # unbound, or detached meanwhile
            return None
        raise Precondition(f"cannot read loop device /dev/{name} in {SYS_BLOCK}: {error.strerror}") from None
    if not backing_file:  # bound and unbound within the read
        return None
    return LoopDevice(f"/dev/{name}", backing_file, offset, size_limit, read_only)


def _attribute(directory: int, path: str) -> str:
    """One sysfs attribute's text without the newline the kernel ends it with (a path may hold others)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        data = os.read(fd, 65536)  # sysfs hands out at most a page
    finally:
        os.close(fd)
    return os.fsdecode(data[:-1] if data.endswith(b"\n") else data)


def find(backing_file: str, offset: int = 0, size_limit: Optional[int] = None, *,
         likely: Optional[str] = None) -> Optional[LoopDevice]:
    """The loop device backed by *backing_file* at *offset* (and exactly *size_limit*, if given), if attached.

    A device over an unlinked file never matches a file now at that path.  *likely* (a device the
    caller attached before) is read first: when it still matches, no other device is read.
    """
    wanted = os.path.realpath(backing_file)

    def matches(device: Optional[LoopDevice]) -> bool:
        return device is not None and device.backing_file == wanted and device.offset == offset \
            and size_limit in (None, device.size_limit)
    number = likely[len("/dev/loop"):] if likely and likely.startswith("/dev/loop") else ""
    if number.isdigit():
        directory = os.open(SYS_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            known = _read_device(directory, int(number))
        finally:
            os.close(directory)
        if matches(known):
            return _with_autoclear(known)
    return _with_autoclear(next((device for device in list_devices() if matches(device)), None))


def _with_autoclear(device: Optional[LoopDevice]) -> Optional[LoopDevice]:
    """*device* saying whether it is being detached (read for a found device only: one attribute, not 209)."""
    if device is None:
        return None
    try:
        flag = _autoclear(device.device)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):  # unbound meanwhile: nothing to reuse
            return None
        raise Precondition(f"cannot read loop device {device.device} in {SYS_BLOCK}: {error.strerror}") from None
    return dataclasses.replace(device, detaching=flag)


def _autoclear(device: str) -> bool:
    """Whether bound *device* has autoclear set (OSError when it is not bound)."""
    directory = os.open(SYS_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _attribute(directory, f"{device[len('/dev/'):]}/loop/autoclear") == "1"
    finally:
        os.close(directory)


def over(backing_files: Collection[str]) -> List[LoopDevice]:
    """Every loop device over one of *backing_files* (a path or a parent directory), unlinked files included."""
    roots = [os.path.realpath(path) for path in backing_files]
    return [device for device in list_devices()
            if any(device.backing_path == root or device.backing_path.startswith(root.rstrip("/") + "/")
                   for root in roots)]


def ensure_attached(
    backing_file: str,
    *,
    offset: int = 0,
    size_limit: int = 0,
    read_only: bool = False,
) -> "tuple[LoopDevice, bool]":
    """Attach *backing_file* unless it already is, exactly so; return the device and whether it changed.

    A device being detached (see :class:`LoopDevice`) would unbind under its new user: ``attach`` then
    claims it back (losetup clears the autoclear flag of the device it reuses) or takes another.
    """
    existing = find(backing_file, offset, size_limit)
    if existing is not None and not existing.detaching:
        return existing, False
    return attach(backing_file, offset=offset, size_limit=size_limit, read_only=read_only), True


def attach(backing_file: str, *, offset: int = 0, size_limit: int = 0, read_only: bool = False) -> LoopDevice:
    """The loop device over *backing_file* at *offset*, *size_limit*: one command, no lookup of ours.

    ``--nooverlap`` makes losetup itself answer the device already attached exactly so (the same file,
    offset and size limit; util-linux 2.38) and refuse one overlapping it; else it attaches a free one.
    """
    argv = ["losetup", "--find", "--show", "--nooverlap"]
    if offset:
        argv += ["--offset", str(offset)]
    if size_limit:
        argv += ["--sizelimit", str(size_limit)]
    if read_only:
        argv.append("--read-only")
    path = os.path.realpath(backing_file)
    argv.append(operand(path, "backing file"))
    device = run(argv, what=f"attach {backing_file}").stdout.strip()
    if not device.startswith("/dev/"):
        raise CommandFailed(argv, 0, f"no device name in the output {device!r}", f"attach {backing_file}")
    device_wait.appeared(device, f"loop device over {backing_file}")
    return LoopDevice(device, path, offset, size_limit, read_only)


def refresh_capacity(device: str) -> None:
    """Make the loop device see a backing file that has grown."""
    run(["losetup", "--set-capacity", operand(device, "device")], what=f"refresh size of {device}")


def set_size_limit(device: str, size_limit: int) -> None:
    """Change how many bytes of its backing file (from its offset) a loop device exposes."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        status = bytearray(struct.calcsize(_LOOP_INFO64))
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, status)
        fields = list(struct.unpack(_LOOP_INFO64, bytes(status)))
        fields[4] = size_limit  # lo_sizelimit
        fcntl.ioctl(fd, _LOOP_SET_STATUS64, struct.pack(_LOOP_INFO64, *fields))
    finally:
        os.close(fd)


#: how long a detach waits for a device still held at the command (autoclear set) to be unbound by its
#: holder's last close: an unmount or a target that lets go of it a moment later (seen under load)
DETACH_SETTLE = 2.0


def detach(device: str) -> None:
    """Detach *device*; when something still holds it, wait a moment for that holder to let go."""
    run(["losetup", "--detach", operand(device, "device")], what=f"detach {device}")
    deadline = time.monotonic() + DETACH_SETTLE
    while _detaching(device) and time.monotonic() < deadline:
        time.sleep(0.005)


def _detaching(device: str) -> bool:
    """Still bound with autoclear set: a detach waiting for the device's last close."""
    try:
        return _autoclear(device)
    except OSError:  # unbound (no loop directory), or no such device
        return False


def ensure_detached(backing_file: str, offset: int = 0, *, likely: Optional[str] = None) -> bool:
    """Detach the loop device of *backing_file* (*likely*: see :func:`find`); False when none was attached."""
    existing = find(backing_file, offset, likely=likely)
    if existing is None:
        return False
    detach(existing.device)
    return True
