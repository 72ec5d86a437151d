"""What only the lvm pool has: LV records in tags, data on the PV, LVs that are not Basalt's.

Runs with ``--pool-kind lvm-loop``; with ``file`` every test here is skipped.
The VG is made by the fixture (``LvmVg``) with two LVs Basalt did not make,
``not-basalt`` and one named like Basalt's own (``csi-<32 hex>``) but
without ``basalt.managed``; each agent's teardown also checks that they and
their data survived everything the module did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from basalt_csi_testlib import (
    LVM_LOOP_KIND,
    MANAGED_TAG,
    READY_TAG,
    SC,
    Agent,
    LvmVg,
    MiB,
    block_cap,
    bring_up,
    crange,
    csi,
    exact,
    expect_code,
    mount_cap,
    pattern,
    read_block,
    snapshot_source,
    tear_down,
    unique,
    volume_lv_name,
    volume_source,
    write_block,
    write_file,
)

SKIP_FILE = "lvm pool only (LV tags, PV offsets, foreign LVs): run with --pool-kind lvm-loop"
LOOKALIKE = LvmVg.FOREIGN_LVS[1]  # csi-<hex>: the LV volume "vol-<hex>" would have
LOOKALIKE_ID = "vol-" + LOOKALIKE[len("csi-"):]


@pytest.fixture(scope="module")
def lvm_agent(request: pytest.FixtureRequest, pool_kind: str) -> Iterator[Agent]:
    if pool_kind != LVM_LOOP_KIND:
        pytest.skip(SKIP_FILE)
    agent: Agent = request.getfixturevalue("agent")
    assert agent.lvm is not None
    yield agent


def vg(agent: Agent) -> LvmVg:
    assert agent.lvm is not None
    return agent.lvm


def tags_of(agent: Agent, lv: str) -> set[str]:
    return set(vg(agent).lvs()[lv]["lv_tags"].split(","))


def test_volume_and_snapshot_lvs_carry_the_record_tags(lvm_agent: Agent) -> None:
    agent = lvm_agent
    vol = agent.create_volume(8 * MiB)
    lv = volume_lv_name(vol.volume_id)
    row = vg(agent).lvs()[lv]
    assert {MANAGED_TAG, READY_TAG} <= tags_of(agent, lv)
    assert int(row["lv_size"]) == vol.capacity_bytes
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=unique("snap"))
    ).snapshot
    snap_lv = "csi-snap-" + snap.snapshot_id[len("snap-"):]
    assert {MANAGED_TAG, READY_TAG} <= tags_of(agent, snap_lv)
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    assert snap_lv not in vg(agent).lvs()
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert lv not in vg(agent).lvs()


def test_mounted_data_is_in_the_pv_at_the_lv_offset(lvm_agent: Agent) -> None:
    agent = lvm_agent
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target and att.device
    data = pattern(512 * 1024, f"on-the-pv:{vol.volume_id}")
    write_file(os.path.join(att.target, "payload"), data)
    os.sync()
    lv = volume_lv_name(vol.volume_id)
    offset, length = vg(agent).lv_location(lv)
    assert att.backing == f"{vg(agent).device}@{offset}"
    # the loop device the agent staged IS the LV's byte range of the PV: the file's blocks are at the same
    # offset in both (compared there, not in the fs metadata, which the mounted ext4 may rewrite between reads)
    staged = read_block(att.device, length)
    at = staged.find(data[:4096])
    assert at >= 0, "the file's first block is not on the staged device"
    assert vg(agent).read_lv(lv, 64 * 1024, at) == staged[at:at + 64 * 1024]
    tear_down(agent, att)
    on_pv = vg(agent).read_lv(lv, length)
    assert data[:4096] in on_pv and data[-4096:] in on_pv, "the file's bytes are not within the LV on the PV"


def test_block_data_is_in_the_pv_image_file(lvm_agent: Agent) -> None:
    """Through the PV image file itself (not a device): the bytes really are in the image."""
    agent = lvm_agent
    cap = block_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    data = pattern(64 * 1024, f"image:{vol.volume_id}")
    write_block(att.target, data, 3 * MiB)
    tear_down(agent, att)  # detaching flushes the LV's loop device
    lvm = vg(agent)
    assert lvm.device
    fd = os.open(lvm.device, os.O_RDONLY)
    try:
        os.fsync(fd)  # and the PV's, into the image file
    finally:
        os.close(fd)
    offset, _ = lvm.lv_location(volume_lv_name(vol.volume_id))
    with open(lvm.image, "rb") as fh:
        fh.seek(offset + 3 * MiB)
        assert fh.read(len(data)) == data


def test_foreign_lvs_never_listed_or_counted(lvm_agent: Agent) -> None:
    agent = lvm_agent
    lvm = vg(agent)
    agent.create_volume(4 * MiB)
    lvs = lvm.lvs()
    assert set(LvmVg.FOREIGN_LVS) <= set(lvs)
    managed = {name for name, row in lvs.items()
               if MANAGED_TAG in row["lv_tags"].split(",") and not name.startswith("csi-snap-")}
    listed = {e.volume.volume_id for e in agent.list_all_volumes()}
    assert {volume_lv_name(v) for v in listed} == managed
    assert LOOKALIKE_ID not in listed
    # capacity: the VG's free extents, nothing more (foreign LVs hold theirs)
    free = agent.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert free.available_capacity == lvm.vg_free()


def test_lookalike_foreign_lv_is_not_a_volume(lvm_agent: Agent) -> None:
    """``csi-<hex>`` without basalt.managed: every RPC treats vol-<hex> as missing, and it survives."""
    agent = lvm_agent
    lvm = vg(agent)
    loops = agent.pool_loops()
    calls: list[tuple[Any, Any, tuple[SC, ...]]] = [
        (agent.ctl.ControllerGetVolume, csi.ControllerGetVolumeRequest(volume_id=LOOKALIKE_ID), (SC.NOT_FOUND,)),
        (agent.ctl.ValidateVolumeCapabilities,
         csi.ValidateVolumeCapabilitiesRequest(volume_id=LOOKALIKE_ID, volume_capabilities=[mount_cap()]),
         (SC.NOT_FOUND,)),
        (agent.ctl.ControllerPublishVolume,
         csi.ControllerPublishVolumeRequest(volume_id=LOOKALIKE_ID, node_id=agent.node_id,
                                            volume_capability=mount_cap()), (SC.NOT_FOUND,)),
        (agent.ctl.ControllerExpandVolume,
         csi.ControllerExpandVolumeRequest(volume_id=LOOKALIKE_ID, capacity_range=crange(8 * MiB)),
         (SC.NOT_FOUND,)),
        (agent.ctl.CreateSnapshot,
         csi.CreateSnapshotRequest(source_volume_id=LOOKALIKE_ID, name=unique("snap")), (SC.NOT_FOUND,)),
        (agent.ctl.CreateVolume,
         csi.CreateVolumeRequest(name=unique("clone"), volume_capabilities=[mount_cap()],
                                 capacity_range=exact(4 * MiB),
                                 volume_content_source=volume_source(LOOKALIKE_ID)), (SC.NOT_FOUND,)),
        (agent.ctl.CreateVolume,
         csi.CreateVolumeRequest(name=unique("restore"), volume_capabilities=[mount_cap()],
                                 capacity_range=exact(4 * MiB),
                                 volume_content_source=snapshot_source("snap-" + LOOKALIKE[len("csi-"):])),
         (SC.NOT_FOUND,)),
        (agent.node.NodeStageVolume,
         csi.NodeStageVolumeRequest(volume_id=LOOKALIKE_ID, staging_target_path=agent.staging_dir(),
                                    volume_capability=mount_cap()), (SC.NOT_FOUND,)),
        (agent.node.NodePublishVolume,
         csi.NodePublishVolumeRequest(volume_id=LOOKALIKE_ID, staging_target_path=agent.staging_dir(),
                                      target_path=agent.path("mount"), volume_capability=mount_cap()),
         (SC.NOT_FOUND,)),
        (agent.node.NodeUnstageVolume,
         csi.NodeUnstageVolumeRequest(volume_id=LOOKALIKE_ID, staging_target_path=agent.staging_dir()),
         (SC.NOT_FOUND,)),
    ]
    for method, req, codes in calls:
        expect_code(method, req, *codes)
    # idempotent deletes and unpublishes answer OK for a missing volume, and must not remove the LV
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=LOOKALIKE_ID))
    agent.ctl.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=LOOKALIKE_ID, node_id=agent.node_id))
    assert agent.pool_loops() == loops, "an RPC attached the foreign LV"
    assert lvm.foreign_problems() == []
    assert MANAGED_TAG not in set(lvm.lvs()[LOOKALIKE]["lv_tags"].split(","))
