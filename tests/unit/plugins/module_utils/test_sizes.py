"""Capacity ranges fitted to an allocation unit, as CSI CreateVolume needs."""

from __future__ import annotations

import re

import pytest

from basalt_core.errors import InvalidRequest, OutOfRange
from basalt_core.sizes import GiB, MiB, fit_capacity, parse_size

CASES = [
    # required, limit, minimum, expected
    (0, 0, 0, GiB),  # nothing asked: the default
    (1, 0, 0, MiB),  # round up to the unit
    (5 * MiB, 5 * MiB, 0, 5 * MiB),  # exact and aligned
    (5 * MiB + 1, 0, 0, 6 * MiB),
    (0, 10 * MiB, 0, 10 * MiB),  # default above the limit: the largest that fits
    (0, 10 * MiB + 5, 0, 10 * MiB),
    (10 * MiB, 400 * MiB, 300 * MiB, 300 * MiB),  # filesystem minimum inside the range
    (0, 0, 300 * MiB, GiB),
    (2 * GiB, 0, 300 * MiB, 2 * GiB),
]


@pytest.mark.parametrize(("required", "limit", "minimum", "expected"), CASES)
def test_fit(required: int, limit: int, minimum: int, expected: int) -> None:
    assert fit_capacity(required, limit, unit=MiB, default=GiB, minimum=minimum) == expected


@pytest.mark.parametrize(
    ("required", "limit", "minimum"),
    [
        (5 * MiB + 1, 5 * MiB + 1, 0),  # equal but unaligned
        (0, 1000, 0),  # limit below one unit
        (10 * MiB, 20 * MiB, 300 * MiB),  # filesystem minimum above the limit
        (20 * MiB, 10 * MiB, 0),  # required above limit
    ],
)
def test_out_of_range(required: int, limit: int, minimum: int) -> None:
    with pytest.raises(OutOfRange):
        fit_capacity(required, limit, unit=MiB, default=GiB, minimum=minimum)


def test_negative_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        fit_capacity(-1, 0, unit=MiB, default=GiB)


# The Kubernetes quantity grammar, exactly: (text, bytes).
QUANTITIES = [
    ("0", 0),
    ("1048576", MiB),
    ("+5", 5),
    ("64Mi", 64 * MiB),
    ("1Gi", GiB),
    ("10Gi", 10 * GiB),
    ("1Ki", 1024),
    ("1Ti", 1 << 40),
    ("1Pi", 1 << 50),
    ("1Ei", 1 << 60),
    ("2k", 2000),
    ("1M", 10**6),
    ("1G", 10**9),
    ("10G", 10**10),
    ("1T", 10**12),
    ("1P", 10**15),
    ("1E", 10**18),  # E alone is exa
    ("1e9", 10**9),  # e or E followed by a number is an exponent
    ("1E3", 1000),
    ("1e+3", 1000),
    ("20e-1", 2),
    ("1.5Gi", 3 * GiB // 2),
    (".5Ki", 512),
    ("5.", 5),
    ("0.5k", 500),
    ("1.e3", 1000),
]
# (text, what the refusal says)
REFUSED = [
    ("", "not a Kubernetes quantity"),
    ("ten", "not a Kubernetes quantity"),
    ("10m", "m is milli"),
    ("1500m", "m is milli"),  # 1.5 bytes, and m is never a size
    ("10g", "case-sensitive"),
    ("10gi", "case-sensitive"),
    ("10K", "case-sensitive"),
    ("10mi", "case-sensitive"),
    ("10MiB", "not a Kubernetes quantity"),
    ("10GB", "not a Kubernetes quantity"),
    ("1 Gi", "not a Kubernetes quantity"),
    (" 1Gi", "not a Kubernetes quantity"),
    ("1Gi ", "not a Kubernetes quantity"),
    ("1e", "not a Kubernetes quantity"),
    ("1e1.5", "not a Kubernetes quantity"),  # Kubernetes reads exponents as integers
    ("0x10", "not a Kubernetes quantity"),
    ("1_000", "not a Kubernetes quantity"),
    ("-1", "negative"),
    ("-1Gi", "negative"),
    ("0.5", "not a whole number of bytes"),
    ("1e-3", "not a whole number of bytes"),
    ("0.1Ki", "not a whole number of bytes"),
    ("8Ei", "int64"),
    ("1e99999999", "out of range"),
]


@pytest.mark.parametrize(("text", "expected"), QUANTITIES, ids=[t for t, _size in QUANTITIES])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "why"), REFUSED, ids=[repr(t) for t, _why in REFUSED])
def test_parse_size_refuses(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(why)) as refused:
        parse_size(text)
    assert repr(text) in str(refused.value)


def test_the_documented_examples_are_the_tested_ones() -> None:
    """The docstring's table is what the parser does (the module and README point at it)."""
    for line in (parse_size.__doc__ or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            assert parse_size(fields[0]) == int(fields[1]), line
        elif len(fields) >= 2 and fields[1] == "refused":
            with pytest.raises(InvalidRequest):
                parse_size(fields[0])
