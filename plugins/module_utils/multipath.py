"""dm-multipath (multipath-tools 0.9): the map that holds an iSCSI target's SCSI disks, and flushing it.

A node logged in to one target on several portals has one SCSI disk per
portal, all with the same unit serial.  When ``multipathd`` runs, it puts
them under one device-mapper map (``find_multipaths`` permitting); the
filesystem must then live on the map, never on one path.

* The map is found in sysfs, no output parsing: each path's
  ``/sys/block/sdX/holders/dm-N`` whose ``dm/uuid`` starts with ``mpath-``;
  its ``dm/name`` is what ``multipath -f`` takes, its ``slaves/`` the paths it
  holds (tests/unit/plugins/module_utils/multipath_recorded: trees captured in the VM tier).
* ``multipathd show daemon`` answers ``pid N idle|running`` while the daemon
  serves its socket; without a daemon it fails (rc 1), without the package
  the command is missing.
* ``multipathd resize map MAP`` after the paths were rescanned: a grown LUN
  grows the map.
* ``multipath -f MAP`` removes the map (flushing its queued I/O) before the
  paths are logged out: with ``queue_if_no_path`` a map without paths would
  hang every I/O on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from . import device_wait
from .devices import read_text
from .errors import CommandFailed, Precondition
from .runner import operand, run

TIMEOUT = 60.0
UUID_PREFIX = "mpath-"


@dataclass(frozen=True)
class Map:
    """A dm-multipath map: its dm ``name``, kernel name ``dm-N``, and its path disks."""

    name: str
    kernel_name: str
    uuid: str
    paths: Tuple[str, ...]

    @property
    def device(self) -> str:
        # /dev/dm-N, not /dev/mapper/NAME: devtmpfs makes the former with the map, the latter is udev's
        # link and was still missing when the map was already there (VM tier).
        return os.path.join("/dev", self.kernel_name)


def daemon_running() -> bool:
    """Whether multipathd runs and answers on its socket."""
    try:
        result = run(["multipathd", "show", "daemon"], check=False, timeout=TIMEOUT, what="ask multipathd")
    except CommandFailed:  # multipath-tools not installed
        return False
    return result.rc == 0 and result.stdout.startswith("pid ")


def map_of(disk: str, *, sys_root: str = "/sys") -> Optional[Map]:
    """The multipath map holding *disk* (a kernel name such as ``sda``), or None."""
    holders = os.path.join(sys_root, "block", disk, "holders")
    try:
        names = sorted(os.listdir(holders))
    except OSError:
        return None
    for holder in names:
        dm = os.path.join(sys_root, "block", holder, "dm")
        uuid = read_text(os.path.join(dm, "uuid"))
        if not uuid.startswith(UUID_PREFIX):
            continue  # another dm target stacked on the disk (LVM, crypt): not a multipath map
        try:
            paths = tuple(sorted(os.listdir(os.path.join(sys_root, "block", holder, "slaves"))))
        except OSError:
            paths = ()
        return Map(read_text(os.path.join(dm, "name")), holder, uuid, paths)
    return None


def map_for(disks: Iterable[str], *, sys_root: str = "/sys") -> Optional[Map]:
    """The map holding any of *disks* (kernel names), or None."""
    for disk in disks:
        found = map_of(disk, sys_root=sys_root)
        if found is not None:
            return found
    return None


def wait_for_map(disks: Sequence[str], timeout: float, *, sys_root: str = "/sys",
                 poll_interval: float = 0.25) -> Map:
    """Wait until one map holds every disk of *disks* (multipathd adds paths one by one)."""
    wanted = set(disks)
    last: List[Optional[Map]] = [None]

    def complete() -> Optional[Map]:
        last[0] = map_for(disks, sys_root=sys_root)
        return last[0] if last[0] is not None and wanted <= set(last[0].paths) else None

    found = device_wait.wait_for(complete, timeout, poll_interval=poll_interval)  # a map is a block device
    if found is None:
        have = f"map {last[0].name} holds {', '.join(last[0].paths)}" if last[0] else "no map"
        # multipathd runs but will not build the map: the host's configuration, not a missing volume
        raise Precondition(f"multipathd made no map of {', '.join(sorted(wanted))} within {timeout:g}s "
                           f"({have}); check find_multipaths and the blacklist in multipath.conf")
    return found


def map_at(device: str, *, sys_root: str = "/sys") -> Optional[Map]:
    """The multipath map that *device* (``/dev/dm-N``, as :attr:`Map.device` names it) is, or None."""
    kernel_name = os.path.basename(device)
    uuid = read_text(os.path.join(sys_root, "block", kernel_name, "dm", "uuid"))
    if not kernel_name.startswith("dm-") or not uuid.startswith(UUID_PREFIX):
        return None
    try:
        paths = tuple(sorted(os.listdir(os.path.join(sys_root, "block", kernel_name, "slaves"))))
    except OSError:
        paths = ()
    return Map(read_text(os.path.join(sys_root, "block", kernel_name, "dm", "name")), kernel_name, uuid, paths)


def flush(name: str, *, uuid: str = "", sys_root: str = "/sys") -> bool:
    """Remove map *name* (``multipath -f``); False when there is no such map.

    With *uuid* (``mpath-<wwid>``, from the LUN's identity) only the map of that name that has that
    uuid: a name freed when its map went may have been given to another volume's map since.
    """
    if not any(n == name and (not uuid or u == uuid) for n, u in _maps(sys_root)):
        return False
    run(["multipath", "-f", operand(name, "multipath map")], timeout=TIMEOUT, what=f"flush multipath map {name}")
    return True


def resize(name: str) -> None:
    """Make map *name* take its paths' new size (after they were rescanned)."""
    run(["multipathd", "resize", "map", operand(name, "multipath map")], timeout=TIMEOUT,
        what=f"resize multipath map {name}")


def map_names(*, sys_root: str = "/sys") -> List[str]:
    """Names of every multipath map (dm devices whose uuid starts with ``mpath-``)."""
    return [name for name, _uuid in _maps(sys_root)]


def _maps(sys_root: str) -> List[Tuple[str, str]]:
    """(name, uuid) of every multipath map."""
    block = os.path.join(sys_root, "block")
    try:
        entries = sorted(os.listdir(block))
    except OSError:
        return []
    found = []
    for entry in entries:
        uuid = read_text(os.path.join(block, entry, "dm", "uuid"))
        if entry.startswith("dm-") and uuid.startswith(UUID_PREFIX):
            found.append((read_text(os.path.join(block, entry, "dm", "name")), uuid))
    return found
