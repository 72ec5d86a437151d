"""The one name rule (model.check_name) the agent and every module apply to volume and snapshot names."""

from __future__ import annotations

import pytest

from basalt_core.errors import InvalidRequest
from basalt_core.model import MAX_NAME_BYTES, check_name

ACCEPTED = ["a", "pvc-3f0e4b1c", "pvc-ünï✓ 名前", " leading and trailing blanks ", "x" * MAX_NAME_BYTES,
            "é" * (MAX_NAME_BYTES // 2), "tab\u00a0nbsp", "emoji-🙂"]
REFUSED = [
    ("", "name is required"),
    ("x" * (MAX_NAME_BYTES + 1), "name is longer than 128 bytes in UTF-8"),
    ("é" * (MAX_NAME_BYTES // 2) + "x", "name is longer than 128 bytes in UTF-8"),  # 129 bytes, 65 characters
    ("nul\0", "name contains control character(s) '\\x00'"),
    ("line\nbreak", "name contains control character(s) '\\n'"),
    ("tab\there", "name contains control character(s) '\\t'"),
    ("del\x7f", "name contains control character(s) '\\x7f'"),
    ("c1\x85", "name contains control character(s) '\\x85'"),
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(("name", "why"), REFUSED, ids=[repr(n[:12]) for n, _why in REFUSED])
def test_refused(name: str, why: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_name(name)
    assert str(refused.value) == why


def test_the_field_is_named() -> None:
    with pytest.raises(InvalidRequest, match=r"^snapshot name contains"):
        check_name("a\nb", "snapshot name")
