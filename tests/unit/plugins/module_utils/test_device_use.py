"""basalt_core.device_use: what uses a block device, read from a recorded /sys, mountinfo and /proc/swaps.

The tree (device_use_testlib) holds the VM tier's real multipath recording; the iSCSI session part is
built after the kernel's layout because this machine has no kernel iSCSI initiator.  The last test is
real: a loop device mounted in another mount namespace is seen by the exclusive-open probe.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from device_use_testlib import kernel

from basalt_core import device_use, iscsiadm


@pytest.fixture
def recorded(tmp_path: Path) -> device_use.Kernel:
    return kernel(tmp_path)


def test_an_idle_disk_has_no_users(recorded: device_use.Kernel) -> None:
    assert device_use.users(["sdt"], recorded) == []
    assert device_use.users([], recorded) == []


def test_a_mounted_partition_makes_its_disk_in_use(recorded: device_use.Kernel) -> None:
    assert device_use.users(["sdq"], recorded) == ["/dev/sdq1 is mounted on /mnt/data"]
    assert device_use.users(["sdq2"], recorded) == []  # a partition is not its sibling


def test_a_multipath_map_holds_its_paths_and_its_mount_counts(recorded: device_use.Kernel, tmp_path: Path) -> None:
    both = ["held by dm-1 (mpatha)", "/dev/dm-1 is mounted on /srv/mp"]
    assert device_use.users(["sda"], recorded) == both
    assert device_use.users(["sda", "sdb"], recorded) == both
    Path(recorded.mountinfo).write_text("27 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n")
    assert device_use.users(["sdb"], recorded) == ["held by dm-1 (mpatha)"]  # a map is a user, mounted or not


def test_other_holders_swap_and_filesystems_found_by_their_source(recorded: device_use.Kernel) -> None:
    assert device_use.users(["sdu"], recorded) == ["held by dm-5 (vg0-data)"]
    assert device_use.users(["sds"], recorded) == ["/dev/sds is swap"]
    assert device_use.users(["sdr"], recorded) == ["/dev/sdr is mounted on /srv/btr"]  # btrfs: an anonymous number


def test_a_sessions_disks_are_found_under_its_sysfs_device(recorded: device_use.Kernel) -> None:
    assert iscsiadm.session_disks(7, sys_root=recorded.sys_root) == ["sdq"]
    assert iscsiadm.session_disks(8, sys_root=recorded.sys_root) == ["sda", "sdb"]
    assert iscsiadm.session_disks(6, sys_root=recorded.sys_root) == []


def test_a_mount_in_another_namespace_is_seen_by_the_exclusive_open(tmp_path: Path) -> None:
    """Real: a loop device with ext4 mounted only in a private mount namespace (not in this mount table)."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, timeout=60)
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()
    (tmp_path / "mnt").mkdir()
    holder = None
    try:
        assert device_use.users([loop]) == []
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   'mount "$0" "$1" && echo mounted && exec sleep 60', loop, str(tmp_path / "mnt")],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mounted"
        assert not os.path.ismount(tmp_path / "mnt")
        assert device_use.users([loop]) == [f"{loop} is open exclusively by another program (a mount in another "
                                            "namespace, mkfs, ...)"]
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(timeout=30)
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)
