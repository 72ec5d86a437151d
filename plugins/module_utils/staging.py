"""Node-side steps shared by the agent and the ``mount`` module.

Format-if-blank (never reformat data), mount, bind-publish, unpublish and
unstage, each idempotent and reporting whether it changed anything.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from . import devices, ext4_grow, filesystem, losetup
from . import mount as mounts
from .blkid import examine, probe
from .devices import device_number  # (also staging.device_number to callers)
from .errors import Conflict, InvalidRequest, Precondition

log = logging.getLogger(__name__)


def ensure_filesystem(device: str, fs_type: str, *, force: bool = False, check_mode: bool = False,
                      before_format: Optional[Callable[[], None]] = None) -> bool:
    """Create *fs_type* on *device* only when it is blank; refuse a device holding anything else.

    Blank is ``blkid.examine``'s rule: no signature, and the first and last MiB
    read as zeros. With *force*, a device holding another filesystem or other
    data is wiped (``wipefs --all``) and formatted; a device that already holds
    *fs_type* is never reformatted.  *before_format* runs just before a filesystem
    is made (the agent records that it is making one, so a crash during mkfs is its to redo).
    """
    fs = filesystem.check_type(fs_type)
    found = examine(device)
    if found.blank or (found.fs_type != fs and force):
        _check_fits(device, fs)
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


def _check_fits(device: str, fs: str) -> None:
    """Refuse before mkfs does: a device below the filesystem's minimum size (xfsprogs has one)."""
    if not filesystem.MINIMUM_SIZE[fs]:
        return
    size = devices.size_bytes(device)
    if size < filesystem.MINIMUM_SIZE[fs]:
        raise Precondition(f"{device} is {size} bytes, too small for {fs}: mkfs.{fs} needs at least "
                           f"{filesystem.MINIMUM_SIZE[fs]} bytes")


def ensure_mounted(
    device: str,
    path: str,
    fs_type: str,
    options: Sequence[str] = (),
    *,
    force: bool = False,
    check_mode: bool = False,
    before_format: Optional[Callable[[], None]] = None,
    grow_mark: Optional[str] = None,
) -> bool:
    """Format-if-blank (or forced, see ensure_filesystem), grow the filesystem to the device, and mount it.

    A filesystem the device outgrew is grown once mounted where this process
    may (the kernel journals an online grow), else offline before the mount;
    with *grow_mark* (a path prefix that is this volume's alone, kept across
    restarts) an offline ext4 grow killed at any point is finished by the
    next call (``ext4_grow``).
    """
    fs = filesystem.check_type(fs_type)
    current = mounts.find_mount(path)
    if current is not None:
        if current.major_minor != device_number(device) or current.root != "/":
            raise Conflict(f"{path} already has {current.source} mounted, not {device}")
        if current.fs_type != fs:
            raise Conflict(f"{path} has {device} mounted as {current.fs_type}, not as the {fs} asked for")
        return _grow_mounted(device, fs, path, check_mode)
    _check_kind(path, directory=True)
    changed = ensure_filesystem(device, fs, force=force, check_mode=check_mode, before_format=before_format)
    if check_mode:
        return True
    os.makedirs(path, exist_ok=True)
    if fs == "xfs" and not changed:
        _renew_copied_identity(device, path)
    online = fs == "xfs" or _grow_unmounted(device, changed, grow_mark)
    mounts.mount(device, path, fs, options)
    if online and filesystem.size(device, fs, path) < devices.size_bytes(device):
        try:
            filesystem.grow_online(device, fs, path)
            log.info("grew %s on %s online", fs, device)
        except Precondition:
            if fs != "ext4":
                raise
            log.warning("the kernel refused to grow ext4 on %s online: growing it offline", device)
            mounts.unmount(path)
            _grow_offline(device, grow_mark)
            mounts.mount(device, path, fs, options)
    return True


def _grow_unmounted(device: str, made: bool, grow_mark: Optional[str]) -> bool:
    """Grow the unmounted ext4 filesystem on *device* offline if it must be; return whether to grow it once
    mounted instead (this process may: the kernel's online grow is crash-safe)."""
    if made:
        if grow_mark is not None:
            ext4_grow.discard(grow_mark)  # a grow of the filesystem made before this one is moot
        return False
    interrupted = grow_mark is not None and ext4_grow.pending(grow_mark)
    if interrupted or filesystem.size(device, "ext4") < devices.size_bytes(device):
        if interrupted or not filesystem.online_grow_allowed("ext4"):
            _grow_offline(device, grow_mark)
            return False
        return True
    return False


def _grow_offline(device: str, grow_mark: Optional[str]) -> None:
    if grow_mark is None:
        filesystem.grow_offline(device, "ext4")
    else:
        ext4_grow.grow(device, grow_mark)


def _grow_mounted(device: str, fs: str, path: str, check_mode: bool) -> bool:
    """Grow a filesystem already mounted at *path* (a call killed between its mount and its online grow) where
    this process may; a refusal leaves it as it is (NodeExpandVolume grows it or says why)."""
    if not filesystem.online_grow_allowed(fs) or filesystem.size(device, fs, path) >= devices.size_bytes(device):
        return False
    if check_mode:
        return True
    try:
        filesystem.grow_online(device, fs, path)
    except Precondition as refused:
        log.warning("%s", refused)
        return False
    return True


def grow_mark_under(state_dir: str, device: str) -> str:
    """The ``mount`` module's ``ext4_grow`` mark for the filesystem on *device*: named by the filesystem's UUID,
    which a renumbered device keeps, so the re-run after a kill finds it."""
    uuid = probe(device).uuid
    name = f"grow-{uuid}" if uuid else f"grow-{os.path.basename(os.path.realpath(device))}"
    return os.path.join(state_dir, "mount", name)


def _renew_copied_identity(device: str, path: str) -> None:
    """A copy of an xfs volume (clone, restore) carries its origin's UUID, which the kernel refuses to mount
    twice: replay its log under ``nouuid``, then give it its own.  A crash between the steps is converged by
    the retry (mounted: staged as it is; unmounted: the steps again)."""
    uuid = probe(device).uuid
    number = device_number(device)
    if not uuid or not any(e.fs_type == "xfs" and e.major_minor != number and e.source.startswith("/dev/")
                           and probe(e.source).uuid == uuid for e in mounts.mounts()):
        return
    mounts.mount(device, path, "xfs", ["nouuid"])  # xfs_admin needs a clean log
    mounts.unmount(path)
    filesystem.renew_uuid(device, "xfs")
    log.info("gave %s, a copy of a mounted xfs filesystem (UUID %s), its own UUID", device, uuid)


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
    _check_kind(target, directory=not block)
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


def _check_kind(path: str, *, directory: bool) -> None:
    """Refuse a mount point of the wrong kind: a filesystem needs a directory, a device node a file."""
    if not os.path.lexists(path):
        return
    mode = os.lstat(path).st_mode
    if directory and not stat.S_ISDIR(mode):
        raise Precondition(f"{path} exists and is not a directory: a filesystem is mounted on a directory")
    if not directory and not stat.S_ISREG(mode):
        raise Precondition(f"{path} exists and is not a regular file: a block volume is bound onto a file")


def _same_origin(current: mounts.MountEntry, source: str, block: bool) -> bool:
    if block:
        # A bound device node shows as its path inside the devtmpfs mount.
        return current.root.endswith("/" + os.path.basename(source))
    origin = mounts.find_mount(source)
    return origin is not None and (origin.major_minor, origin.root) == (current.major_minor, current.root)


def ensure_unmounted(path: str, *, remove: bool = False, check_mode: bool = False) -> bool:
    """Unmount everything stacked at *path*; with *remove*, delete the path the mount used.

    A directory that is not empty once unmounted is not removed: Precondition,
    with ``changed`` set when the unmount already happened. Check mode sees
    that only for a path with nothing mounted on it (a mount hides what lies
    beneath): it predicts the unmount and the removal.
    """
    changed = False
    while mounts.find_mount(path) is not None:
        changed = True
        if check_mode:
            return True
        mounts.unmount(path)
    if remove and os.path.lexists(path):
        if not (os.path.isdir(path) and not os.path.islink(path)):
            if not check_mode:
                os.unlink(path)
        elif check_mode:
            if os.listdir(path):
                raise _not_empty(path, changed)
        else:
            try:
                os.rmdir(path)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise _not_empty(path, changed) from error
        changed = True
    return changed


def _not_empty(path: str, unmounted: bool) -> Precondition:
    done = f"unmounted {path}, but did not remove it" if unmounted else f"did not remove {path}"
    refused = Precondition(f"{done}: the directory is not empty")
    refused.changed = unmounted
    return refused


@dataclass(frozen=True)
class Owner:
    """What marks one volume's mounts: its device's numbers (now, or as recorded at stage) and device nodes."""

    numbers: FrozenSet[str]  # "major:minor" as /proc/self/mountinfo shows them
    nodes: Tuple[str, ...] = ()  # device nodes (the volume's, its read-only views), for raw block binds

    def owns(self, entry: mounts.MountEntry) -> bool:
        return entry.major_minor in self.numbers or any(_shows_node(entry, node) for node in self.nodes)


def _shows_node(entry: mounts.MountEntry, node: str) -> bool:
    # A bound device node shows as the devtmpfs mount's number and the node's path inside it.
    holder = os.stat(node).st_dev
    return (entry.major_minor == f"{os.major(holder)}:{os.minor(holder)}"
            and entry.root.endswith("/" + os.path.basename(os.path.realpath(node))))


def owner_of(device: Optional[str], recorded: Iterable[str] = ()) -> Owner:
    numbers = {n for n in recorded if n}
    if device is None:
        return Owner(frozenset(numbers))
    numbers.add(device_number(device))
    return Owner(frozenset(numbers), (device, *read_only_views(device)))


def read_only_views(device: str) -> List[str]:
    """The read-only loop devices over *device* that read-only raw block publishes bind."""
    backing = os.path.realpath(device)
    return [loop.device for loop in losetup.list_devices()
            if loop.backing_file == backing and loop.offset == 0 and loop.read_only]


def read_only_view(device: str) -> str:
    """A read-only loop device over *device*, made once and shared by its read-only publishes.

    A device node bound on a read-only mount stays writable (the kernel checks
    read-only mounts for files and directories only); a read-only loop device
    refuses every write.
    """
    views = read_only_views(device)
    if views:
        return views[0]
    view, _changed = losetup.ensure_attached(device, read_only=True)
    if not view.read_only:
        raise Conflict(f"{view.device} over {device} is writable; cannot use it as a read-only view")
    return view.device


def drop_unused_views(device: str) -> None:
    """Detach the read-only views of *device* that no mount binds any more."""
    table = mounts.mounts()
    for view in read_only_views(device):
        if not any(_shows_node(entry, view) for entry in table):
            losetup.detach(view)


def release(path: str, owner: Owner, *, strict: bool = True) -> bool:
    """Unmount *owner*'s mounts stacked at *path*; return whether there were any.

    A mount of anything else on top is never touched: with *strict* that is
    an error, otherwise *path* is left as it is.
    """
    changed = False
    current = mounts.find_mount(path)
    while current is not None:
        if not owner.owns(current):
            if strict:
                raise Precondition(f"{path} has {current.source} mounted, which is not this volume's; "
                                   "it was left in place")
            return changed
        mounts.unmount(path)
        changed = True
        current = mounts.find_mount(path)
    return changed


def remove_mount_point(path: str) -> bool:
    """Delete the empty directory or empty file a publish made at *path*; anything else stays."""
    try:
        mode = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode.st_mode) and not os.listdir(path):
        os.rmdir(path)
        return True
    if stat.S_ISREG(mode.st_mode) and mode.st_size == 0:
        os.unlink(path)
        return True
    log.warning("left %s in place: it is not an empty directory or file", path)
    return False


def device_mount_points(device: str) -> List[str]:
    """Where *device* is mounted (including bind mounts of it), for stats and checks."""
    number = device_number(device)
    return [e.mount_point for e in mounts.mounts() if e.major_minor == number]


def check_absolute(path: str, what: str) -> str:
    if not path or not os.path.isabs(path) or "\0" in path:
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    normal = os.path.normpath(path)
    if normal != path.rstrip("/") and normal != path:
        raise InvalidRequest(f"{what} {path!r} must be normalised (no '.', '..' or '//')")
    return normal
