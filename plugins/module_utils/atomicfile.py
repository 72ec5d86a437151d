"""Durable small files: write to a temp file, fsync, rename, fsync the directory.

A reader sees either the old content or the new, never a torn file, whatever
the moment of a crash.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Any, Dict, List, Optional

#: What a write in progress is named (then the name of the file it replaces); a crash leaves such files behind.
TEMP_PREFIX = ".tmp-"


def fsync_path(path: str) -> None:
    """fsync a directory (to persist its entries) or a block device (to flush its dirty pages)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(directory)


def write_json(path: str, document: Dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """Return the document at *path*, or None when there is none."""
    try:
        with open(path, "rb") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: metadata is not a JSON object")
    return document


def remove_durably(path: str) -> bool:
    """Unlink *path* and persist the directory entry; False when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_path(os.path.dirname(path) or ".")
    return True


def sweep_temp_files(directory: str, of: str = "") -> List[str]:
    """Remove the temp files of writes a crash interrupted in *directory* (only those replacing the file named
    *of*, when given: the directory is shared); return their paths."""
    pattern = TEMP_PREFIX + (glob.escape(of) + "-" if of else "") + "*"
    removed = sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
    for path in removed:
        remove_durably(path)
    return removed
