"""Node-side steps shared by the agent and the ``mount`` module.

Format-if-blank (never reformat data), mount, bind-publish, unpublish and
unstage, each idempotent and reporting whether it changed anything.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence

from . import devices, filesystem
from . import mount as mounts
from .blkid import probe
from .errors import Conflict, InvalidRequest, Precondition

log = logging.getLogger(__name__)


def ensure_filesystem(device: str, fs_type: str, *, force: bool = False, check_mode: bool = False,
                      before_format: Optional[Callable[[], None]] = None) -> bool:
    """Create *fs_type* on *device* only when it is blank; refuse a device holding anything else.

    With *force*, a device holding another filesystem or other data is wiped
    (``wipefs --all``) and formatted; a device that already holds *fs_type* is
    never reformatted.  *before_format* runs just before a filesystem is made
    (the agent records that it is making one, so a crash during mkfs is its to redo).
    """
    fs = filesystem.check_type(fs_type)
    found = probe(device)
    if found.blank:
        if not check_mode:
            if before_format is not None:
                before_format()
            filesystem.make(device, fs)
            log.info("created %s on blank device %s", fs, device)
        return True
    if found.fs_type != fs:
        if not force:
            raise Precondition(
                f"{device} holds {found.describe()}, not {fs}; refusing to format a device that holds data"
            )
        if not check_mode:
            if before_format is not None:
                before_format()
            filesystem.wipe(device)
            filesystem.make(device, fs)
            log.warning("wiped %s (it held %s) and created %s, as forced", device, found.describe(), fs)
        return True
    return False


def ensure_mounted(
    device: str,
    path: str,
    fs_type: str,
    options: Sequence[str] = (),
    *,
    force: bool = False,
    check_mode: bool = False,
    before_format: Optional[Callable[[], None]] = None,
) -> bool:
    """Format-if-blank (or forced, see ensure_filesystem), grow the filesystem to the device, and mount it."""
    fs = filesystem.check_type(fs_type)
    current = mounts.find_mount(path)
    if current is not None:
        if current.major_minor != devices.device_number(device) or current.root != "/":
            raise Conflict(f"{path} already has {current.source} mounted, not {device}")
        return False
    changed = ensure_filesystem(device, fs, force=force, check_mode=check_mode, before_format=before_format)
    if check_mode:
        return True
    os.makedirs(path, exist_ok=True)
    if fs == "ext4" and not changed and filesystem.size(device, fs) < devices.size_bytes(device):
        # The volume grew while unmounted: grow offline, which always works.
        filesystem.grow_offline(device, fs)
    mounts.mount(device, path, fs, options)
    if fs == "xfs" and filesystem.size(device, fs, path) < devices.size_bytes(device):
        filesystem.grow_online(device, fs, path)
    return True


def ensure_bind(source: str, target: str, *, read_only: bool = False,
                options: Sequence[str] = (), block: bool = False, check_mode: bool = False) -> bool:
    """Bind-mount *source* (a directory, or a device node when *block*) onto *target*."""
    current = mounts.find_mount(target)
    if current is not None:
        if not _same_origin(current, source, block):
            raise Conflict(f"{target} already has something other than {source} mounted")
        if current.read_only != read_only:
            state = "read-only" if current.read_only else "read-write"
            raise Conflict(f"{target} is already mounted {state}")
        return False
    if check_mode:
        return True
    if block:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "w", encoding="utf-8"):
                pass
    else:
        os.makedirs(target, exist_ok=True)
    mounts.bind_mount(source, target, read_only=read_only, options=options)
    return True


def _same_origin(current: mounts.MountEntry, source: str, block: bool) -> bool:
    if block:
        # A bound device node shows as its path inside the devtmpfs mount.
        return current.root.endswith("/" + os.path.basename(source))
    origin = mounts.find_mount(source)
    return origin is not None and (origin.major_minor, origin.root) == (current.major_minor, current.root)


def ensure_unmounted(path: str, *, remove: bool = False, check_mode: bool = False) -> bool:
    """Unmount everything stacked at *path*; with *remove*, delete the path the mount used."""
    changed = False
    while mounts.find_mount(path) is not None:
        changed = True
        if check_mode:
            return True
        mounts.unmount(path)
    if remove and os.path.lexists(path):
        changed = True
        if not check_mode:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
    return changed


def device_mount_points(device: str) -> List[str]:
    """Where *device* is mounted (including bind mounts of it), for stats and checks."""
    number = devices.device_number(device)
    return [e.mount_point for e in mounts.mounts() if e.major_minor == number]


def check_absolute(path: str, what: str) -> str:
    if not path or not os.path.isabs(path) or "\0" in path:
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    normal = os.path.normpath(path)
    if normal != path.rstrip("/") and normal != path:
        raise InvalidRequest(f"{what} {path!r} must be normalised (no '.', '..' or '//')")
    return normal
