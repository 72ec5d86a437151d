"""Node steps that must tell the truth, on real mounts (tmpfs, a loop device of the test's own)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from basalt_core import mount as mounts
from basalt_core import staging
from basalt_core.errors import Conflict, Precondition

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mounts and loop devices")


@pytest.fixture
def mounted_here() -> Iterator[List[str]]:
    """Mount points the test mounts on; whatever is still mounted there is unmounted at the end."""
    points: List[str] = []
    yield points
    for point in points:
        while mounts.find_mount(point) is not None:
            subprocess.run(["umount", point], check=True)


def tmpfs(path: Path, points: List[str]) -> None:
    path.mkdir(exist_ok=True)
    points.append(str(path))
    subprocess.run(["mount", "-t", "tmpfs", "basalt-test", str(path)], check=True)


def test_absent_on_a_mount_point_not_empty_beneath_says_it_unmounted(
        tmp_path: Path, mounted_here: List[str]) -> None:
    point = tmp_path / "mnt"
    point.mkdir()
    (point / "beneath").write_text("kept")
    tmpfs(point, mounted_here)
    # Check mode cannot see beneath a mount: it predicts the unmount (a change), honestly.
    assert staging.ensure_unmounted(str(point), remove=True, check_mode=True) is True
    assert mounts.find_mount(str(point)) is not None
    with pytest.raises(Precondition, match=f"unmounted {point}, but did not remove it: the directory is not empty"
                       ) as refused:
        staging.ensure_unmounted(str(point), remove=True)
    assert refused.value.changed is True
    assert mounts.find_mount(str(point)) is None and (point / "beneath").read_text() == "kept"
    # Nothing mounted now: check mode sees the directory and predicts the same failure, no change.
    for check_mode in (True, False):
        with pytest.raises(Precondition, match=f"did not remove {point}: the directory is not empty") as again:
            staging.ensure_unmounted(str(point), remove=True, check_mode=check_mode)
        assert again.value.changed is False
    (point / "beneath").unlink()
    assert staging.ensure_unmounted(str(point), remove=True, check_mode=True) is True
    assert point.exists()
    assert staging.ensure_unmounted(str(point), remove=True) is True
    assert not point.exists()
    assert staging.ensure_unmounted(str(point), remove=True) is False


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    image = tmp_path / "dev.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def test_a_filesystem_other_than_the_one_asked_for_is_an_error_naming_both(
        tmp_path: Path, loop_device: str, mounted_here: List[str]) -> None:
    point = str(tmp_path / "mnt")
    mounted_here.append(point)
    assert staging.ensure_mounted(loop_device, point, "ext4") is True
    with pytest.raises(Conflict, match=f"{point} has {loop_device} mounted as ext4, not as the xfs asked for"):
        staging.ensure_mounted(loop_device, point, "xfs")
    with pytest.raises(Conflict, match="mounted as ext4, not as the xfs asked for"):
        staging.ensure_mounted(loop_device, point, "xfs", check_mode=True)
    assert staging.ensure_mounted(loop_device, point, "ext4") is False
