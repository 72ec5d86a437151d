"""local_attach on a real file pool: attach once, report no change after, never detach a mounted device."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from basalt_core import local_attach, losetup, volumes
from basalt_core.errors import InUse, NotFound
from basalt_core.pool import Pool
from basalt_core.pool_factory import open_pool


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    if os.geteuid() != 0:
        pytest.skip("attaches loop devices and mounts (root)")
    opened = open_pool(f"file:{tmp_path}/pool")
    yield opened
    for loop in losetup.over([str(tmp_path / "pool")]):  # this pool's devices only
        subprocess.run(["losetup", "--detach", loop.device], check=False, timeout=30)


def test_attach_detach_and_a_mounted_device_stays(pool: Pool, tmp_path: Path) -> None:
    volume = volumes.ensure_volume(pool, "scratch", 8 << 20)[0]
    assert local_attach.ensure_attached(pool, volume.id, check_mode=True) == (None, True)
    assert pool.attached_device(volume) is None  # check mode attached nothing
    device, changed = local_attach.ensure_attached(pool, volume.id)
    assert changed and device is not None and device == pool.attached_device(volume)
    assert local_attach.ensure_attached(pool, volume.id) == (device, False)

    subprocess.run(["mkfs.ext4", "-q", device], check=True, timeout=60)
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", device, str(target)], check=True, timeout=30)
    try:
        with pytest.raises(InUse, match=f"mounted at {target}"):
            local_attach.ensure_detached(pool, volume.id)
        assert pool.attached_device(volume) == device
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)
    assert local_attach.ensure_detached(pool, volume.id, check_mode=True) is True
    assert pool.attached_device(volume) == device
    assert local_attach.ensure_detached(pool, volume.id) is True
    assert pool.attached_device(volume) is None
    assert local_attach.ensure_detached(pool, volume.id) is False
    with pytest.raises(NotFound, match="does not exist"):
        local_attach.ensure_attached(pool, "vol-" + "0" * 32)
