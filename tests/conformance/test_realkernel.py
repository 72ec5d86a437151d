"""The real-kernel subset: lvm pools with real device-mapper activation.

Only for ``--pool-kind lvm-dm`` (``--pool lvm:VG --lvm-activation dm``) and
``--pool-kind lvmthin`` (``--pool lvmthin:VG/thinpool``); other kinds skip,
and so do these kinds on hosts without device-mapper.  The VM tier
(``tests/vm``, marker ``vm``) runs this file inside a QEMU guest with Debian's
stock kernel, once per kind, in one boot.

Every LVM command costs 0.5-2 s under QEMU TCG, so this is a representative
flow rather than the whole suite: create, ControllerPublish, NodeStage (mkfs),
NodePublish, data written through the mount, snapshot of the staged volume,
restore into a new volume and the data read back, clone, online expansion of
xfs, and of ext4 (at NodeStage after an expand while unstaged, and at
NodeExpandVolume), unpublish/unstage/unpublish, delete, ListVolumes; for lvm-dm
also a classic COW snapshot (``basalt.dev/snapshot-mode: cow``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    LVM_DM_KIND,
    LVMTHIN_KIND,
    REAL_KERNEL_KINDS,
    THIN_POOL_NAME,
    XFS_MIN,
    Agent,
    Attached,
    MiB,
    crange,
    csi,
    fs_total_bytes,
    is_mounted,
    mount_cap,
    mounts,
    pattern,
    read_file,
    snapshot_source,
    top_mount,
    unique,
    volume_lv_name,
    volume_source,
    write_file,
)

from basalt_core import filesystem

SNAPSHOT_MODE_KEY = "basalt.dev/snapshot-mode"


@pytest.fixture(scope="module", autouse=True)
def _real_kernel_only(pool_kind: str) -> Iterator[None]:
    if pool_kind not in REAL_KERNEL_KINDS:
        pytest.skip(f"real-kernel subset: only for --pool-kind {' or '.join(REAL_KERNEL_KINDS)} (got {pool_kind})")
    yield


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def lv_rows(agent: Agent) -> dict[str, dict[str, str]]:
    """Every LV of the agent's VG with its attributes, pool and origin."""
    assert agent.lvm is not None
    rows = agent.lvm.report("lvs", "lv", "lv_name,lv_attr,pool_lv,origin,lv_size,lv_dm_path", agent.lvm.vg)
    return {row["lv_name"]: row for row in rows}


def lv_of(agent: Agent, volume_id: str) -> dict[str, str]:
    rows = lv_rows(agent)
    name = volume_lv_name(volume_id)
    assert name in rows, f"no LV {name} for {volume_id} in {sorted(rows)}"
    return rows[name]


def active(row: dict[str, str]) -> bool:
    return len(row["lv_attr"]) > 4 and row["lv_attr"][4] == "a"


def up(agent: Agent, vol: Any, cap: Any) -> Attached:
    """ControllerPublish, NodeStage, NodePublish; checks the staged device is the LV's dm device."""
    ctx = agent.ctl.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=cap,
            volume_context=vol.volume_context,
        )
    ).publish_context
    staging = agent.stage(vol.volume_id, cap, publish_context=ctx, volume_context=vol.volume_context)
    source = top_mount(staging).source
    real = os.path.realpath(source)
    assert os.path.basename(real).startswith("dm-"), f"staged {source} -> {real}: not a device-mapper device"
    row = lv_of(agent, vol.volume_id)
    assert active(row), f"LV {row['lv_name']} staged but not active: {row['lv_attr']}"
    assert os.path.samefile(real, row["lv_dm_path"]), f"staged {real}, the LV is {row['lv_dm_path']}"
    target = agent.publish(vol.volume_id, cap, staging, publish_context=ctx, volume_context=vol.volume_context)
    return Attached(volume_id=vol.volume_id, staging=staging, image=None, target=target, device=real,
                    publish_context=dict(ctx))


def down(agent: Agent, att: Attached) -> None:
    """NodeUnpublish, NodeUnstage, ControllerUnpublish; the LV ends inactive."""
    if att.target:
        agent.unpublish(att.volume_id, att.target)
        assert not os.path.lexists(att.target)
    agent.unstage(att.volume_id, att.staging)
    assert not is_mounted(att.staging)
    agent.ctl.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=att.volume_id, node_id=agent.node_id)
    )
    row = lv_of(agent, att.volume_id)
    assert not active(row), f"LV {row['lv_name']} still active after unstage + unpublish: {row['lv_attr']}"
    assert att.device is None or not os.path.exists(att.device) or not os.path.samefile(att.device, row["lv_dm_path"])


def from_source(source: Any, size: int, cap: Any) -> Any:
    return csi.CreateVolumeRequest(
        name=unique("vol"), capacity_range=crange(size), volume_capabilities=[cap], volume_content_source=source,
    )


def snapshot(agent: Agent, volume_id: str, **params: str) -> Any:
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=volume_id, name=unique("snap"), parameters=params)
    ).snapshot
    assert snap.ready_to_use
    assert snap.source_volume_id == volume_id
    return snap


def delete_volumes(agent: Agent, *volume_ids: str) -> None:
    for vid in volume_ids:
        try:
            agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vid))
        except grpc.RpcError as err:
            dm = subprocess.run(["dmsetup", "info", "-c"], capture_output=True, text=True).stdout
            pytest.fail(
                f"DeleteVolume({vid}): {err.code().name} {err.details()!r}; LVM: {lv_of(agent, vid)}; "
                f"mounts of it: {[m for m in mounts() if volume_lv_name(vid).replace('-', '--') in m.source]}; "
                f"dmsetup info -c:\n{dm}"
            )
    listed = {e.volume.volume_id for e in agent.list_all_volumes()}
    names = set(lv_rows(agent))
    for vid in volume_ids:
        assert vid not in listed, f"{vid} still listed after DeleteVolume"
        assert volume_lv_name(vid) not in names, f"LV of {vid} left after DeleteVolume"


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


def test_volume_is_an_lv_of_the_right_type(agent: Agent, pool_kind: str) -> None:
    """CreateVolume makes a thick LV (lvm-dm) or a thin LV in the fixture's thin pool (lvmthin)."""
    vol = agent.create_volume(32 * MiB, cap=mount_cap("ext4"))
    row = lv_of(agent, vol.volume_id)
    if pool_kind == LVMTHIN_KIND:
        assert row["lv_attr"][0] == "V" and row["pool_lv"] == THIN_POOL_NAME, row
    else:
        assert row["lv_attr"][0] == "-" and not row["pool_lv"], row
    assert int(row["lv_size"]) == vol.capacity_bytes
    delete_volumes(agent, vol.volume_id)


def test_stage_write_snapshot_restore_clone(agent: Agent) -> None:
    """Data written through the mount survives a snapshot of the staged volume,
    a restore into a new volume and a clone; ListVolumes lists all; delete removes the LVs."""
    cap = mount_cap("ext4")
    vol = agent.create_volume(64 * MiB, cap=cap)
    att = up(agent, vol, cap)
    assert att.target
    before = pattern(1 * MiB, "before-snapshot")
    write_file(os.path.join(att.target, "before"), before)

    snap = snapshot(agent, vol.volume_id)  # the volume is staged and mounted
    after = pattern(256 * 1024, "after-snapshot")
    write_file(os.path.join(att.target, "after"), after)

    restored = agent.ctl.CreateVolume(from_source(snapshot_source(snap.snapshot_id), 64 * MiB, cap)).volume
    clone = agent.ctl.CreateVolume(from_source(volume_source(vol.volume_id), 64 * MiB, cap)).volume  # staged source
    listed = {e.volume.volume_id for e in agent.list_all_volumes()}
    assert {vol.volume_id, restored.volume_id, clone.volume_id} <= listed

    att_r = up(agent, restored, cap)
    assert att_r.target
    assert read_file(os.path.join(att_r.target, "before")) == before
    assert not os.path.exists(os.path.join(att_r.target, "after")), "the snapshot holds a later write"
    att_c = up(agent, clone, cap)
    assert att_c.target
    assert read_file(os.path.join(att_c.target, "before")) == before
    assert read_file(os.path.join(att_c.target, "after")) == after

    for a in (att_c, att_r, att):
        down(agent, a)
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    delete_volumes(agent, clone.volume_id, restored.volume_id, vol.volume_id)


def test_cow_snapshot(agent: Agent, pool_kind: str) -> None:
    """lvm-dm: a classic COW snapshot (dm-snapshot, attr 's') keeps the data of
    the moment; restoring it gives that data back, all of it: the snapshot LV's
    lv_size is only its COW space (a quarter of the volume here)."""
    if pool_kind != LVM_DM_KIND:
        pytest.skip("basalt.dev/snapshot-mode: cow is for thick lvm pools (thin snapshots are always thin)")
    cap = mount_cap("ext4")
    vol = agent.create_volume(32 * MiB, cap=cap)
    att = up(agent, vol, cap)
    assert att.target
    old = pattern(512 * 1024, "cow-old")
    write_file(os.path.join(att.target, "data"), old)
    lvs_before = set(lv_rows(agent))
    snap = snapshot(agent, vol.volume_id, **{SNAPSHOT_MODE_KEY: "cow"})
    new_lvs = {name: row for name, row in lv_rows(agent).items() if name not in lvs_before}
    assert len(new_lvs) == 1, new_lvs
    row = next(iter(new_lvs.values()))
    assert row["lv_attr"][0] == "s" and row["origin"] == volume_lv_name(vol.volume_id), row
    assert int(row["lv_size"]) < vol.capacity_bytes, row  # the COW space: not the snapshot's size
    listed = agent.ctl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id)).entries
    assert [e.snapshot.size_bytes for e in listed] == [vol.capacity_bytes], listed
    write_file(os.path.join(att.target, "data"), pattern(512 * 1024, "cow-new"))

    restored = agent.ctl.CreateVolume(from_source(snapshot_source(snap.snapshot_id), 32 * MiB, cap)).volume
    att_r = up(agent, restored, cap)
    assert att_r.target
    assert read_file(os.path.join(att_r.target, "data")) == old
    down(agent, att_r)
    down(agent, att)
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert row["lv_name"] not in lv_rows(agent), "the COW snapshot LV is left after DeleteSnapshot"
    delete_volumes(agent, restored.volume_id, vol.volume_id)


def test_ext4_grows_online_where_the_kernel_allows(agent: Agent) -> None:
    """Root on a real kernel may grow a mounted ext4 (CAP_SYS_RESOURCE): a volume expanded while unstaged is grown
    once mounted at its next NodeStage, not offline (no undo file), and NodeExpandVolume grows a mounted one."""
    assert filesystem.online_grow_allowed("ext4")  # the agent runs as this same root
    cap = mount_cap("ext4")
    vol = agent.create_volume(32 * MiB, cap=cap)
    att = up(agent, vol, cap)
    assert att.target
    data = pattern(1 * MiB, "ext4-expand")
    write_file(os.path.join(att.target, "data"), data)
    size_before = fs_total_bytes(att.target)
    down(agent, att)
    agent.ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=crange(64 * MiB), volume_capability=cap))
    att = up(agent, vol, cap)
    assert att.target
    assert fs_total_bytes(att.target) >= size_before + 24 * MiB, (size_before, fs_total_bytes(att.target))
    assert "grew ext4 on" in agent.log() and " online" in agent.log() and "offline (attempt" not in agent.log()
    grown = fs_total_bytes(att.target)
    agent.ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=crange(96 * MiB), volume_capability=cap))
    agent.node.NodeExpandVolume(csi.NodeExpandVolumeRequest(
        volume_id=vol.volume_id, volume_path=att.target, staging_target_path=att.staging,
        capacity_range=crange(96 * MiB), volume_capability=cap))
    assert fs_total_bytes(att.target) >= grown + 24 * MiB, (grown, fs_total_bytes(att.target))
    assert read_file(os.path.join(att.target, "data")) == data
    down(agent, att)
    delete_volumes(agent, vol.volume_id)


def test_online_expand_xfs(agent: Agent) -> None:
    """ControllerExpandVolume grows the active LV; NodeExpandVolume grows the mounted xfs."""
    cap = mount_cap("xfs")
    vol = agent.create_volume(XFS_MIN, cap=cap)
    att = up(agent, vol, cap)
    assert att.target
    data = pattern(1 * MiB, "xfs-expand")
    write_file(os.path.join(att.target, "data"), data)
    size_before = fs_total_bytes(att.target)
    new_size = XFS_MIN + 128 * MiB
    resp = agent.ctl.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=crange(new_size),
                                          volume_capability=cap)
    )
    assert resp.capacity_bytes >= new_size
    assert int(lv_of(agent, vol.volume_id)["lv_size"]) >= new_size
    agent.node.NodeExpandVolume(
        csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=att.target,
                                    staging_target_path=att.staging, capacity_range=crange(new_size),
                                    volume_capability=cap)
    )
    assert fs_total_bytes(att.target) >= size_before + 100 * MiB, (size_before, fs_total_bytes(att.target))
    assert read_file(os.path.join(att.target, "data")) == data
    down(agent, att)
    delete_volumes(agent, vol.volume_id)
