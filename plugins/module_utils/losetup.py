"""Loop devices through ``losetup``: attach a file (or a range of a device), find, refresh, detach."""

from __future__ import annotations

import fcntl
import json
import os
import struct
from dataclasses import dataclass
from typing import Collection, List, Optional

from . import device_wait
from .errors import CommandFailed
from .runner import operand, run

_COLUMNS = "NAME,BACK-FILE,OFFSET,SIZELIMIT,RO"
# struct loop_info64 (linux/loop.h) and its ioctls: util-linux cannot change
# the size limit of an attached device, the kernel can.
_LOOP_INFO64 = "<5Q4I64s64s32s2Q"
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_GET_STATUS64 = 0x4C05
# How losetup shows a backing file that was unlinked while attached.
_DELETED = " (deleted)"


@dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str
    offset: int
    size_limit: int
    read_only: bool

    @property
    def backing_path(self) -> str:
        """The backing file's path, also when it has been unlinked since (``backing_file`` then says so)."""
        return self.backing_file[:-len(_DELETED)] if self.backing_file.endswith(_DELETED) else self.backing_file


def list_devices() -> List[LoopDevice]:
    result = run(["losetup", "--list", "--json", "--output", _COLUMNS], what="list loop devices")
    if not result.stdout.strip():
        return []
    devices = []
    for entry in json.loads(result.stdout).get("loopdevices", []):
        devices.append(
            LoopDevice(
                device=entry["name"],
                backing_file=entry.get("back-file") or "",
                offset=int(entry.get("offset") or 0),
                size_limit=int(entry.get("sizelimit") or 0),
                read_only=_as_bool(entry.get("ro")),
            )
        )
    return devices


def _as_bool(value: object) -> bool:
    return value in (True, 1, "1", "true")


def find(backing_file: str, offset: int = 0, size_limit: Optional[int] = None) -> Optional[LoopDevice]:
    """The loop device backed by *backing_file* at *offset* (and exactly *size_limit*, if given), if attached.

    A device over an unlinked file never matches a file now at that path.
    """
    wanted = os.path.realpath(backing_file)
    for device in list_devices():
        if device.backing_file == wanted and device.offset == offset and size_limit in (None, device.size_limit):
            return device
    return None


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

    ``--nooverlap`` makes losetup itself refuse a device overlapping another one over the same file.
    """
    existing = find(backing_file, offset, size_limit)
    if existing is not None:
        return existing, False
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
    return LoopDevice(device, path, offset, size_limit, read_only), True


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


def detach(device: str) -> None:
    run(["losetup", "--detach", operand(device, "device")], what=f"detach {device}")


def ensure_detached(backing_file: str, offset: int = 0) -> bool:
    """Detach the loop device of *backing_file*; False when none was attached."""
    existing = find(backing_file, offset)
    if existing is None:
        return False
    detach(existing.device)
    return True
