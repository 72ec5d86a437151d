"""The core's tool wrappers: exact argv in, recorded real output parsed out."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
from typing import Any, List, Tuple

import pytest

from basalt_core import blkid, devices, filesystem, losetup
from basalt_core import mount as mounts
from basalt_core.errors import CommandFailed, InvalidRequest, Precondition


def show_two(loop_devices: Any) -> None:
    loop_devices.add(0, "/pool/volumes/vol-1.img")
    loop_devices.add(1, "/dev/vdb", offset=1048576, size_limit=8388608, read_only=True)


def test_list_loop_devices_reads_the_kernels_attributes(script: Any, loop_devices: Any) -> None:
    """No command: what ``losetup --list`` shows, read from sysfs, by device number (10 after 2)."""
    show_two(loop_devices)
    loop_devices.add(10, "/pool/volumes/vol 2.img (deleted)")
    loop_devices.add(2, "/pool/with\nnewline.img")  # the kernel ends the attribute with one more
    runner = script([])
    assert losetup.list_devices() == [
        losetup.LoopDevice("/dev/loop0", "/pool/volumes/vol-1.img", 0, 0, False),
        losetup.LoopDevice("/dev/loop1", "/dev/vdb", 1048576, 8388608, True),
        losetup.LoopDevice("/dev/loop2", "/pool/with\nnewline.img", 0, 0, False),
        losetup.LoopDevice("/dev/loop10", "/pool/volumes/vol 2.img (deleted)", 0, 0, False),
    ]
    assert losetup.list_devices()[3].backing_path == "/pool/volumes/vol 2.img"
    assert runner.ran == []


def test_a_device_detached_while_listed_is_not_listed(script: Any, loop_devices: Any) -> None:
    show_two(loop_devices)
    os.unlink(os.path.join(loop_devices.sys_block, "loop1", "loop", "sizelimit"))  # gone midway
    script([])
    assert [d.device for d in losetup.list_devices()] == ["/dev/loop0"]


def test_an_unreadable_device_is_an_error_not_a_missing_device(script: Any, loop_devices: Any) -> None:
    show_two(loop_devices)
    os.unlink(os.path.join(loop_devices.sys_block, "loop1", "ro"))
    os.mkdir(os.path.join(loop_devices.sys_block, "loop1", "ro"))  # EISDIR stands for EIO, EACCES
    script([])
    with pytest.raises(Precondition, match="/dev/loop1"):
        losetup.list_devices()


def test_list_loop_devices_on_this_host_agrees_with_losetup() -> None:
    """The real sysfs against the real ``losetup --list`` (whatever devices this host has now: a device
    attached or detached by another test in between makes the two differ, so a mismatch is re-read)."""
    if not os.path.isdir(losetup.SYS_BLOCK):
        pytest.skip(f"no {losetup.SYS_BLOCK} here")
    for _attempt in range(5):
        # as sets: losetup lists in its own order, not by name
        before = set(losetup.list_devices())
        out = subprocess.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT,RO"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        listed = {losetup.LoopDevice(e["name"], e["back-file"], int(e["offset"]), int(e["sizelimit"]), bool(e["ro"]))
                  for e in (json.loads(out)["loopdevices"] if out.strip() else [])}
        if before == listed == set(losetup.list_devices()):
            return
    assert before == listed


def test_attach_is_idempotent(script: Any, loop_devices: Any) -> None:
    show_two(loop_devices)
    runner = script([])
    device, changed = losetup.ensure_attached("/pool/volumes/vol-1.img")
    assert (device.device, changed) == ("/dev/loop0", False)
    assert runner.ran == []


def test_detach_only_what_is_attached(script: Any, loop_devices: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lookup on the fake sysfs; the detach itself (an ioctl on /dev) recorded instead: test_losetup_ioctl.py
    detaches real devices."""
    show_two(loop_devices)
    script([])
    detached: List[str] = []
    monkeypatch.setattr(losetup, "detach", detached.append)
    assert losetup.ensure_detached("/pool/volumes/vol-1.img") is True
    assert detached == ["/dev/loop0"]
    loop_devices.remove(0)
    assert losetup.ensure_detached("/pool/volumes/vol-1.img") is False
    assert detached == ["/dev/loop0"]


@pytest.mark.parametrize(
    ("rc", "stdout", "expected"),
    [
        (2, "", blkid.Signature(None, None, None)),
        (0, "DEVNAME=/dev/loop0\nUUID=38f8aff1\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n",
         blkid.Signature("ext4", None, "38f8aff1")),
        (0, "DEVNAME=/dev/loop0\nPTUUID=5d3c\nPTTYPE=gpt\n", blkid.Signature(None, "gpt", None)),
        (0, "DEVNAME=/dev/loop0\nUUID=Zx1\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n",
         blkid.Signature(None, "LVM2_member", "Zx1")),
    ],
    ids=["blank", "ext4", "partition-table", "lvm-pv"],
)
def test_probe_reads_signatures(script: Any, rc: int, stdout: str, expected: blkid.Signature) -> None:
    script([(["blkid", "--probe", "--output", "export", "/dev/loop0"], rc, stdout, "")])
    assert blkid.probe("/dev/loop0") == expected
    assert expected.blank is (rc == 2)


def test_probe_error_carries_rc_and_stderr(script: Any) -> None:
    script([(["blkid", "--probe", "--output", "export", "/dev/loop9"], 4, "",
             "blkid: error: /dev/loop9: No such file or directory")])
    with pytest.raises(CommandFailed) as caught:
        blkid.probe("/dev/loop9")
    assert caught.value.rc == 4 and "No such file" in caught.value.stderr
    assert "probe /dev/loop9" in str(caught.value)


@pytest.mark.parametrize(
    ("fs_type", "argv"),
    [
        ("", ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", "/dev/loop0"]),
        ("ext4", ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", "/dev/loop0"]),
        ("xfs", ["mkfs.xfs", "-q", "/dev/loop0"]),
    ],
)
def test_mkfs_argv(script: Any, fs_type: str, argv: list) -> None:
    script([(argv, 0, "", "")])
    filesystem.make("/dev/loop0", fs_type)


def test_unsupported_filesystem_is_refused_before_running_anything(script: Any) -> None:
    script([])
    with pytest.raises(InvalidRequest, match="btrfs"):
        filesystem.make("/dev/loop0", "btrfs")


DUMPE2FS = "dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   <none>\nBlock count:              20480\n" \
           "Reserved block count:     1024\nBlock size:               1024\n"
XFS_GROWFS_N = (
    "meta-data=/dev/loop0             isize=512    agcount=4, agsize=19200 blks\n"
    "data     =                       bsize=4096   blocks=76800, imaxpct=25\n"
    "log      =internal log           bsize=4096   blocks=16384, version=2\n"
)


def test_filesystem_sizes(script: Any) -> None:
    script([
        (["dumpe2fs", "-h", "/dev/loop0"], 0, DUMPE2FS, ""),
        (["xfs_growfs", "-n", "/mnt/x"], 0, XFS_GROWFS_N, ""),
    ])
    assert filesystem.size("/dev/loop0", "ext4") == 20480 * 1024
    assert filesystem.size("/dev/loop0", "xfs", "/mnt/x") == 76800 * 4096


def test_offline_grow_checks_first(script: Any) -> None:
    script([
        (["e2fsck", "-f", "-p", "/dev/loop0"], 0, "", ""),
        (["resize2fs", "/dev/loop0"], 0, "", ""),
    ])
    filesystem.grow_offline("/dev/loop0", "ext4")


def test_offline_grow_stops_on_fsck_errors(script: Any) -> None:
    script([(["e2fsck", "-f", "-p", "/dev/loop0"], 4, "UNEXPECTED INCONSISTENCY", "")])
    with pytest.raises(CommandFailed, match="rc=4"):
        filesystem.grow_offline("/dev/loop0", "ext4")


def test_online_ext4_grow_refused_by_kernel_is_a_precondition(script: Any) -> None:
    script([(["resize2fs", "/dev/loop0"], 1, "",
             "resize2fs 1.47.0 (5-Feb-2023)\nresize2fs: Permission denied to resize filesystem")])
    with pytest.raises(Precondition, match="unstage and stage"):
        filesystem.grow_online("/dev/loop0", "ext4", "/mnt/x")


def test_mount_argv_and_option_checks(script: Any) -> None:
    script([
        (["mount", "-t", "ext4", "-o", "noatime,discard", "/dev/loop0", "/stage"], 0, "", ""),
        (["mount", "--bind", "/stage", "/target"], 0, "", ""),
        (["mount", "-o", "remount,bind,ro", "/target"], 0, "", ""),
    ])
    mounts.mount("/dev/loop0", "/stage", "ext4", ["noatime", "discard"])
    mounts.bind_mount("/stage", "/target", read_only=True)


@pytest.mark.parametrize("bad", ["-oremount", "a b", "x,-y", "rw;reboot"])
def test_bad_mount_options_never_reach_the_command_line(script: Any, bad: str) -> None:
    script([])
    with pytest.raises(InvalidRequest):
        mounts.mount("/dev/loop0", "/stage", "ext4", [bad])


def test_failed_read_only_remount_undoes_the_bind(script: Any) -> None:
    script([
        (["mount", "--bind", "/stage", "/target"], 0, "", ""),
        (["mount", "-o", "remount,bind,ro", "/target"], 32, "", "mount: /target: permission denied."),
        (["umount", "/target"], 0, "", ""),
    ])
    with pytest.raises(CommandFailed):
        mounts.bind_mount("/stage", "/target", read_only=True)


MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "400 22 7:0 / /var/lib/kubelet/staging\\040dir rw,relatime shared:200 - ext4 /dev/loop0 rw\n"
    "401 22 7:0 / /pods/a/volumes/x ro,relatime shared:200 - ext4 /dev/loop0 rw\n"
    "402 22 0:5 /loop0 /pods/b/dev ro,nosuid - devtmpfs udev rw,size=4096k\n"
)


def test_mountinfo_parsing() -> None:
    entries = mounts.parse_mountinfo(MOUNTINFO)
    assert [e.mount_point for e in entries] == [
        "/", "/var/lib/kubelet/staging dir", "/pods/a/volumes/x", "/pods/b/dev"]
    staging, published, device_bind = entries[1:]
    assert (staging.major_minor, staging.source, staging.fs_type, staging.read_only) == ("7:0", "/dev/loop0", "ext4",
                                                                                         False)
    assert published.read_only and published.major_minor == staging.major_minor
    assert device_bind.root == "/loop0" and device_bind.fs_type == "devtmpfs"


def test_loop_size_limit_can_grow_while_attached(tmp_path: Any) -> None:
    """Real loop device: the range of a backing file grows in place (what loop activation of an LV needs)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    image = tmp_path / "pv.img"
    image.write_bytes(b"")
    os.truncate(image, 64 << 20)
    device = losetup.ensure_attached(str(image), offset=1 << 20, size_limit=8 << 20)[0]
    try:
        assert devices.size_bytes(device.device) == 8 << 20
        losetup.set_size_limit(device.device, 16 << 20)
        assert devices.size_bytes(device.device) == 16 << 20
        assert losetup.find(str(image), 1 << 20) == losetup.LoopDevice(device.device, str(image), 1 << 20, 16 << 20,
                                                                       False)
    finally:
        losetup.detach(device.device)


def test_attach_answers_the_device_attached_exactly_so(tmp_path: Any) -> None:
    """Real loop devices: ``attach`` (as ``losetup --nooverlap``) reuses the device over the whole file, refuses an
    overlapping range and never reuses a device over an unlinked file at the same path."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    image = tmp_path / "vol.img"
    image.write_bytes(b"")
    os.truncate(image, 8 << 20)
    made = [losetup.attach(str(image)).device]
    try:
        assert losetup.attach(str(image)).device == made[0]
        assert losetup.ensure_attached(str(image)) == (losetup.LoopDevice(made[0], str(image), 0, 0, False), False)
        with pytest.raises(CommandFailed):
            made.append(losetup.attach(str(image), offset=1 << 20).device)
        image.unlink()
        image.write_bytes(b"")
        os.truncate(image, 8 << 20)
        made.append(losetup.attach(str(image)).device)
        assert made[-1] != made[0]
    finally:
        for device in made:
            losetup.detach(device)


def test_find_reads_the_likely_device_first(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real loop device: the device a caller attached before is read alone while it still matches; a
    device that does not match (or none) falls back to reading every attached one."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    image, other = tmp_path / "vol.img", tmp_path / "other.img"
    for path in (image, other):
        path.write_bytes(b"")
        os.truncate(path, 8 << 20)
    device, elsewhere = losetup.attach(str(image)).device, losetup.attach(str(other)).device
    try:
        scans: List[int] = []
        real_scan = losetup._backed_by

        def counted(path: str) -> List[losetup.LoopDevice]:
            scans.append(1)
            return real_scan(path)
        monkeypatch.setattr(losetup, "_backed_by", counted)
        assert losetup.find(str(image), likely=device) == losetup.LoopDevice(device, str(image), 0, 0, False)
        assert scans == []
        for wrong in (elsewhere, "/dev/loop999999", "/dev/sda"):
            assert losetup.find(str(image), likely=wrong) == losetup.LoopDevice(device, str(image), 0, 0, False)
        assert len(scans) == 3
        assert losetup.ensure_detached(str(image), likely=device) and losetup.find(str(image)) is None
    finally:
        for attached in (device, elsewhere):
            with contextlib.suppress(CommandFailed):
                losetup.detach(attached)


def attached_and_held(tmp_path: Any) -> Tuple[Any, str, int]:
    """A real 8 MiB image, its loop device, and a descriptor holding that device open."""
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices")
    image = tmp_path / "vol.img"
    image.write_bytes(b"")
    os.truncate(image, 8 << 20)
    device = losetup.attach(str(image)).device
    return image, device, os.open(device, os.O_RDONLY)


def test_a_device_being_detached_is_claimed_back_not_handed_out(tmp_path: Any) -> None:
    """Real loop device: a detach while something holds the device only sets autoclear; the kernel unbinds
    it at that holder's last close. ``ensure_attached`` must not hand it out as it is (its new user, a
    LUN or a mount, would find it unbound a moment later): the device it gives stays bound after the
    old holder closes."""
    image, device, holder = attached_and_held(tmp_path)
    try:
        losetup.detach(device)
        found = losetup.find(str(image))
        assert found is not None and found.detaching
        given, changed = losetup.ensure_attached(str(image))
        assert changed
    finally:
        os.close(holder)
    try:
        again = losetup.find(str(image))
        assert again is not None and again.device == given.device and not again.detaching
    finally:
        losetup.ensure_detached(str(image))
    assert losetup.find(str(image)) is None


def test_find_reports_a_device_being_detached(script: Any, loop_devices: Any) -> None:
    loop_devices.add(0, "/pool/volumes/vol-1.img", autoclear=True)
    loop_devices.add(1, "/pool/volumes/vol-2.img")
    script([])
    assert losetup.find("/pool/volumes/vol-1.img") == losetup.LoopDevice("/dev/loop0", "/pool/volumes/vol-1.img",
                                                                         0, 0, False, detaching=True)
    assert losetup.find("/pool/volumes/vol-2.img", likely="/dev/loop1") == losetup.LoopDevice(
        "/dev/loop1", "/pool/volumes/vol-2.img", 0, 0, False)


def test_detach_waits_for_a_holder_that_lets_go(tmp_path: Any) -> None:
    """Real loop device: held at the detach (an unmount's last reference going away), the device is unbound
    by the holder's close a moment later; detach returns once it is, so a busy check right after it (a
    DeleteVolume after NodeUnpublish) finds nothing."""
    image, device, holder = attached_and_held(tmp_path)
    closer = threading.Timer(0.2, os.close, [holder])
    closer.start()
    try:
        losetup.detach(device)
        assert losetup.find(str(image)) is None  # the holder let go within the detach
    finally:
        closer.join()
