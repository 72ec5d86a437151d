"""Capacity ranges fitted to an allocation unit, as CSI CreateVolume needs."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64Mi", 64 * MiB), ("1Gi", GiB), ("1G", 10**9), ("1048576", MiB), ("10MiB", 10 * MiB), ("2k", 2000)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5Gi", "ten", "1Pi"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_size(text)
