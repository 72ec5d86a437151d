"""Node service against real loop devices, filesystems and mounts: stage, publish, block volumes, stats,
ephemeral inline volumes (expansion: test_node_expand.py)."""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    AM,
    EPHEMERAL_KEY,
    MANAGED_TAG,
    READY_TAG,
    SC,
    XFS_MIN,
    Agent,
    MiB,
    block_cap,
    bring_up,
    code_of,
    csi,
    expect_code,
    fs_total_bytes,
    is_block_device,
    is_mounted,
    mount_cap,
    mounts_at,
    pattern,
    read_block,
    read_file,
    retry_until,
    stage_tracking_image,
    tear_down,
    top_mount,
    unique,
    usage_by_unit,
    volume_lv_name,
    write_block,
    write_file,
)

Usage = csi.VolumeUsage


# --------------------------------------------------------------------------
# mount volumes
# --------------------------------------------------------------------------


def test_ext4_mount_lifecycle(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    if agent.lvm is None:
        assert att.image and os.path.isfile(att.image)
    else:
        tags = agent.lvm.lvs()[volume_lv_name(vol.volume_id)]["lv_tags"].split(",")
        assert {MANAGED_TAG, READY_TAG} <= set(tags), tags
    assert top_mount(att.staging).fstype == "ext4"

    target = agent.publish(vol.volume_id, cap, att.staging, publish_context=att.publish_context)
    att.target = target
    assert os.path.isdir(target)
    assert top_mount(target).fstype == "ext4"
    data = pattern(256 * 1024, vol.volume_id)
    write_file(os.path.join(target, "payload"), data)
    # the bind mount and the staging mount are the same filesystem
    assert read_file(os.path.join(att.staging, "payload")) == data

    agent.unpublish(vol.volume_id, target)
    assert not os.path.lexists(target)
    assert is_mounted(att.staging), "NodeUnpublish must not unstage"
    att.target = None
    tear_down(agent, att)
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    if agent.lvm is None:
        assert att.image and not os.path.exists(att.image), "DeleteVolume must remove the image"
    else:
        lv = volume_lv_name(vol.volume_id)
        assert lv not in agent.lvm.lvs(), f"DeleteVolume must remove the LV {lv}"


def test_xfs_mount(agent: Agent) -> None:
    cap = mount_cap("xfs")
    vol = agent.create_volume(XFS_MIN, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    assert top_mount(att.staging).fstype == "xfs"
    assert top_mount(att.target).fstype == "xfs"
    write_file(os.path.join(att.target, "f"), b"xfs")
    tear_down(agent, att)


def test_default_fs_is_ext4(agent: Agent) -> None:
    cap = mount_cap("")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    assert top_mount(att.staging).fstype == "ext4"
    tear_down(agent, att)


def test_restage_never_reformats(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    data = pattern(64 * 1024, "keep")
    write_file(os.path.join(att.staging, "keep"), data)
    tear_down(agent, att)
    att2 = bring_up(agent, vol, cap)
    assert att2.target
    assert read_file(os.path.join(att2.target, "keep")) == data
    tear_down(agent, att2)


def test_stage_with_other_fs_type_keeps_data(agent: Agent) -> None:
    ext4 = mount_cap("ext4")
    vol = agent.create_volume(XFS_MIN, cap=ext4)
    att = bring_up(agent, vol, ext4, publish=False)
    data = pattern(4096, "fs-mismatch")
    write_file(os.path.join(att.staging, "data"), data)
    tear_down(agent, att)

    wrong_staging = agent.staging_dir()
    code, res = code_of(
        agent.node.NodeStageVolume,
        csi.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=wrong_staging,
            volume_capability=mount_cap("xfs"),
        ),
    )
    if code == SC.OK:
        agent.unstage(vol.volume_id, wrong_staging)
        pytest.fail("NodeStage as xfs of an ext4 volume must fail (it would reformat or lie)")
    assert code != SC.UNKNOWN, res.details()
    assert res.details(), "error needs a message"
    assert not is_mounted(wrong_staging), "a failed NodeStage left a mount behind"
    assert att.backing and agent.detached(att.backing), "a failed NodeStage left a loop device"

    att2 = bring_up(agent, vol, ext4, publish=False)
    assert top_mount(att2.staging).fstype == "ext4"
    assert read_file(os.path.join(att2.staging, "data")) == data
    tear_down(agent, att2)


def test_mount_flags_applied_at_stage(agent: Agent) -> None:
    cap = mount_cap("ext4", flags=["noatime"])
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    assert "noatime" in top_mount(att.staging).options
    tear_down(agent, att)


def test_mount_flag_the_filesystem_refuses_is_invalid_argument(agent: Agent) -> None:
    """The CO's flags are at fault, not the host: INVALID_ARGUMENT, the flag withheld, nothing left mounted."""
    cap = mount_cap("ext4", flags=["secretopt=Sentinel-5521"])
    vol = agent.create_volume(8 * MiB, cap=cap)
    staging = agent.staging_dir()
    err = expect_code(agent.node.NodeStageVolume,
                      csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging,
                                                 volume_capability=cap), SC.INVALID_ARGUMENT)
    assert "refused the mount options" in err.details() and "Sentinel-5521" not in err.details()
    assert not is_mounted(staging)


def test_readonly_publish(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    write_file(os.path.join(att.staging, "before"), b"hello")
    ro_target = agent.publish(vol.volume_id, cap, att.staging, readonly=True)
    assert "ro" in top_mount(ro_target).options
    assert read_file(os.path.join(ro_target, "before")) == b"hello"
    with pytest.raises(OSError) as info:
        write_file(os.path.join(ro_target, "must-fail"), b"x")
    assert info.value.errno == 30, f"expected EROFS, got {info.value!r}"  # EROFS
    # the staging mount itself stays writable
    write_file(os.path.join(att.staging, "after"), b"still rw")
    att.target = ro_target
    tear_down(agent, att)


def test_publish_without_staging_path(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    expect_code(
        agent.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, target_path=agent.path("mount"), volume_capability=cap
        ),
        SC.FAILED_PRECONDITION,
    )


def test_single_writer_second_target_refused(agent: Agent) -> None:
    cap = mount_cap("ext4", mode=AM.SINGLE_NODE_SINGLE_WRITER)
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    second = agent.path("mount")
    expect_code(
        agent.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=att.staging, target_path=second,
            volume_capability=cap,
        ),
        SC.FAILED_PRECONDITION,
    )
    assert not is_mounted(second)
    tear_down(agent, att)


def test_multi_writer_second_target_allowed(agent: Agent) -> None:
    cap = mount_cap("ext4", mode=AM.SINGLE_NODE_MULTI_WRITER)
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    second = agent.publish(vol.volume_id, cap, att.staging)
    write_file(os.path.join(att.target, "shared"), b"both see this")
    assert read_file(os.path.join(second, "shared")) == b"both see this"
    agent.unpublish(vol.volume_id, second)
    assert not os.path.lexists(second)
    assert is_mounted(att.target)
    tear_down(agent, att)


def test_republish_same_target(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    agent.publish(vol.volume_id, cap, att.staging, target=att.target)
    assert len(mounts_at(att.target)) == 1, "republish stacked a second mount"
    expect_code(
        agent.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=att.staging, target_path=att.target,
            volume_capability=cap, readonly=True,
        ),
        SC.ALREADY_EXISTS,
    )
    assert len(mounts_at(att.target)) == 1
    tear_down(agent, att)


def test_restage_with_other_capability(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    agent.stage(vol.volume_id, cap, staging=att.staging)
    assert len(mounts_at(att.staging)) == 1
    expect_code(
        agent.node.NodeStageVolume,
        csi.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=att.staging, volume_capability=block_cap()
        ),
        SC.ALREADY_EXISTS,
    )
    assert len(mounts_at(att.staging)) == 1
    tear_down(agent, att)


def test_stage_missing_volume(agent: Agent) -> None:
    expect_code(
        agent.node.NodeStageVolume,
        csi.NodeStageVolumeRequest(
            volume_id=unique("missing"), staging_target_path=agent.staging_dir(),
            volume_capability=mount_cap(),
        ),
        SC.NOT_FOUND,
    )


def test_publish_missing_volume(agent: Agent) -> None:
    expect_code(
        agent.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=unique("missing"), staging_target_path=agent.staging_dir(),
            target_path=agent.path("mount"), volume_capability=mount_cap(),
        ),
        SC.NOT_FOUND,
    )


# --------------------------------------------------------------------------
# block volumes
# --------------------------------------------------------------------------


def test_block_lifecycle(agent: Agent) -> None:
    cap = block_cap()
    size = 8 * MiB
    vol = agent.create_volume(size, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    target = agent.publish(vol.volume_id, cap, att.staging)
    att.target = target
    assert is_block_device(target)
    assert is_mounted(target)
    data = pattern(64 * 1024, "block")
    write_block(target, data, offset=MiB)
    assert read_block(target, len(data), offset=MiB) == data
    if agent.lvm is not None:  # the bytes are in the PV image, at the LV's offset + 1 MiB
        assert agent.lvm.read_lv(volume_lv_name(vol.volume_id), len(data), MiB) == data
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == size
    finally:
        os.close(fd)

    resp = agent.volume_stats(vol.volume_id, target)
    units = usage_by_unit(resp)
    assert Usage.BYTES in units
    assert units[Usage.BYTES].total == size
    assert Usage.INODES not in units

    tear_down(agent, att)
    # data survives a full detach / re-attach
    att2 = bring_up(agent, vol, cap)
    assert att2.target
    assert read_block(att2.target, len(data), offset=MiB) == data
    tear_down(agent, att2)


# --------------------------------------------------------------------------
# NodeGetVolumeStats
# --------------------------------------------------------------------------


def test_stats_mount(agent: Agent) -> None:
    cap = mount_cap("ext4")
    size = 16 * MiB
    vol = agent.create_volume(size, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    write_file(os.path.join(att.target, "used"), pattern(2 * MiB, "used"))
    for path in (att.target, att.staging):
        resp = agent.volume_stats(vol.volume_id, path, staging=att.staging)
        units = usage_by_unit(resp)
        b, i = units[Usage.BYTES], units[Usage.INODES]
        assert size // 2 <= b.total <= size, b
        assert 2 * MiB <= b.used <= b.total
        assert 0 < b.available <= b.total
        assert i.total > 0 and 0 < i.used <= i.total and i.available <= i.total
        assert resp.volume_condition.abnormal is False
    tear_down(agent, att)


def test_stats_wrong_path(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol_a = agent.create_volume(8 * MiB, cap=cap)
    vol_b = agent.create_volume(8 * MiB, cap=cap)
    att_a = bring_up(agent, vol_a, cap)
    att_b = bring_up(agent, vol_b, cap)
    assert att_a.target and att_b.target
    expect_code(agent.node.NodeGetVolumeStats,
                csi.NodeGetVolumeStatsRequest(volume_id=vol_a.volume_id,
                                              volume_path=att_b.target),
                SC.NOT_FOUND)
    not_a_mount = agent.path("nothing")
    os.makedirs(not_a_mount)
    expect_code(agent.node.NodeGetVolumeStats,
                csi.NodeGetVolumeStatsRequest(volume_id=vol_a.volume_id,
                                              volume_path=not_a_mount),
                SC.NOT_FOUND)
    expect_code(agent.node.NodeGetVolumeStats,
                csi.NodeGetVolumeStatsRequest(volume_id=vol_a.volume_id,
                                              volume_path=agent.path("does-not-exist")),
                SC.NOT_FOUND)
    expect_code(agent.node.NodeGetVolumeStats,
                csi.NodeGetVolumeStatsRequest(volume_id=unique("missing"),
                                              volume_path=att_a.target),
                SC.NOT_FOUND)
    tear_down(agent, att_a)
    tear_down(agent, att_b)


def test_stats_abnormal_when_mount_disappears(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    # pull the publication away behind the agent's back (a mount it made for us)
    subprocess.run(["umount", "-l", att.target], check=True)
    assert not is_mounted(att.target)
    resp = agent.volume_stats(vol.volume_id, att.target, staging=att.staging)
    assert resp.volume_condition.abnormal is True
    assert resp.volume_condition.message
    tear_down(agent, att)


# --------------------------------------------------------------------------
# ephemeral inline volumes
# --------------------------------------------------------------------------


def test_ephemeral_inline_volume(agent: Agent) -> None:
    loops_before = agent.pool_loops()
    files_before = agent.pool_objects()
    volume_id = unique("csi-eph")
    target = agent.path("mount")
    agent.node.NodePublishVolume(
        csi.NodePublishVolumeRequest(
            volume_id=volume_id, target_path=target, volume_capability=mount_cap("ext4"),
            volume_context={EPHEMERAL_KEY: "true", "size": "64Mi",
                            "csi.storage.k8s.io/pod.name": "p"},
        )
    )
    assert top_mount(target).fstype == "ext4"
    assert len(agent.pool_loops()) == len(loops_before) + 1
    total = fs_total_bytes(target)
    assert 32 * MiB <= total <= 64 * MiB
    write_file(os.path.join(target, "tmp"), b"ephemeral")
    units = usage_by_unit(agent.volume_stats(volume_id, target))
    assert 32 * MiB <= units[Usage.BYTES].total <= 64 * MiB

    agent.unpublish(volume_id, target)
    assert not os.path.lexists(target)
    assert retry_until(lambda: agent.pool_loops() == loops_before), (loops_before, agent.pool_loops())
    assert agent.pool_objects() == files_before, "the ephemeral volume left files (LVs) in the pool"
    assert volume_id not in {e.volume.volume_id for e in agent.list_all_volumes()}
    # the volume is gone with its last publication: a second unpublish finds no such volume (spec: NOT_FOUND)
    expect_code(agent.node.NodeUnpublishVolume,
                csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target), SC.NOT_FOUND)


def test_ephemeral_republish_is_idempotent(agent: Agent) -> None:
    volume_id = unique("csi-eph")
    target = agent.path("mount")
    req = csi.NodePublishVolumeRequest(
        volume_id=volume_id, target_path=target, volume_capability=mount_cap("ext4"),
        volume_context={EPHEMERAL_KEY: "true", "size": "16Mi"},
    )
    agent.node.NodePublishVolume(req)
    write_file(os.path.join(target, "keep"), b"same volume")
    agent.node.NodePublishVolume(req)
    assert len(mounts_at(target)) == 1
    assert read_file(os.path.join(target, "keep")) == b"same volume"
    agent.unpublish(volume_id, target)
    assert not os.path.lexists(target)


@pytest.mark.parametrize(
    ("size", "codes"),
    [("64Zi", (SC.INVALID_ARGUMENT, SC.OUT_OF_RANGE)), ("lots", (SC.INVALID_ARGUMENT,)),
     ("-5Mi", (SC.INVALID_ARGUMENT, SC.OUT_OF_RANGE))],
)
def test_ephemeral_bad_size_leaves_nothing(agent: Agent, size: str, codes: tuple[grpc.StatusCode, ...]) -> None:
    loops_before, files_before = agent.pool_loops(), agent.pool_objects()
    target = agent.path("mount")
    expect_code(
        agent.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=unique("csi-eph"), target_path=target, volume_capability=mount_cap("ext4"),
            volume_context={EPHEMERAL_KEY: "true", "size": size},
        ),
        *codes,
    )
    assert not is_mounted(target)
    assert agent.pool_loops() == loops_before
    assert agent.pool_objects() == files_before


def test_ephemeral_over_capacity_leaves_nothing(agent_factory: Any) -> None:
    a = agent_factory(capacity_limit=32 * MiB)
    loops_before, files_before = a.pool_loops(), a.pool_objects()
    target = a.path("mount")
    expect_code(
        a.node.NodePublishVolume,
        csi.NodePublishVolumeRequest(
            volume_id=unique("csi-eph"), target_path=target, volume_capability=mount_cap("ext4"),
            volume_context={EPHEMERAL_KEY: "true", "size": "64Mi"},
        ),
        SC.RESOURCE_EXHAUSTED, SC.OUT_OF_RANGE,
    )
    assert not is_mounted(target)
    assert a.pool_loops() == loops_before
    assert a.pool_objects() == files_before


# --------------------------------------------------------------------------
# staging: the helper's sanity check, concurrent stages
# --------------------------------------------------------------------------


def test_stage_tracking_detects_one_device(agent: Agent) -> None:
    """Sanity check of the helper other tests rely on: one stage, one new loop device."""
    cap = mount_cap("ext4")
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    if agent.lvm is None:
        assert att.image and att.image.startswith(agent.pool + "/")
    else:  # stage_tracking_image checked offset and size against the LV
        assert att.image is None and att.backing.startswith(f"{agent.lvm.device}@")
    assert agent.loops_for(att.backing) == [att.device]
    agent.unstage(vol.volume_id, att.staging)
    assert agent.detached(att.backing)


def test_block_stage_makes_no_filesystem(agent: Agent) -> None:
    cap = block_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    assert att.device
    assert not is_mounted(att.staging), "NodeStage of a BLOCK volume must only attach"
    probe = subprocess.run(["blkid", "-p", att.device], capture_output=True, text=True)
    assert probe.returncode == 2, f"a filesystem appeared on a block volume: {probe.stdout}"
    tear_down(agent, att)


def test_parallel_stage_distinct_devices(agent: Agent) -> None:
    """Concurrent NodeStage calls must not race for the same loop device."""
    cap = mount_cap("ext4")
    vols = [agent.create_volume(8 * MiB, cap=cap) for _ in range(6)]
    staging = {v.volume_id: agent.staging_dir() for v in vols}
    before = agent.pool_loops()
    errors: list[str] = []

    def stage(v: Any) -> None:
        code, res = code_of(agent.node.NodeStageVolume, csi.NodeStageVolumeRequest(
            volume_id=v.volume_id, staging_target_path=staging[v.volume_id],
            volume_capability=cap, volume_context=v.volume_context,
        ))
        if code != SC.OK:
            errors.append(f"{v.volume_id}: {code.name} {res.details()}")

    threads = [threading.Thread(target=stage, args=(v,)) for v in vols]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    new = {d: b for d, b in agent.pool_loops().items() if d not in before}
    assert len(new) == len(vols), f"expected {len(vols)} loop devices, got {new}"
    assert len(set(new.values())) == len(vols), "two loop devices back the same image (LV)"
    for v in vols:
        write_file(os.path.join(staging[v.volume_id], "owner"), v.volume_id.encode())
    for v in vols:
        agent.unstage(v.volume_id, staging[v.volume_id])
    assert retry_until(lambda: agent.pool_loops() == before), (before, agent.pool_loops())
    # every volume still holds its own marker
    for v in vols:
        att = bring_up(agent, v, cap, publish=False)
        assert read_file(os.path.join(att.staging, "owner")) == v.volume_id.encode()
        tear_down(agent, att)
