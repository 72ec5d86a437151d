"""What a block device holds: ``blkid --probe`` (low-level, no cache), and the never-reformat test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from . import devices
from .errors import CommandFailed
from .runner import operand, run

_NOTHING_FOUND = 2


@dataclass(frozen=True)
class Signature:
    """A filesystem (``fs_type``), another signature such as a partition table, or unrecognised ``data``."""

    fs_type: Optional[str]
    other: Optional[str]
    uuid: Optional[str]
    #: where non-zero bytes no signature explains were found (set by examine only)
    data: Optional[str] = None

    @property
    def blank(self) -> bool:
        return self.fs_type is None and self.other is None and self.data is None

    def describe(self) -> str:
        if self.fs_type:
            return f"a {self.fs_type} filesystem"
        if self.other:
            return f"a {self.other} signature"
        if self.data:
            return f"data no signature explains ({self.data})"
        return "nothing"


def probe(device: str) -> Signature:
    """Probe *device* directly, bypassing blkid's cache, so fresh data counts."""
    argv = ["blkid", "--probe", "--output", "export", operand(device, "device")]
    result = run(argv, check=False, what=f"probe {device}")
    if result.rc == _NOTHING_FOUND:
        return Signature(None, None, None)
    if result.rc != 0:
        raise CommandFailed(argv, result.rc, result.stderr, f"probe {device}")
    fields: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _sep, value = line.partition("=")
        fields[key] = value
    usage = fields.get("USAGE", "")
    if usage == "filesystem" and fields.get("TYPE"):
        return Signature(fields["TYPE"], None, fields.get("UUID"))
    other = fields.get("PTTYPE") or fields.get("TYPE") or usage or "unknown"
    return Signature(None, other, fields.get("UUID"))


def examine(device: str) -> Signature:
    """What *device* holds, by the never-reformat rule: blank only when nothing else is.

    A device is blank only if ``blkid`` finds no signature on it AND its first
    and last MiB read as zeros: random data, an encrypted device without a
    header, or a filesystem ``blkid`` does not know are not blank. (Basalt's
    pools zero both ends of every new volume, so their new volumes are blank.)
    Whoever formats, partitions or claims a device as a PV asks this first.
    """
    found = probe(device)
    if not found.blank:
        return found
    where = devices.nonzero_end(device)
    if where is not None:
        return Signature(None, None, None, data=f"non-zero bytes in its {where} MiB")
    return found
