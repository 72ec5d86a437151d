"""Data round-trips through snapshots, restores and clones, on every pool variant.

With ``--pool-kind file``:

* ``ext4-root``: the pool directory is on the root ext4 filesystem, where
  copies are plain copies (``basalt.dev/copy-method`` = ``copy``);
* ``xfs``: the pool directory is on an xfs filesystem made by the fixture on
  its own loop device, where copies are reflinks (``reflink``).

With ``--pool-kind lvm-loop``:

* ``lvm-loop``: each volume, snapshot and copy is an LV; copies are
  independent byte copies (``copy``), and the data written through a mount is
  checked to lie in the PV image at the LV's offset;
* ``xfs``: skipped (a file-pool variant).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
from basalt_csi_testlib import (
    COPY_METHOD_KEY,
    FILE_KIND,
    Agent,
    MiB,
    block_cap,
    bring_up,
    csi,
    exact,
    fs_total_bytes,
    mount_cap,
    pattern,
    read_block,
    read_file,
    snapshot_source,
    tear_down,
    unique,
    volume_lv_name,
    volume_source,
    write_block,
    write_file,
)


@dataclass
class Pool:
    agent: Agent
    kind: str
    copy_method: str


XFS_SKIP = (
    "the xfs variant (pool directory on xfs, reflink copies) exists for --pool-kind file only; "
    "lvm-loop copies LVs byte by byte"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pool" in metafunc.fixturenames:
        kind = metafunc.config.getoption("pool_kind", default=FILE_KIND)
        variants = ["ext4-root", "xfs"] if kind == FILE_KIND else [kind, "xfs"]
        metafunc.parametrize("pool", variants, indirect=True, scope="module")


@pytest.fixture(scope="module")
def pool(request: pytest.FixtureRequest) -> Pool:
    if request.param == "xfs":
        if request.getfixturevalue("pool_kind") != FILE_KIND:
            pytest.skip(XFS_SKIP)
        return Pool(request.getfixturevalue("xfs_agent"), "xfs", "reflink")
    agent: Agent = request.getfixturevalue("agent")
    return Pool(agent, request.param, "copy")


def create_from(agent: Agent, source: Any, size: int, cap: Any) -> Any:
    return agent.ctl.CreateVolume(
        csi.CreateVolumeRequest(
            name=unique("copy"),
            volume_capabilities=[cap],
            capacity_range=exact(size),
            volume_content_source=source,
        )
    ).volume


def write_payload(agent: Agent, vol: Any, cap: Any, files: dict[str, bytes]) -> str | None:
    att = bring_up(agent, vol, cap)
    assert att.target
    for name, data in files.items():
        write_file(os.path.join(att.target, name), data)
    os.sync()
    tear_down(agent, att)
    if agent.lvm is not None:
        assert_files_on_pv(agent, vol, files)
    return att.image


def assert_files_on_pv(agent: Agent, vol: Any, files: dict[str, bytes]) -> None:
    """lvm-loop: each file's first KiB lies in the PV image, within the volume's LV."""
    assert agent.lvm is not None
    lv = volume_lv_name(vol.volume_id)
    _, length = agent.lvm.lv_location(lv)
    content = agent.lvm.read_lv(lv, length)
    for name, data in files.items():
        assert data[:1024] in content, f"{name} is not in {agent.lvm.vg}/{lv} on the PV"


def read_payload(agent: Agent, vol: Any, cap: Any, names: list[str]) -> dict[str, bytes]:
    att = bring_up(agent, vol, cap)
    assert att.target
    try:
        return {n: read_file(os.path.join(att.target, n)) for n in names}
    finally:
        tear_down(agent, att)


def shared_extents(image: str) -> bool:
    out = subprocess.run(["filefrag", "-v", image], capture_output=True, text=True, check=True)
    return "shared" in out.stdout


def test_snapshot_restore_and_clone_roundtrip(pool: Pool) -> None:
    agent, cap = pool.agent, mount_cap("ext4")
    original = {"payload.bin": pattern(1 * MiB, "original"), "small.txt": b"hello basalt\n"}
    changed = {"payload.bin": pattern(1 * MiB, "changed"), "new.txt": b"after the snapshot\n"}

    src = agent.create_volume(16 * MiB, cap=cap)
    write_payload(agent, src, cap, original)
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=src.volume_id, name=unique("snap"))
    ).snapshot
    assert snap.ready_to_use and snap.size_bytes == 16 * MiB

    # the source moves on; the snapshot must not
    write_payload(agent, src, cap, changed)

    restored = create_from(agent, snapshot_source(snap.snapshot_id), 16 * MiB, cap)
    assert restored.volume_context[COPY_METHOD_KEY] == pool.copy_method
    att = bring_up(agent, restored, cap)
    assert att.target
    assert {n: read_file(os.path.join(att.target, n)) for n in original} == original
    assert not os.path.exists(os.path.join(att.target, "new.txt"))
    tear_down(agent, att)

    clone = create_from(agent, volume_source(src.volume_id), 16 * MiB, cap)
    assert clone.volume_context[COPY_METHOD_KEY] == pool.copy_method
    got = read_payload(agent, clone, cap, ["payload.bin", "new.txt", "small.txt"])
    assert got == {**original, **changed}

    # writing to a copy does not leak into the source
    write_payload(agent, clone, cap, {"small.txt": b"clone only\n"})
    assert read_payload(agent, src, cap, ["small.txt"]) == {"small.txt": original["small.txt"]}
    assert read_payload(agent, restored, cap, ["small.txt"]) == {"small.txt": original["small.txt"]}


def test_restore_into_larger_volume(pool: Pool) -> None:
    agent, cap = pool.agent, mount_cap("ext4")
    data = {"d": pattern(512 * 1024, "larger")}
    src = agent.create_volume(16 * MiB, cap=cap)
    write_payload(agent, src, cap, data)
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=src.volume_id, name=unique("snap"))
    ).snapshot
    big = create_from(agent, snapshot_source(snap.snapshot_id), 48 * MiB, cap)
    assert big.capacity_bytes == 48 * MiB
    att = bring_up(agent, big, cap)
    assert att.target
    assert read_file(os.path.join(att.target, "d")) == data["d"]
    # the filesystem is at least as large as the source's and still writable
    assert fs_total_bytes(att.target) >= 12 * MiB
    write_file(os.path.join(att.target, "more"), pattern(4 * MiB, "more"))
    tear_down(agent, att)


def test_block_snapshot_roundtrip(pool: Pool) -> None:
    agent, cap = pool.agent, block_cap()
    head, tail = pattern(64 * 1024, "head"), pattern(64 * 1024, "tail")
    src = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, src, cap)
    assert att.target
    write_block(att.target, head, 0)
    write_block(att.target, tail, 7 * MiB)
    tear_down(agent, att)
    if agent.lvm is not None:  # the bytes are at the LV's offset in the PV image
        lv = volume_lv_name(src.volume_id)
        assert agent.lvm.read_lv(lv, len(head), 0) == head
        assert agent.lvm.read_lv(lv, len(tail), 7 * MiB) == tail
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=src.volume_id, name=unique("snap"))
    ).snapshot
    restored = create_from(agent, snapshot_source(snap.snapshot_id), 8 * MiB, cap)
    assert restored.volume_context[COPY_METHOD_KEY] == pool.copy_method
    att2 = bring_up(agent, restored, cap)
    assert att2.target
    assert read_block(att2.target, len(head), 0) == head
    assert read_block(att2.target, len(tail), 7 * MiB) == tail
    tear_down(agent, att2)


def test_reflink_shares_extents(pool: Pool) -> None:
    if pool.kind != "xfs":  # lvm-loop never gets here: its xfs variant is skipped as a whole
        pytest.skip("extent sharing only exists on the reflink (xfs) pool")
    if shutil.which("filefrag") is None:
        pytest.skip("filefrag (e2fsprogs) is not installed")
    agent, cap = pool.agent, block_cap()
    src = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, src, cap)
    assert att.target and att.image
    write_block(att.target, pattern(4 * MiB, "extents"), 0)
    tear_down(agent, att)
    assert not shared_extents(att.image)
    create_from(agent, volume_source(src.volume_id), 8 * MiB, cap)
    assert shared_extents(att.image), "the clone was not made with a reflink"
