"""What a block device holds, from ``blkid --probe`` (low-level, no cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from .errors import CommandFailed
from .runner import operand, run

_NOTHING_FOUND = 2


@dataclass(frozen=True)
class Signature:
    """A filesystem (``fs_type``) or another signature such as a partition table."""

    fs_type: Optional[str]
    other: Optional[str]
    uuid: Optional[str]

    @property
    def blank(self) -> bool:
        return self.fs_type is None and self.other is None

    def describe(self) -> str:
        if self.fs_type:
            return f"a {self.fs_type} filesystem"
        if self.other:
            return f"a {self.other} signature"
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
