"""Whether a block device is in use: the one rule checked before a leftover device is removed.

A leftover (a loop device or an iSCSI session that no record owns) is never
taken away from a user.  A device is in use when, for it, any of its
partitions, or anything stacked on them (``/sys/class/block/NAME/holders``: a
dm-multipath map, an LV, md), recursively:

* a filesystem is mounted from it (``/proc/self/mountinfo``, by device
  number, or by source path for filesystems such as btrfs whose device
  number is anonymous);
* it is swap (``/proc/swaps``);
* something holds it (the holder is named);
* another program has it open exclusively: the kernel refuses ``O_EXCL``
  with EBUSY.  That also sees a mount in another mount namespace, which this
  process's mount table does not show.  The probe holds the device for the
  length of an ``open``; it is made only on devices no record owns.

Everything is read from the kernel, where :class:`Kernel` says (tests point it at recorded trees).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .devices import read_text
from .mount import MOUNTINFO, parse_mountinfo

DEV_ROOT = "/dev"


@dataclass(frozen=True)
class Kernel:
    """Where the kernel's facts are read."""

    sys_root: str = "/sys"
    dev_root: str = DEV_ROOT
    mountinfo: str = MOUNTINFO
    swaps: str = "/proc/swaps"


HOST = Kernel()


def _entries(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def kernel_name(device: str) -> str:
    """``sda`` for ``/dev/sda``, ``dm-3`` for ``/dev/VG/LV`` (a link), a kernel name as it is."""
    return os.path.basename(os.path.realpath(device) if device.startswith(os.sep) else device)


def _stack(names: Iterable[str], sys_root: str) -> List[Tuple[str, bool]]:
    """Every device of *names*, their partitions and their holders, recursively, as (kernel name, whether it
    holds another: a partition is part of its disk, a holder is a user of its own)."""
    found: List[Tuple[str, bool]] = []
    seen: Set[str] = set()
    queue = [(name, False) for name in names]
    while queue:
        name, holder = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        found.append((name, holder))
        node = os.path.join(sys_root, "class", "block", name)
        queue += [(part, holder) for part in _entries(node) if os.path.exists(os.path.join(node, part, "partition"))]
        queue += [(above, True) for above in _entries(os.path.join(node, "holders"))]
    return found


def users(devices: Iterable[str], kernel: Optional[Kernel] = None) -> List[str]:
    """What uses any of *devices* (``/dev`` paths or kernel names), one phrase each; empty when nothing does.
    *kernel* defaults to :data:`HOST`."""
    kernel = kernel or HOST
    sys_root = kernel.sys_root
    top = [kernel_name(device) for device in devices]
    stack = _stack(top, sys_root)
    paths: Dict[str, str] = {}  # how a mount table or /proc/swaps may name each device -> its kernel name
    numbers: Dict[str, str] = {}  # major:minor -> kernel name
    for name, _holder in stack:
        paths[os.path.join(DEV_ROOT, name)] = name
        dm_name = read_text(os.path.join(sys_root, "class", "block", name, "dm", "name"))
        if dm_name:
            paths[os.path.join(DEV_ROOT, "mapper", dm_name)] = name
        number = read_text(os.path.join(sys_root, "class", "block", name, "dev"))
        if number:
            numbers[number] = name
    found = []
    for name, holder in stack:
        if holder:
            dm_name = read_text(os.path.join(sys_root, "class", "block", name, "dm", "name"))
            found.append(f"held by {name}" + (f" ({dm_name})" if dm_name else ""))
    for entry in parse_mountinfo(read_text(kernel.mountinfo)):
        mounted = numbers.get(entry.major_minor) or paths.get(entry.source)
        if mounted:
            found.append(f"{os.path.join(DEV_ROOT, mounted)} is mounted on {entry.mount_point}")
    for line in read_text(kernel.swaps).splitlines()[1:]:
        swap = paths.get(line.split()[0]) if line.split() else None
        if swap:
            found.append(f"{os.path.join(DEV_ROOT, swap)} is swap")
    if not found:
        found += [f"{os.path.join(DEV_ROOT, name)} is open exclusively by another program (a mount in another "
                  "namespace, mkfs, ...)" for name in top if _claimed(os.path.join(kernel.dev_root, name))]
    return list(dict.fromkeys(found))


def _claimed(path: str) -> bool:
    """Whether the kernel refuses this process an exclusive open of *path* (another holder has claimed it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return error.errno == errno.EBUSY  # a missing or unreadable device is not judged here
    os.close(fd)
    return False
