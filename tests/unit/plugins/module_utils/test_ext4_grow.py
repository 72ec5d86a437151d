"""The offline ext4 grow with an undo file (ext4_grow) on real loop devices: what a retry may and may never replay.

The kills themselves are in tests/conformance/test_crash.py (a real agent killed at each step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from basalt_core import ext4_grow, filesystem, staging
from basalt_core.blkid import probe
from basalt_core.errors import Precondition
from basalt_core.sizes import MiB

SMALL, GROWN = 16 * MiB, 32 * MiB


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


class Volume:
    """An ext4 filesystem of SMALL bytes (1 KiB blocks, mke2fs's choice for small ones) on a loop device of
    GROWN bytes, holding one file."""

    def __init__(self, directory: Path, name: str) -> None:
        self.image = str(directory / f"{name}.img")
        with open(self.image, "wb") as handle:
            handle.truncate(SMALL)
        assert run("mkfs.ext4", "-q", self.image).returncode == 0
        assert run("debugfs", "-w", "-R", f"write {__file__} data", self.image).returncode == 0
        os.truncate(self.image, GROWN)
        self.device = run("losetup", "--find", "--show", self.image).stdout.strip()
        assert self.device.startswith("/dev/loop")

    def check(self) -> int:
        return run("e2fsck", "-f", "-n", self.device).returncode

    def data(self) -> str:
        return run("debugfs", "-R", "cat data", self.device).stdout

    def detach(self) -> None:
        run("losetup", "--detach", self.device)


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[list[Volume]]:
    made: list[Volume] = []
    yield made
    for volume in made:
        volume.detach()


def volume(volumes: list[Volume], tmp_path: Path, name: str = "vol") -> Volume:
    made = Volume(tmp_path, name)
    volumes.append(made)
    return made


def test_a_grow_leaves_a_clean_filesystem_and_nothing_else(volumes: list[Volume], tmp_path: Path) -> None:
    """resize2fs -z of 1 KiB-block ext4 corrupts the resize inode unless it zeroes through its cache
    (e2fsprogs 1.47.0): the grow must leave e2fsck -f -n nothing to say."""
    vol = volume(volumes, tmp_path)
    data = vol.data()
    mark = str(tmp_path / "state" / "volume")
    os.makedirs(os.path.dirname(mark))
    ext4_grow.grow(vol.device, mark)
    assert filesystem.size(vol.device, "ext4") == GROWN
    assert vol.check() == 0
    assert vol.data() == data
    assert os.listdir(os.path.dirname(mark)) == []


def test_a_finished_grow_found_marked_is_rolled_back_and_redone(volumes: list[Volume], tmp_path: Path) -> None:
    """Killed after resize2fs finished but before the mark was cleared: e2undo returns the filesystem to its
    size before the grow (cleanly), and the grow runs again."""
    vol = volume(volumes, tmp_path)
    data = vol.data()
    mark = str(tmp_path / "volume")
    uuid = probe(vol.device).uuid
    (tmp_path / "volume.grow").write_text(json.dumps({"attempt": 1, "uuid": uuid, "target_bytes": GROWN}))
    filesystem.check_before_grow(vol.device)
    assert run("env", "UNIX_IO_NOZEROOUT=1", "resize2fs", "-z", ext4_grow.undo_file(mark, 1),
               vol.device).returncode == 0
    ext4_grow.grow(vol.device, mark)
    assert filesystem.size(vol.device, "ext4") == GROWN
    assert vol.check() == 0 and vol.data() == data
    assert sorted(os.listdir(tmp_path)) == ["vol.img"]


def test_an_undo_file_of_another_filesystem_is_never_replayed(volumes: list[Volume], tmp_path: Path) -> None:
    """The mark names this filesystem, but the undo file at its name was written for another one: refused, the
    device untouched."""
    vol, other = volume(volumes, tmp_path), volume(volumes, tmp_path, "other")
    mark = str(tmp_path / "volume")
    with tempfile.TemporaryDirectory() as scratch:
        undo = os.path.join(scratch, "other.e2undo")
        assert run("env", "UNIX_IO_NOZEROOUT=1", "resize2fs", "-z", undo, other.device).returncode == 0
        shutil.copy(undo, ext4_grow.undo_file(mark, 1))
    (tmp_path / "volume.grow").write_text(json.dumps({"attempt": 1, "uuid": probe(vol.device).uuid,
                                                      "target_bytes": GROWN}))
    before = Path(vol.image).read_bytes()
    with pytest.raises(Precondition, match="refusing to replay it"):
        ext4_grow.grow(vol.device, mark)
    assert Path(vol.image).read_bytes() == before


def test_the_mark_of_a_filesystem_made_anew_is_dropped(volumes: list[Volume], tmp_path: Path) -> None:
    """A mark whose filesystem is gone (another UUID on the device now) is dropped with its undo files; the grow
    of the filesystem there runs as usual."""
    vol = volume(volumes, tmp_path)
    mark = str(tmp_path / "volume")
    (tmp_path / "volume.grow").write_text(json.dumps({"attempt": 3, "uuid": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                                                      "target_bytes": GROWN}))
    Path(ext4_grow.undo_file(mark, 3)).write_bytes(b"E2UNDO02 of another filesystem")
    ext4_grow.grow(vol.device, mark)
    assert filesystem.size(vol.device, "ext4") == GROWN and vol.check() == 0
    assert sorted(os.listdir(tmp_path)) == ["vol.img"]


def test_an_undo_file_without_a_record_means_the_device_was_not_written(
        volumes: list[Volume], tmp_path: Path) -> None:
    """Killed before resize2fs wrote its undo header (an empty file): nothing is replayed, the grow runs."""
    vol = volume(volumes, tmp_path)
    mark = str(tmp_path / "volume")
    (tmp_path / "volume.grow").write_text(json.dumps({"attempt": 1, "uuid": probe(vol.device).uuid,
                                                      "target_bytes": GROWN}))
    Path(ext4_grow.undo_file(mark, 1)).write_bytes(b"")
    ext4_grow.grow(vol.device, mark)
    assert filesystem.size(vol.device, "ext4") == GROWN and vol.check() == 0
    assert sorted(os.listdir(tmp_path)) == ["vol.img"]


def test_sweep_keeps_only_the_undo_file_a_mark_names(tmp_path: Path) -> None:
    (tmp_path / "a.grow").write_text(json.dumps({"attempt": 2, "uuid": "x", "target_bytes": 1}))
    for name in ("a.grow-1.e2undo", "a.grow-2.e2undo", "b.grow-1.e2undo", "a.json"):
        (tmp_path / name).write_bytes(b"")
    removed = ext4_grow.sweep(str(tmp_path))
    assert sorted(os.path.basename(path) for path in removed) == ["a.grow-1.e2undo", "b.grow-1.e2undo"]
    assert sorted(os.listdir(tmp_path)) == ["a.grow", "a.grow-2.e2undo", "a.json"]


def test_online_grow_allowed_says_what_the_kernel_does(volumes: list[Volume], tmp_path: Path) -> None:
    """online_grow_allowed("ext4") is True exactly where resize2fs can grow a mounted ext4 (a container without
    CAP_SYS_RESOURCE, like the development host, refuses it)."""
    vol = volume(volumes, tmp_path)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    assert run("mount", vol.device, str(mount_point)).returncode == 0
    try:
        grown = run("resize2fs", vol.device)
    finally:
        run("umount", str(mount_point))
    assert (grown.returncode == 0) == filesystem.online_grow_allowed("ext4"), grown.stderr
    assert filesystem.online_grow_allowed("xfs")


@pytest.mark.parametrize("allowed", [False, True], ids=["offline", "online-first"])
def test_ensure_mounted_grows_the_filesystem_the_device_outgrew(
        volumes: list[Volume], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        allowed: bool) -> None:
    """Offline with the undo path where the process may not grow online; online first where it may, and offline
    after all when the kernel refuses (what a user namespace without the real capability does). The capability
    is what this host's sandbox lacks: "online-first" pretends the process holds it (a patched check)."""
    vol = volume(volumes, tmp_path)
    data = vol.data()
    monkeypatch.setattr(filesystem, "online_grow_allowed", lambda fs_type: allowed or fs_type != "ext4")
    point = tmp_path / "mnt"
    mark = str(tmp_path / "state")
    caplog.set_level("INFO")
    assert staging.ensure_mounted(vol.device, str(point), "ext4", grow_mark=mark) is True
    try:
        assert filesystem.size(vol.device, "ext4") == GROWN
        assert staging.ensure_mounted(vol.device, str(point), "ext4", grow_mark=mark) is False  # nothing to grow
    finally:
        run("umount", str(point))
    kernel_refuses = "growing it offline" in caplog.text
    assert ("offline (attempt 1)" in caplog.text) == (not allowed or kernel_refuses)
    assert vol.check() == 0 and vol.data() == data
    assert sorted(os.listdir(tmp_path)) == ["mnt", "vol.img"]
