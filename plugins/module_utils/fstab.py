"""Persistent mounts: one ``/etc/fstab`` line per mount point, written atomically.

The line for a mount point is found by its second field (the mount point), so
re-running with the same settings changes nothing and a changed setting
replaces the line in place. Comments, blank lines and every other entry are
kept byte for byte. Fields are escaped as fstab(5) wants (``\\040`` for space).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .atomicfile import write_atomic
from .errors import InvalidRequest

DEFAULT_FSTAB = "/etc/fstab"
_ESCAPES = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}
_OCTAL = re.compile(r"\\([0-7]{3})")


def escape(field: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in field)


def unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Entry:
    """One fstab line: what (``UUID=...``, a device or a bind source), where, type, options."""

    spec: str
    mount_point: str
    fs_type: str
    options: Sequence[str] = ("defaults",)
    dump: int = 0
    passno: int = 0

    def line(self) -> str:
        options = ",".join(self.options) or "defaults"
        fields = [escape(self.spec), escape(self.mount_point), escape(self.fs_type), escape(options)]
        if not all(fields):
            raise InvalidRequest(f"fstab entry for {self.mount_point!r} has an empty field")
        return " ".join([*fields, str(self.dump), str(self.passno)])


def _mount_point_of(line: str) -> Optional[str]:
    fields = line.split()
    if len(fields) < 2 or fields[0].startswith("#"):
        return None
    return os.path.normpath(unescape(fields[1]))


def read_lines(fstab_file: str = DEFAULT_FSTAB) -> List[str]:
    try:
        with open(fstab_file, encoding="utf-8", errors="surrogateescape") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def find_line(mount_point: str, fstab_file: str = DEFAULT_FSTAB) -> Optional[str]:
    """The last line that mounts something at *mount_point* (the one mount(8) would use), or None."""
    wanted = os.path.normpath(mount_point)
    found = None
    for line in read_lines(fstab_file):
        if _mount_point_of(line) == wanted:
            found = line
    return found


def _write(fstab_file: str, lines: List[str]) -> None:
    try:
        mode = os.stat(fstab_file).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    text = "\n".join(lines) + "\n" if lines else ""
    write_atomic(fstab_file, text.encode("utf-8", "surrogateescape"), mode)


def ensure_entry(entry: Entry, fstab_file: str = DEFAULT_FSTAB, *,
                 check_mode: bool = False) -> Tuple[bool, Optional[str], str]:
    """Make *entry* the one line for its mount point; return (changed, old line, new line)."""
    wanted = os.path.normpath(entry.mount_point)
    new = entry.line()
    lines = read_lines(fstab_file)
    matches = [i for i, line in enumerate(lines) if _mount_point_of(line) == wanted]
    old = lines[matches[-1]] if matches else None
    if len(matches) == 1 and old == new:
        return False, old, new
    if not check_mode:
        if matches:
            lines[matches[0]] = new
            for index in reversed(matches[1:]):
                del lines[index]
        else:
            lines.append(new)
        _write(fstab_file, lines)
    return True, old, new


def remove_entry(mount_point: str, fstab_file: str = DEFAULT_FSTAB, *,
                 check_mode: bool = False) -> Tuple[bool, Optional[str]]:
    """Remove every line for *mount_point*; return (changed, the line that was in force)."""
    wanted = os.path.normpath(mount_point)
    lines = read_lines(fstab_file)
    kept = [line for line in lines if _mount_point_of(line) != wanted]
    if len(kept) == len(lines):
        return False, None
    old = [line for line in lines if _mount_point_of(line) == wanted][-1]
    if not check_mode:
        _write(fstab_file, kept)
    return True, old
