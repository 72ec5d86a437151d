"""The never-reformat rule on real images: blank only when blkid finds nothing AND both ends read as zeros."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from basalt_core import blkid, staging
from basalt_core.errors import Precondition
from basalt_core.sizes import MiB

SIZE = 8 * MiB


def image(tmp_path: Path, size: int = SIZE, at: Optional[int] = None, data: bytes = b"") -> str:
    """A sparse image of *size* bytes (zeros) with *data* written at *at*."""
    path = tmp_path / "dev.img"
    with open(path, "wb") as handle:
        handle.truncate(size)
        if at is not None:
            handle.seek(at)
            handle.write(data)
    return str(path)


NOISE = os.urandom(4096)


@pytest.mark.parametrize(
    ("size", "at", "data", "blank", "described"),
    [
        (SIZE, None, b"", True, "nothing"),
        (SIZE, 0, NOISE, False, "data no signature explains (non-zero bytes in its first MiB)"),
        (SIZE, MiB - 1, b"\x01", False, "data no signature explains (non-zero bytes in its first MiB)"),
        (SIZE, SIZE - MiB, b"\x01", False, "data no signature explains (non-zero bytes in its last MiB)"),
        (SIZE, SIZE - 1, b"\x80", False, "data no signature explains (non-zero bytes in its last MiB)"),
        # only the ends count: Basalt zeroes both ends of every volume it creates
        (SIZE, MiB, NOISE, True, "nothing"),
        (SIZE, SIZE - MiB - len(NOISE), NOISE, True, "nothing"),
        (64 << 10, None, b"", True, "nothing"),  # smaller than a MiB: all of it is both ends
        (64 << 10, 32 << 10, b"\x01", False, "data no signature explains (non-zero bytes in its first MiB)"),
    ],
    ids=["zeros", "random-first-mib", "last-byte-of-first-mib", "first-byte-of-last-mib", "last-byte",
         "data-in-the-middle", "data-just-before-the-last-mib", "tiny-zeros", "tiny-data"],
)
def test_examine_reads_both_ends(tmp_path: Path, size: int, at: Optional[int], data: bytes, blank: bool,
                                 described: str) -> None:
    found = blkid.examine(image(tmp_path, size, at, data))
    assert found.blank is blank
    assert found.describe() == described


def test_examine_names_a_signature_before_reading(tmp_path: Path) -> None:
    path = image(tmp_path)
    subprocess.run(["mkfs.ext4", "-q", path], check=True)
    found = blkid.examine(path)
    assert (found.blank, found.fs_type, found.describe()) == (False, "ext4", "a ext4 filesystem")


def test_random_data_is_never_formatted_unless_forced(tmp_path: Path) -> None:
    path = image(tmp_path, at=0, data=NOISE)
    with pytest.raises(Precondition, match=r"holds data no signature explains \(non-zero bytes in its first MiB\), "
                                           r"not ext4; refusing to format"):
        staging.ensure_filesystem(path, "ext4")
    with pytest.raises(Precondition, match="refusing to format"):
        staging.ensure_filesystem(path, "ext4", check_mode=True)
    with open(path, "rb") as handle:
        assert handle.read(len(NOISE)) == NOISE  # untouched
    assert staging.ensure_filesystem(path, "ext4", force=True, check_mode=True) is True
    with open(path, "rb") as handle:
        assert handle.read(len(NOISE)) == NOISE  # check mode changes nothing
    assert staging.ensure_filesystem(path, "ext4", force=True) is True
    assert blkid.examine(path).fs_type == "ext4"
    assert staging.ensure_filesystem(path, "ext4") is False  # the wanted filesystem is kept


def test_a_blank_image_is_formatted(tmp_path: Path) -> None:
    path = image(tmp_path, at=2 * MiB, data=NOISE)  # data away from the ends does not count
    assert staging.ensure_filesystem(path, "ext4", check_mode=True) is True
    assert blkid.examine(path).blank
    assert staging.ensure_filesystem(path, "ext4") is True
    assert blkid.examine(path).fs_type == "ext4"
