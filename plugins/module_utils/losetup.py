"""Loop devices: attach a file (or a range of a device), find, refresh, detach.

The one home of loop-device lookups.  Attached devices are read from the kernel's
own attributes in sysfs, what ``losetup --list`` itself reads (util-linux 2.38:
``loop/backing_file``, ``loop/offset``, ``loop/sizelimit``, ``ro``), without a process.
Attach, detach and capacity refresh are the ioctls ``losetup --find --nooverlap``, ``losetup --detach``
and ``losetup --set-capacity`` make (``LOOP_CTL_GET_FREE``, ``LOOP_CONFIGURE``, ``LOOP_CLR_FD``,
``LOOP_SET_CAPACITY``), without its 1-2.5 ms process start.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import struct
import time
from typing import Callable, Collection, List, Optional, Tuple

from . import device_wait
from .errors import CommandFailed, Precondition
from .runner import operand

#: where the kernel keeps loop devices (they have no parent device; /sys/block only links here, and each
#: link costs a lookup: 0.6 against 1.5 ms for 209 devices); a bound one has a ``loop`` directory
SYS_BLOCK = "/sys/devices/virtual/block"
#: the loop driver's control device: hands out (and makes) a free loop device
LOOP_CONTROL = "/dev/loop-control"
#: the block devices that have a capacity (major, minor, size, name): the attached loop devices among them
PROC_PARTITIONS = "/proc/partitions"
_LOOP_MAJOR = b"7"
# struct loop_info64 (linux/loop.h) and its ioctls: util-linux cannot change
# the size limit of an attached device, the kernel can.
_LOOP_INFO64 = "<5Q4I64s64s32s2Q"
_LO_SIZELIMIT, _LO_FLAGS = 4, 8  # its fields' places
# struct loop_config: fd, block_size (0: the kernel's default, as losetup without --sector-size), loop_info64,
# 8 reserved u64
_LOOP_CONFIG = "<2I" + _LOOP_INFO64[1:] + "8Q"
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
_LOOP_SET_CAPACITY = 0x4C07
#: since Linux 5.8; older kernels answer EINVAL (or ENOTTY): then LOOP_SET_FD and LOOP_SET_STATUS64, as util-linux
_LOOP_CONFIGURE = 0x4C0A
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
#: lo_file_name's size: the kernel keeps the path's first 63 bytes there (sysfs shows the whole path)
_LO_NAME_SIZE = 64
#: how often an attach tries another free device when an attacher racing it took the one it was given (util-linux)
_ATTACH_TRIES = 64
#: the wait before trying again when the kernel hands out the same busy device (held exclusively by someone)
_BUSY_WAIT = 0.2
# How losetup shows a backing file that was unlinked while attached.
_DELETED = " (deleted)"

log = logging.getLogger(__name__)


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
    caller attached before) is read first: when it still matches, no other device is read; else the
    attached devices with a capacity (:func:`_backed_by`), never one bound to a range that holds no data.
    """
    wanted = os.path.realpath(backing_file)

    def matches(device: Optional[LoopDevice]) -> bool:
        return device is not None and device.backing_file == wanted and device.offset == offset \
            and size_limit in (None, device.size_limit)
    known = _device(likely) if likely else None
    if matches(known):
        return _with_autoclear(known)
    return _with_autoclear(next((device for device in _backed_by(wanted) if matches(device)), None))


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
    likely: Optional[str] = None,
) -> Tuple[LoopDevice, bool]:
    """Attach *backing_file* unless it already is, exactly so; return the device and whether it changed.

    A device being detached (see :class:`LoopDevice`) would unbind under its new user: it is claimed
    back (its autoclear flag cleared, as losetup does with the device it reuses), which is a change.
    *likely*: see :func:`find`.
    """
    started = time.monotonic()
    path = operand(os.path.realpath(backing_file), "backing file")  # absolute: never an option
    what = f"attach {backing_file}"
    existing = _exact(path, offset, size_limit, likely, what)
    if existing is not None:
        if existing.read_only and not read_only:
            raise _refused(path, "overlapping read-only loop device exists", what)
        if not existing.detaching:
            return existing, False
        _clear_autoclear(existing.device, what)
        log.debug("loop reuse %s -> %s in %.4fs", path, existing.device, time.monotonic() - started)
        return dataclasses.replace(existing, detaching=False), True
    device = _configure(path, offset, size_limit, read_only, what)
    log.debug("loop attach %s -> %s in %.4fs", path, device.device, time.monotonic() - started)
    return device, True


def attach(backing_file: str, *, offset: int = 0, size_limit: int = 0, read_only: bool = False,
           likely: Optional[str] = None) -> LoopDevice:
    """The loop device over *backing_file* at *offset*, *size_limit*, as ``losetup --find --nooverlap``.

    It answers the device already attached exactly so (the same file, offset and size limit; util-linux 2.38:
    a read-only one only to a read-only attach), refuses one overlapping it over the same file, and else
    attaches a free one.  *likely* (the device the caller attached before) is read first: while it still
    matches, no other device is read.
    """
    return ensure_attached(backing_file, offset=offset, size_limit=size_limit, read_only=read_only,
                           likely=likely)[0]


def _exact(path: str, offset: int, size_limit: int, likely: Optional[str], what: str) -> Optional[LoopDevice]:
    """The device over *path* at exactly *offset* and *size_limit*; CommandFailed when one overlaps that range.

    As ``--nooverlap`` it compares every device over the file (by its path, which is the kernel's, where
    losetup compares the inode: the same but for hard links and bind mounts); an exact match wins over an
    overlapping one.
    """
    known = _device(likely) if likely else None
    if known is not None and known.backing_file == path and (known.offset, known.size_limit) == (offset, size_limit):
        over_path = [known]
    else:
        over_path = _backed_by(path)
    exact = next((d for d in over_path if (d.offset, d.size_limit) == (offset, size_limit)), None)
    if exact is None:
        if any(_overlaps(d, offset, size_limit) for d in over_path):
            raise _refused(path, "overlapping loop device exists", what)
        return None
    return _with_autoclear(exact)


def _device(name: str) -> Optional[LoopDevice]:
    """The loop device *name* (``/dev/loopN``) as sysfs shows it; None when it is no loop device or unbound."""
    number = name[len("/dev/loop"):] if name.startswith("/dev/loop") else ""
    if not number.isdigit():
        return None
    directory = os.open(SYS_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _read_device(directory, int(number))
    finally:
        os.close(directory)


def _backed_by(path: str) -> List[LoopDevice]:
    """Every attached device over *path* that has a capacity, by device number.

    The attached devices are those ``/proc/partitions`` lists (one read: 0.04 ms, against 1.0-1.2 ms for a
    lookup under each of the 209 device nodes here), as util-linux finds them where sysfs is missing;
    util-linux 2.38 with sysfs looks under every node, which also sees a device bound to a range of no
    capacity (past the file's end, or an empty file): one that holds no data and that no caller attaches.
    """
    with open(PROC_PARTITIONS, "rb") as table:
        rows = [line.split() for line in table.read().splitlines()]
    names = [os.fsdecode(row[3]) for row in rows if len(row) == 4 and row[0] == _LOOP_MAJOR]
    directory = os.open(SYS_BLOCK, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        found = []
        for name in names:
            try:
                backing_file = _attribute(directory, f"{name}/loop/backing_file")
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):  # detached meanwhile
                    continue
                raise Precondition(f"cannot read loop device /dev/{name} in {SYS_BLOCK}: {error.strerror}") from None
            device = _read_device(directory, int(name[4:])) if backing_file == path else None
            if device is not None and device.backing_file == path:
                found.append(device)
        return sorted(found, key=lambda device: int(device.device[len("/dev/loop"):]))
    finally:
        os.close(directory)


def _overlaps(device: LoopDevice, offset: int, size_limit: int) -> bool:
    """Whether *device* and the range *offset*, *size_limit* (0: to the end) of its file overlap, as util-linux."""
    if device.size_limit and offset >= device.offset + device.size_limit:
        return False
    return not (size_limit and offset + size_limit <= device.offset)


def _configure(path: str, offset: int, size_limit: int, read_only: bool, what: str) -> LoopDevice:
    """A free device bound to *path* (opened read-write, read-only when asked or when it cannot be written)."""
    mode = os.O_RDONLY if read_only else os.O_RDWR
    try:
        backing = os.open(path, mode | os.O_CLOEXEC)
    except OSError as error:
        if mode == os.O_RDONLY or error.errno not in (errno.EROFS, errno.EACCES):
            raise _failed("open", path, error, what) from None
        mode = os.O_RDONLY  # as losetup: a file that cannot be written makes a read-only device
        try:
            backing = os.open(path, mode | os.O_CLOEXEC)
        except OSError as again:
            raise _failed("open", path, again, what) from None
    name = path.encode()[:_LO_NAME_SIZE - 1]
    flags = _LO_FLAGS_READ_ONLY if mode == os.O_RDONLY else 0
    info = (0, 0, 0, offset, size_limit, 0, 0, 0, flags, name, b"", b"", 0, 0)
    try:
        busy = -1
        for _attempt in range(_ATTACH_TRIES):
            number = _free_device(what)
            if number == busy:  # held by someone (not a racing attacher, which makes the next one free)
                time.sleep(_BUSY_WAIT)
            device = f"/dev/loop{number}"
            if _bind(device, backing, mode, info, what):
                return LoopDevice(device, path, offset, size_limit, mode == os.O_RDONLY)
            busy = number
        raise _refused(path, f"no free loop device after {_ATTACH_TRIES} tries (each taken meanwhile)", what)
    finally:
        os.close(backing)


def _free_device(what: str) -> int:
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            return fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
        finally:
            os.close(control)
    except OSError as error:
        raise _failed("LOOP_CTL_GET_FREE", LOOP_CONTROL, error, what) from None


def _bind(device: str, backing: int, mode: int, info: tuple, what: str) -> bool:
    """Bind free *device* to the open file *backing*; False when another attacher took it meanwhile."""
    try:
        try:
            fd = os.open(device, mode | os.O_CLOEXEC)
        except FileNotFoundError:  # a new device whose node udevd (where it runs) has not made yet
            device_wait.appeared(device, "free loop device")
            fd = os.open(device, mode | os.O_CLOEXEC)
    except OSError as error:
        raise _failed("open", device, error, what) from None
    try:
        try:
            fcntl.ioctl(fd, _LOOP_CONFIGURE, struct.pack(_LOOP_CONFIG, backing, 0, *info, *[0] * 8))
        except OSError as error:
            if error.errno in (errno.EBUSY, errno.EAGAIN):
                return False
            if error.errno not in (errno.EINVAL, errno.ENOTTY):
                raise _failed("LOOP_CONFIGURE", device, error, what) from None
            return _bind_in_two_steps(fd, device, backing, info, what)
        return True
    finally:
        os.close(fd)


def _bind_in_two_steps(fd: int, device: str, backing: int, info: tuple, what: str) -> bool:
    """Without LOOP_CONFIGURE (Linux before 5.8): bind, then set the range; unbound again if that fails."""
    try:
        fcntl.ioctl(fd, _LOOP_SET_FD, backing)  # read-only follows the file's open mode
    except OSError as error:
        if error.errno in (errno.EBUSY, errno.EAGAIN):
            return False
        raise _failed("LOOP_SET_FD", device, error, what) from None
    try:
        fcntl.ioctl(fd, _LOOP_SET_STATUS64, struct.pack(_LOOP_INFO64, *info))
    except OSError as error:
        fcntl.ioctl(fd, _LOOP_CLR_FD, 0)
        raise _failed("LOOP_SET_STATUS64", device, error, what) from None
    return True


def _clear_autoclear(device: str, what: str) -> None:
    """Keep *device* bound past its holder's last close: a detach waiting for it is taken back."""
    try:
        _change_status(device, _LO_FLAGS, lambda flags: flags & ~_LO_FLAGS_AUTOCLEAR)
    except OSError as error:
        raise _failed("LOOP_SET_STATUS64", device, error, what) from None


def _change_status(device: str, field: int, change: Callable[[int], int]) -> None:
    """Read *device*'s loop_info64, *change* one of its fields, set it (read-only open: root may, as losetup)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        status = bytearray(struct.calcsize(_LOOP_INFO64))
        fcntl.ioctl(fd, _LOOP_GET_STATUS64, status)
        fields = list(struct.unpack(_LOOP_INFO64, bytes(status)))
        fields[field] = change(fields[field])
        fcntl.ioctl(fd, _LOOP_SET_STATUS64, struct.pack(_LOOP_INFO64, *fields))
    finally:
        os.close(fd)


def _failed(request: str, target: str, error: OSError, what: str) -> CommandFailed:
    """A call the kernel refused, typed as the losetup failure it replaces (rc 1), naming its object."""
    return CommandFailed([request, target], 1, f"{target}: {error.strerror}", what)


def _refused(path: str, reason: str, what: str) -> CommandFailed:
    """An attach refused as ``losetup --nooverlap`` refuses it (rc 1, its words)."""
    return CommandFailed(["LOOP_CONFIGURE", path], 1, f"{path}: {reason}", what)


def refresh_capacity(device: str) -> None:
    """Make the loop device see a backing file that has grown, as ``losetup --set-capacity`` does (read-only
    open: root may)."""
    _ioctl_on(device, "LOOP_SET_CAPACITY", _LOOP_SET_CAPACITY, f"refresh size of {device}")


def set_size_limit(device: str, size_limit: int) -> None:
    """Change how many bytes of its backing file (from its offset) a loop device exposes."""
    _change_status(device, _LO_SIZELIMIT, lambda _old: size_limit)


#: how long a detach waits for a device still held at the command (autoclear set) to be unbound by its
#: holder's last close: an unmount or a target that lets go of it a moment later (seen under load)
DETACH_SETTLE = 2.0


def detach(device: str) -> None:
    """Detach *device* as ``losetup --detach`` does; when something still holds it, wait a moment for that
    holder to let go.

    ``LOOP_CLR_FD`` unbinds the device at once when only this call holds it open; otherwise the kernel
    sets autoclear and unbinds it at the last close.  A device that is not bound fails (ENXIO) as losetup
    does, with rc 1.
    """
    started = time.monotonic()
    _ioctl_on(device, "LOOP_CLR_FD", _LOOP_CLR_FD, f"detach {device}")  # its close unbinds a device nobody holds
    log.debug("loop detach %s in %.4fs", device, time.monotonic() - started)
    deadline = time.monotonic() + DETACH_SETTLE
    while _detaching(device) and time.monotonic() < deadline:
        time.sleep(0.005)


def _ioctl_on(device: str, name: str, request: int, what: str) -> None:
    """*request* (argument 0) on *device* opened read-only (root may, as losetup), then closed; a refusal,
    of the open or of the call, typed as the losetup failure it replaces, naming *name*."""
    try:
        fd = os.open(operand(device, "device"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, request, 0)
        finally:
            os.close(fd)
    except OSError as error:
        raise _failed(name, device, error, what) from None


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
