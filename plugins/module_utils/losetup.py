"""Loop devices through ``losetup``: attach a file (or a range of a device), find, refresh, detach."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

from .errors import CommandFailed
from .runner import operand, run

_COLUMNS = "NAME,BACK-FILE,OFFSET,SIZELIMIT,RO"


@dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str
    offset: int
    size_limit: int
    read_only: bool


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


def find(backing_file: str, offset: int = 0) -> Optional[LoopDevice]:
    """The loop device backed by *backing_file* at *offset*, if one is attached."""
    wanted = os.path.realpath(backing_file)
    for device in list_devices():
        if device.backing_file == wanted and device.offset == offset:
            return device
    return None


def ensure_attached(
    backing_file: str,
    *,
    offset: int = 0,
    size_limit: int = 0,
    read_only: bool = False,
) -> "tuple[LoopDevice, bool]":
    """Attach *backing_file* unless it already is; return the device and whether it changed."""
    existing = find(backing_file, offset)
    if existing is not None:
        return existing, False
    argv = ["losetup", "--find", "--show", "--nooverlap"]
    if offset:
        argv += ["--offset", str(offset)]
    if size_limit:
        argv += ["--sizelimit", str(size_limit)]
    if read_only:
        argv.append("--read-only")
    argv.append(operand(os.path.realpath(backing_file), "backing file"))
    run(argv, what=f"attach {backing_file}")
    attached = find(backing_file, offset)
    if attached is None:
        raise CommandFailed(argv, 0, "device attached but not listed", f"attach {backing_file}")
    return attached, True


def refresh_capacity(device: str) -> None:
    """Make the loop device see a backing file that has grown."""
    run(["losetup", "--set-capacity", operand(device, "device")], what=f"refresh size of {device}")


def detach(device: str) -> None:
    run(["losetup", "--detach", operand(device, "device")], what=f"detach {device}")


def ensure_detached(backing_file: str, offset: int = 0) -> bool:
    """Detach the loop device of *backing_file*; False when none was attached."""
    existing = find(backing_file, offset)
    if existing is None:
        return False
    detach(existing.device)
    return True
