"""Byte sizes: parsing quantities and fitting a requested range to an allocation unit."""

from __future__ import annotations

import re
from typing import Optional

from .errors import InvalidRequest, OutOfRange

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = {
    "": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
    "ki": KiB, "mi": MiB, "gi": GiB, "ti": TiB,
}
_QUANTITY = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]i?)?[bB]?\s*$")


def parse_size(text: str) -> int:
    """Parse ``"64Mi"``, ``"1G"``, ``"1048576"`` (Kubernetes quantity style) into bytes."""
    match = _QUANTITY.match(text)
    if not match:
        raise InvalidRequest(f"size {text!r} is not a quantity such as 512Mi, 10Gi or 1073741824")
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "").lower()]


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def fit_capacity(
    required: int,
    limit: int,
    *,
    unit: int,
    default: int,
    minimum: int = 0,
) -> int:
    """Choose an allocation size for a CSI-style capacity range.

    ``required``/``limit`` of 0 mean "not set".  The result is a multiple of
    *unit*, at least *minimum* when the range allows, and never above *limit*.
    """
    if required < 0 or limit < 0:
        raise InvalidRequest("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise OutOfRange(f"required_bytes {required} exceeds limit_bytes {limit}")
    floor = max(required, minimum) if required else max(minimum, 1)
    size = round_up(floor, unit)
    if not required:
        size = max(size, round_up(default, unit))
        if limit and size > limit:
            size = max(round_up(floor, unit), limit // unit * unit)
    if limit and size > limit:
        raise OutOfRange(_out_of_range_text(required, limit, unit, minimum))
    return size


def _out_of_range_text(required: int, limit: int, unit: int, minimum: int) -> str:
    need = max(required, minimum, 1)
    return (
        f"no size in [{required}, {limit}] bytes is possible: sizes are multiples of "
        f"{unit} bytes and at least {need} bytes are needed"
    )


def describe(size: Optional[int]) -> str:
    if size is None:
        return "unknown"
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"
