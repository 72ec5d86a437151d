"""Byte sizes: parsing quantities and fitting a requested range to an allocation unit."""

from __future__ import annotations

import re
from typing import Optional

from .errors import InvalidRequest, OutOfRange

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

# The Kubernetes quantity grammar (resource.Quantity), suffixes case-sensitive:
#   binary Ki Mi Gi Ti Pi Ei (2^10..2^60), decimal m "" k M G T P E (10^-3..10^18),
#   or a decimal exponent e/E followed by an integer (Kubernetes parses it as one).
_SUFFIXES = {
    "Ki": KiB, "Mi": MiB, "Gi": GiB, "Ti": TiB, "Pi": 1 << 50, "Ei": 1 << 60,
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # m (milli) is refused before any arithmetic
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>[KMGTPE]i|[mkMGTPE])?)"
)
_MAX_EXPONENT = 64  # beyond it no quantity is a byte count an int64 holds (and powers get costly)
MAX_BYTES = (1 << 63) - 1
_EXAMPLES = "such as 1073741824, 512Mi, 10Gi, 1.5Gi, 10G or 1e9"


def parse_size(text: str) -> int:
    """Bytes in a Kubernetes quantity, exactly as Kubernetes reads it, refusing what is no byte count.

    ========  =====================  ===================================
    text      bytes                  why
    ========  =====================  ===================================
    1048576   1048576                plain bytes
    64Mi      67108864               binary suffixes: 64 * 2^20
    10Gi      10737418240            10 * 2^30
    10G       10000000000            decimal suffixes: 10 * 10^9
    2k        2000                   (lowercase k; K is not a suffix)
    1.5Gi     1610612736             fractions that come to whole bytes
    1e9       1000000000             a decimal exponent
    10m       refused                m is milli: 0.01 bytes
    10gi      refused                suffixes are case-sensitive
    10MiB     refused                not a quantity (no B suffix)
    0.5       refused                not a whole number of bytes
    -1Gi      refused                negative
    8Ei       refused                above 2^63-1 (CSI sizes are int64)
    ========  =====================  ===================================
    """
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise InvalidRequest(f"size {text!r} is not a Kubernetes quantity {_EXAMPLES} "
                             "(suffixes are case-sensitive)")
    number, exponent, suffix = match.group("number", "exponent", "suffix")
    if suffix == "m":
        raise InvalidRequest(f"size {text!r} is in thousandths of a byte (m is milli); "
                             "for mega- or mebibytes write M (10^6) or Mi (2^20)")
    power = int(exponent[1:]) if exponent else 0
    if abs(power) > _MAX_EXPONENT:
        raise InvalidRequest(f"size {text!r} is out of range (exponent beyond ±{_MAX_EXPONENT})")
    # Imported here: fractions (and decimal, which it loads) cost a long-running agent about 0.4 MiB at rest.
    from fractions import Fraction

    value = Fraction(number) * (Fraction(10) ** power if exponent else _SUFFIXES[suffix or ""])
    if value < 0:
        raise InvalidRequest(f"size {text!r} is negative")
    if value.denominator != 1:
        raise InvalidRequest(f"size {text!r} is not a whole number of bytes ({float(value)})")
    if value > MAX_BYTES:
        raise InvalidRequest(f"size {text!r} is more than {MAX_BYTES} bytes (CSI sizes are int64)")
    return int(value)


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
