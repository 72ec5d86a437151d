"""Every idempotent RPC repeated 10 times, and clean-up calls on untouched volumes."""

from __future__ import annotations

import os
from typing import Any

from basalt_csi_testlib import (
    SC,
    Agent,
    MiB,
    block_cap,
    bring_up,
    crange,
    csi,
    exact,
    expect_code,
    is_block_device,
    is_mounted,
    mount_cap,
    mounts_at,
    stage_tracking_image,
    unique,
)

N = 10


def create_req(name: str, size: int = 4 * MiB, **kw: Any) -> Any:
    return csi.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_cap()], capacity_range=exact(size), **kw
    )


def test_create_volume_10x(agent: Agent) -> None:
    name = unique()
    before = len(agent.list_all_volumes())
    vols = [agent.ctl.CreateVolume(create_req(name)).volume for _ in range(N)]
    assert len({v.volume_id for v in vols}) == 1
    assert all(v.capacity_bytes == 4 * MiB for v in vols)
    assert all(dict(v.volume_context) == dict(vols[0].volume_context) for v in vols)
    assert len(agent.list_all_volumes()) == before + 1


def test_create_volume_same_name_incompatible(agent: Agent) -> None:
    name = unique()
    vol = agent.ctl.CreateVolume(create_req(name)).volume
    expect_code(agent.ctl.CreateVolume, create_req(name, size=8 * MiB), SC.ALREADY_EXISTS)
    src = agent.create_volume(4 * MiB)
    expect_code(
        agent.ctl.CreateVolume,
        create_req(name, volume_content_source=csi.VolumeContentSource(
            volume=csi.VolumeContentSource.VolumeSource(volume_id=src.volume_id))),
        SC.ALREADY_EXISTS,
    )
    # the original is unchanged
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == 4 * MiB


def test_create_volume_compatible_range_is_same_volume(agent: Agent) -> None:
    name = unique()
    first = agent.ctl.CreateVolume(create_req(name)).volume
    req = csi.CreateVolumeRequest(
        name=name, volume_capabilities=[mount_cap()], capacity_range=crange(2 * MiB, 8 * MiB)
    )
    again = agent.ctl.CreateVolume(req).volume
    assert again.volume_id == first.volume_id
    assert again.capacity_bytes == 4 * MiB


def test_delete_volume_10x(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    for _ in range(N):
        agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    expect_code(
        agent.ctl.ControllerGetVolume,
        csi.ControllerGetVolumeRequest(volume_id=vol.volume_id),
        SC.NOT_FOUND,
    )


def test_snapshot_create_delete_10x(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    name = unique("snap")
    snaps = [
        agent.ctl.CreateSnapshot(
            csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name)
        ).snapshot
        for _ in range(N)
    ]
    assert len({s.snapshot_id for s in snaps}) == 1
    listed = agent.ctl.ListSnapshots(csi.ListSnapshotsRequest(source_volume_id=vol.volume_id))
    assert [e.snapshot.snapshot_id for e in listed.entries] == [snaps[0].snapshot_id]
    for _ in range(N):
        agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snaps[0].snapshot_id))
    expect_code(
        agent.ctl.GetSnapshot,
        csi.GetSnapshotRequest(snapshot_id=snaps[0].snapshot_id),
        SC.NOT_FOUND,
    )


def test_controller_publish_unpublish_10x(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    req = csi.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=mount_cap()
    )
    contexts = [dict(agent.ctl.ControllerPublishVolume(req).publish_context) for _ in range(N)]
    assert all(c == contexts[0] for c in contexts)
    assert list(agent.get_volume(vol.volume_id).status.published_node_ids) == [agent.node_id]
    unreq = csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=agent.node_id)
    for _ in range(N):
        agent.ctl.ControllerUnpublishVolume(unreq)
    assert list(agent.get_volume(vol.volume_id).status.published_node_ids) == []
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_node_stage_unstage_10x(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    for _ in range(N):
        agent.stage(vol.volume_id, cap, staging=att.staging)
    assert len(mounts_at(att.staging)) == 1
    assert att.backing
    assert len(agent.loops_for(att.backing)) == 1, "restaging attached another loop device"
    for _ in range(N):
        agent.unstage(vol.volume_id, att.staging)
    assert not is_mounted(att.staging)
    assert agent.detached(att.backing)


def test_node_publish_unpublish_10x(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    target = agent.path("mount")
    for _ in range(N):
        agent.publish(vol.volume_id, cap, att.staging, target=target)
    assert len(mounts_at(target)) == 1
    for _ in range(N):
        agent.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
    agent.unstage(vol.volume_id, att.staging)
    assert att.backing and agent.detached(att.backing)


def test_block_publish_unpublish_10x(agent: Agent) -> None:
    cap = block_cap()
    vol = agent.create_volume(4 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    for _ in range(N):
        agent.stage(vol.volume_id, cap, staging=att.staging)
    target = agent.path("dev")
    for _ in range(N):
        agent.publish(vol.volume_id, cap, att.staging, target=target)
    assert len(mounts_at(target)) == 1
    assert is_block_device(target)
    for _ in range(N):
        agent.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
    for _ in range(N):
        agent.unstage(vol.volume_id, att.staging)
    assert att.backing and agent.detached(att.backing)


def test_controller_expand_10x(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    req = csi.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=crange(12 * MiB), volume_capability=mount_cap()
    )
    sizes = [agent.ctl.ControllerExpandVolume(req).capacity_bytes for _ in range(N)]
    assert sizes == [12 * MiB] * N
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == 12 * MiB


# --------------------------------------------------------------------------
# clean-up calls on volumes that were never staged / published
# --------------------------------------------------------------------------


def test_node_unpublish_never_published(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    target = agent.path("mount")
    agent.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
    existing = agent.path("mount")
    os.makedirs(existing)
    agent.unpublish(vol.volume_id, existing)


def test_node_unstage_never_staged(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    staging = agent.staging_dir()
    for _ in range(N):
        agent.unstage(vol.volume_id, staging)
    assert not is_mounted(staging)


def test_controller_unpublish_never_published(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    for _ in range(N):
        agent.ctl.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=agent.node_id)
        )
    assert list(agent.get_volume(vol.volume_id).status.published_node_ids) == []
