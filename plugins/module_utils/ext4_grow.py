"""An offline ext4 grow that a kill at any moment leaves for the next call to finish.

``resize2fs`` rewrites metadata in place: killed in its write phase it leaves
a filesystem ``e2fsck -p`` refuses.  So every grow runs with an e2fsprogs undo
file (``resize2fs -z``: the old content of each block is in the undo file
before the block is overwritten), and a durable *mark* saved before resize2fs
starts names that undo file.  A later call that finds the mark rolls the
filesystem back with ``e2undo`` (a finished grow too: rolled back and redone
is the same grow) and grows again:

1. mark found: ``e2undo`` its undo file, if resize2fs wrote one (no header:
   it never wrote the device); killed here, the same replay runs again;
2. ``e2fsck -f -p`` (resize2fs needs a freshly checked filesystem);
3. save the mark naming this attempt's undo file, then remove older ones;
4. ``resize2fs -z``;
5. remove the undo file, then the mark (both durably).

The undo file must be the one this filesystem's grow wrote: its name carries
the volume's mark and the attempt, and its superblock copy must carry the
filesystem's UUID, or nothing is replayed.  Undo files protect against a
killed process, not a power loss (e2undo(8)): the device's writes are not
flushed in order either.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
import uuid as uuidlib
from typing import Any, Dict, List, Optional

from . import devices, filesystem
from .atomicfile import read_json, remove_durably, write_json
from .blkid import probe
from .errors import Precondition
from .runner import operand, run

log = logging.getLogger(__name__)

MARK_SUFFIX = ".grow"
UNDO_SUFFIX = ".e2undo"
_UNDO_MAGIC = b"E2UNDO02"
# undo_header: magic[8], num_keys, super_offset, key_offset (le64), block_size (le32), ...
_UNDO_HEADER = struct.Struct("<8sQQQI")
_SB_UUID = slice(0x68, 0x78)  # s_uuid within the superblock copy
# libext2fs' undo manager reads a block's old content into the Unix I/O cache, then zeroes the block on disk
# behind that cache (fallocate): with 1 KiB blocks resize2fs then rebuilds the resize inode from the stale copy
# ("Resize inode not valid" after a grow, e2fsprogs 1.47.0).  Zeroing through the cache avoids it.
_RESIZE_ENV = {"UNIX_IO_NOZEROOUT": "1"}


def pending(mark: str) -> bool:
    """Whether a grow under *mark* was interrupted (the next :func:`grow` rolls it back and redoes it)."""
    return os.path.exists(mark + MARK_SUFFIX)


def undo_file(mark: str, attempt: int) -> str:
    return f"{mark}{MARK_SUFFIX}-{attempt}{UNDO_SUFFIX}"


def grow(device: str, mark: str) -> None:
    """Grow the unmounted ext4 filesystem on *device* to the device's size.

    *mark* is a path prefix that is this volume's alone (the mark and undo
    files go beside it).  Calling it again after a kill at any point
    finishes the grow.
    """
    dev = operand(device, "device")
    uuid = probe(dev).uuid
    found = read_json(mark + MARK_SUFFIX)
    attempt = 1
    if found is not None and uuid and found.get("uuid") != uuid:
        # Another filesystem than the one whose grow was interrupted (the volume was made anew): its undo
        # files are of no use to this one.
        log.warning("dropped the interrupted grow of filesystem %s: %s holds %s now", found.get("uuid"), device, uuid)
        discard(mark)
        found = None
    if found is not None:
        _roll_back(dev, found, mark, uuid)
        attempt = int(found["attempt"]) + 1
    filesystem.check_before_grow(dev)
    undo = undo_file(mark, attempt)
    os.makedirs(os.path.dirname(mark), mode=0o700, exist_ok=True)
    write_json(mark + MARK_SUFFIX, {"attempt": attempt, "uuid": uuid, "target_bytes": devices.size_bytes(dev)})
    for stale in leftovers(mark, keep=undo):
        remove_durably(stale)
    remove_durably(undo)  # nothing of this attempt exists yet: anything here is not its undo file
    run(["resize2fs", "-z", undo, dev], env=_RESIZE_ENV, timeout=600, what=f"grow ext4 on {device}")
    remove_durably(undo)
    remove_durably(mark + MARK_SUFFIX)
    log.info("grew ext4 on %s offline (attempt %d)", device, attempt)


def discard(mark: str) -> List[str]:
    """Forget an interrupted grow under *mark* (its filesystem was made anew); return what was removed."""
    removed = leftovers(mark)
    if pending(mark):
        removed.append(mark + MARK_SUFFIX)
    for path in removed:
        remove_durably(path)
    return removed


def sweep(directory: str) -> List[str]:
    """Remove the undo files in *directory* that no interrupted grow's mark names (a kill between a grow's
    steps can leave one); return them.  The marks stay: the next stage of their volume needs them."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + MARK_SUFFIX + "-*" + UNDO_SUFFIX))):
        mark = path[:path.rindex(MARK_SUFFIX + "-")]
        found = read_json(mark + MARK_SUFFIX)
        if found is None or path != undo_file(mark, int(found["attempt"])):
            remove_durably(path)
            removed.append(path)
    return removed


def leftovers(mark: str, keep: str = "") -> List[str]:
    """The undo files under *mark* other than *keep*."""
    pattern = glob.escape(mark + MARK_SUFFIX) + "-*" + UNDO_SUFFIX
    return sorted(path for path in glob.glob(pattern) if path != keep)


def _roll_back(dev: str, found: Dict[str, Any], mark: str, uuid: Optional[str]) -> None:
    """Replay the interrupted attempt's undo file, when there is one and it is this filesystem's."""
    if not uuid:
        raise Precondition(f"no filesystem found on {dev}, whose grow was interrupted ({mark}{MARK_SUFFIX}); "
                           "refusing to replay its undo file")
    undo = undo_file(mark, int(found["attempt"]))
    written = _undo_file_uuid(undo)
    if written is None:
        log.info("the interrupted grow of %s never wrote the device (no undo record in %s)", dev, undo)
        return
    if written != uuid:
        raise Precondition(f"{undo} was written for the filesystem {written}, not {uuid} on {dev}; "
                           "refusing to replay it")
    # -f: the superblock copy in the file is the one resize2fs last read, which a kill can leave ahead of
    # the device's; the UUID check above is what ties the file to this filesystem.
    run(["e2undo", "-f", undo, dev], timeout=600, what=f"roll back the interrupted grow of {dev}")
    log.warning("rolled back the interrupted grow of ext4 on %s (%s)", dev, undo)


def _undo_file_uuid(path: str) -> Optional[str]:
    """The UUID of the filesystem an undo file was written for; None when it holds no undo record.

    The undo manager writes the file's header, then its superblock copy, before
    it lets the first block reach the device: a file without both means the
    device is untouched.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(_UNDO_HEADER.size)
            if len(header) < _UNDO_HEADER.size or not header.startswith(_UNDO_MAGIC):
                return None
            _magic, _keys, super_block, _key_block, block_size = _UNDO_HEADER.unpack(header)
            handle.seek(super_block * block_size)
            superblock = handle.read(1024)
    except FileNotFoundError:
        return None
    if len(superblock) < _SB_UUID.stop or not any(superblock):
        return None
    return str(uuidlib.UUID(bytes=superblock[_SB_UUID]))
