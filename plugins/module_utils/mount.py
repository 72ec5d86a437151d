"""Mounts: read ``/proc/self/mountinfo``; ``mount`` and ``umount`` with argv lists."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .errors import CommandFailed, InvalidRequest
from .runner import operand, run

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")
# Mount options travel as one -o argument; allow the characters real options use.
_OPTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_=.:/+@-]*$")
_MOUNT_FAILURE = 32  # mount(8)'s exit status when the mount system call failed


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    major_minor: str
    root: str
    mount_point: str
    options: Sequence[str]
    fs_type: str
    source: str
    super_options: Sequence[str]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> List[MountEntry]:
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _sep, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        entries.append(
            MountEntry(
                mount_id=int(fields[0]),
                major_minor=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                options=tuple(fields[5].split(",")),
                fs_type=rfields[0],
                source=_unescape(rfields[1]),
                super_options=tuple(rfields[2].split(",")) if len(rfields) > 2 else (),
            )
        )
    return entries


def mounts() -> List[MountEntry]:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())


def find_mount(path: str) -> Optional[MountEntry]:
    """The topmost mount at exactly *path*, or None."""
    wanted = os.path.realpath(path) if os.path.exists(path) else os.path.normpath(path)
    found = None
    for entry in mounts():
        if entry.mount_point == wanted:
            found = entry
    return found


def validate_options(options: Sequence[str]) -> List[str]:
    """Split comma lists and check each option; returns the flat list."""
    flat: List[str] = []
    for option in options:
        for part in option.split(","):
            part = part.strip()
            if not part:
                continue
            if not _OPTION.match(part):
                # Never echoed: mount options may carry credentials.
                raise InvalidRequest(f"mount option #{len(flat) + 1} is not allowed: options start with a "
                                     "letter, digit or '_' and hold only letters, digits and _=.:/+@- "
                                     "(its text is withheld: mount options may hold secrets)")
            flat.append(part)
    return flat


def _option_secrets(flat: Sequence[str]) -> List[str]:
    """What to redact from a failed mount's argv and stderr: the option list, each key=value, each value.

    A bare flag (``ro``, ``noatime``) holds no secret, and values shorter than
    4 characters would mangle the tool's message more than they could hide.
    Longest first, so that a whole option is hidden before any part of it.
    """
    pairs = [option for option in flat if "=" in option]
    values = [option.partition("=")[2] for option in pairs]
    hidden = {",".join(flat), *pairs, *(v for v in values if len(v) >= 4)} - {""}
    return sorted(hidden, key=len, reverse=True)


def mount(source: str, target: str, fs_type: str, options: Sequence[str] = ()) -> None:
    argv = ["mount", "-t", operand(fs_type, "filesystem type")]
    flat = validate_options(options)
    if flat:
        argv += ["-o", ",".join(flat)]
    argv += [operand(source, "mount source"), operand(target, "mount target")]
    # Mount options may carry credentials: keep them out of logs and errors.
    try:
        run(argv, what=f"mount {source} on {target}", secrets=_option_secrets(flat))
    except CommandFailed as error:
        # mount(8) exits 32 with the kernel's EINVAL ("bad option") for an option the filesystem does
        # not take: the caller's options are at fault, not the host.
        if flat and error.rc == _MOUNT_FAILURE and "bad option" in error.stderr:
            raise InvalidRequest(f"the filesystem refused the mount options (withheld: they may hold secrets): "
                                 f"{error}") from None
        raise


def bind_mount(source: str, target: str, read_only: bool = False, options: Sequence[str] = ()) -> None:
    """Bind *source* onto *target*; a read-only bind needs a second remount step."""
    run(
        ["mount", "--bind", operand(source, "bind source"), operand(target, "bind target")],
        what=f"bind {source} on {target}",
    )
    flat = validate_options(options)
    if read_only or flat:
        extra = (["ro"] if read_only else []) + flat
        try:
            run(
                ["mount", "-o", ",".join(["remount", "bind", *extra]), operand(target, "bind target")],
                what=f"remount {target} with its options",
                secrets=_option_secrets(flat),
            )
        except Exception:
            # Never leave a writable bind behind a failed read-only request.
            unmount(target)
            raise


def unmount(target: str) -> None:
    run(["umount", operand(target, "mount target")], what=f"unmount {target}")


def is_mounted(path: str) -> bool:
    return find_mount(path) is not None
