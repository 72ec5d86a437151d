"""Filesystems on block devices: make (only on blank devices), measure, grow.

Tools: mkfs.ext4/mkfs.xfs, dumpe2fs/e2fsck/resize2fs (e2fsprogs), xfs_growfs
(xfsprogs).  Freezing is ``freeze.py``.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

from . import progress
from .blkid import probe
from .errors import CommandFailed, InvalidRequest, Precondition
from .runner import operand, run

SUPPORTED = ("ext4", "xfs")
DEFAULT_FS = "ext4"
# xfsprogs >= 5.19 refuses filesystems below 300 MiB.
MINIMUM_SIZE = {"ext4": 0, "xfs": 300 << 20}
_CAP_SYS_RESOURCE = 24  # capability bit (linux/capability.h)

_MKFS: Dict[str, List[str]] = {
    # Lazy init keeps mkfs of a large sparse volume fast and sparse.
    "ext4": ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1"],
    "xfs": ["mkfs.xfs", "-q"],
}


def check_type(fs_type: str) -> str:
    """Return the canonical filesystem type for a request ('' means the default)."""
    fs = fs_type or DEFAULT_FS
    if fs not in SUPPORTED:
        raise InvalidRequest(f"filesystem type {fs_type!r} is not supported (use one of {', '.join(SUPPORTED)})")
    return fs


def make(device: str, fs_type: str) -> None:
    """Create a filesystem; callers must have checked the device is blank."""
    fs = check_type(fs_type)
    with progress.tracked(f"making {fs} on {device}"):  # mkfs tells no fraction: only that it runs
        run(_MKFS[fs] + [operand(device, "device")], timeout=600, what=f"create {fs} on {device}")


def wipe(device: str) -> None:
    """Erase every filesystem, RAID and partition-table signature on *device* (``wipefs --all``)."""
    run(["wipefs", "--all", operand(device, "device")], what=f"wipe signatures on {device}")


def size(device: str, fs_type: str, mount_point: Optional[str] = None) -> int:
    """Bytes the filesystem on *device* spans (ext4 read offline; xfs needs its mount)."""
    if fs_type == "ext4":
        out = run(["dumpe2fs", "-h", operand(device, "device")], what=f"read ext4 size of {device}").stdout
        blocks = _field(out, r"^Block count:\s+(\d+)")
        block_size = _field(out, r"^Block size:\s+(\d+)")
        return blocks * block_size
    if fs_type == "xfs" and mount_point:
        argv = ["xfs_growfs", "-n", operand(mount_point, "mount point")]
        out = run(argv, what=f"read xfs size at {mount_point}").stdout
        data = re.search(r"^data\s+=\s+bsize=(\d+)\s+blocks=(\d+)", out, re.M)
        if data:
            return int(data.group(1)) * int(data.group(2))
    raise InvalidRequest(f"cannot measure a {fs_type} filesystem on {device} this way")


def _field(text: str, pattern: str) -> int:
    match = re.search(pattern, text, re.M)
    if not match:
        raise CommandFailed(["dumpe2fs"], 0, f"no match for {pattern!r} in its output")
    return int(match.group(1))


def grow_offline(device: str, fs_type: str) -> None:
    """Grow an unmounted filesystem to its device (ext4; xfs only grows mounted)."""
    if fs_type != "ext4":
        raise InvalidRequest(f"{fs_type} cannot grow offline")
    dev = operand(device, "device")
    check_before_grow(dev)
    run(["resize2fs", dev], timeout=600, what=f"grow ext4 on {device}")


def check_before_grow(device: str) -> None:
    """``e2fsck -f -p``: resize2fs insists on a freshly checked filesystem when it is unmounted."""
    dev = operand(device, "device")
    fsck = run(["e2fsck", "-f", "-p", dev], check=False, timeout=600, what=f"check {device}")
    if fsck.rc not in (0, 1):
        raise CommandFailed(fsck.argv, fsck.rc, fsck.stderr or fsck.stdout, f"check {device} before growing")


def online_grow_allowed(fs_type: str) -> bool:
    """Whether this process may grow a mounted *fs_type*: ext4's resize ioctl needs CAP_SYS_RESOURCE, which
    some container sandboxes drop (resize2fs then fails with "Permission denied"); xfs_growfs needs none."""
    if fs_type != "ext4":
        return True
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    return False


def grow_online(device: str, fs_type: str, mount_point: str) -> None:
    """Grow a mounted filesystem to its device."""
    try:
        if fs_type == "xfs":
            run(["xfs_growfs", operand(mount_point, "mount point")], timeout=600, what=f"grow xfs at {mount_point}")
        elif fs_type == "ext4":
            run(["resize2fs", operand(device, "device")], timeout=600, what=f"grow ext4 on {device}")
        else:
            raise InvalidRequest(f"cannot grow a {fs_type} filesystem")
    except CommandFailed as failure:
        if "Operation not permitted" in failure.stderr or "Permission denied" in failure.stderr:
            raise Precondition(
                f"the kernel refused to grow the mounted {fs_type} filesystem at {mount_point} "
                f"({failure.stderr}); unstage and stage the volume again to grow it offline"
            ) from failure
        raise


def renew_uuid(device: str, fs_type: str) -> None:
    """Give the unmounted filesystem on *device* a new random UUID (a copy becomes a filesystem of its own)."""
    if fs_type != "xfs":
        raise InvalidRequest(f"renewing the UUID of {fs_type} is not supported")
    dev = operand(device, "device")
    before = probe(dev).uuid
    result = run(["xfs_admin", "-U", "generate", dev], check=False, what=f"renew the UUID of {device}")
    if result.rc != 0 or probe(dev).uuid == before:  # xfs_admin answers 0 even when it refuses a dirty log
        raise CommandFailed(result.argv, result.rc, result.stderr or result.stdout, f"renew the UUID of {device}")
