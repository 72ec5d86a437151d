"""Node calls act only on what their records say is the volume's, and answer with the spec's codes.

Each test sets up real mounts through the agent, then sends the call a CO, a
confused CO or an attacker could send, and checks both the code and that
nothing not the volume's was unmounted or removed.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import grpc
from basalt_csi_testlib import (
    EPHEMERAL_KEY,
    SC,
    XFS_MIN,
    Agent,
    MiB,
    block_cap,
    bring_up,
    crange,
    csi,
    expect_code,
    is_mounted,
    mount_cap,
    mounts_under,
    read_file,
    tear_down,
    top_mount,
    unique,
    write_file,
)


def unpublish(volume_id: str, target: str) -> Any:
    return csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)


def unstage(volume_id: str, path: str) -> Any:
    return csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=path)


def test_unpublish_with_unknown_or_other_id_touches_nothing(agent: Agent) -> None:
    cap = mount_cap()
    vol_a, vol_b = agent.create_volume(8 * MiB, cap=cap), agent.create_volume(8 * MiB, cap=cap)
    att_a, att_b = bring_up(agent, vol_a, cap), bring_up(agent, vol_b, cap, publish=False)
    assert att_a.target
    write_file(os.path.join(att_a.target, "keep"), b"a's data")

    err = expect_code(agent.node.NodeUnpublishVolume, unpublish(unique("missing"), att_a.target),
                      SC.NOT_FOUND)
    assert "does not exist" in err.details()
    # a known volume not published there: nothing to do (idempotent), and nothing done
    agent.node.NodeUnpublishVolume(unpublish(vol_b.volume_id, att_a.target))
    assert is_mounted(att_a.target) and read_file(os.path.join(att_a.target, "keep")) == b"a's data"

    # an unknown id is NOT_FOUND whatever the path, even one that is malformed
    for path in ("relative/path", "/a/../b", ""):
        code = SC.INVALID_ARGUMENT if not path else SC.NOT_FOUND
        expect_code(agent.node.NodeUnpublishVolume, unpublish(unique("missing"), path), code)

    # files, empty directories and symlinks at a path are not a known volume's to delete
    plain = agent.path("plain-file")
    write_file(plain, b"not a mount")
    empty = agent.path("empty-dir")
    os.makedirs(empty)
    for path in (plain, empty):
        agent.node.NodeUnpublishVolume(unpublish(vol_b.volume_id, path))
        expect_code(agent.node.NodeUnpublishVolume, unpublish(unique("missing"), path), SC.NOT_FOUND)
        assert os.path.lexists(path), f"{path} was removed by a call that does not own it"
    tear_down(agent, att_a)
    tear_down(agent, att_b)


def test_unpublish_through_a_symlink_is_refused(agent: Agent) -> None:
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    link = agent.path("link")
    os.symlink(att.target, link)
    parent_link = agent.path("parent-link")
    os.symlink(os.path.dirname(att.target), parent_link)
    for path in (link, os.path.join(parent_link, os.path.basename(att.target))):
        err = expect_code(agent.node.NodeUnpublishVolume, unpublish(vol.volume_id, path),
                          SC.INVALID_ARGUMENT)
        assert "symlink" in err.details()
        expect_code(agent.node.NodeUnpublishVolume, unpublish(unique("missing"), path), SC.NOT_FOUND)
        assert is_mounted(att.target)
    assert os.path.islink(link)
    tear_down(agent, att)


def test_unstage_with_unknown_or_other_id_touches_nothing(agent: Agent) -> None:
    cap = mount_cap()
    vol_a, vol_b = agent.create_volume(8 * MiB, cap=cap), agent.create_volume(8 * MiB, cap=cap)
    att_a, att_b = bring_up(agent, vol_a, cap, publish=False), bring_up(agent, vol_b, cap, publish=False)
    expect_code(agent.node.NodeUnstageVolume, unstage(unique("missing"), att_a.staging), SC.NOT_FOUND)
    expect_code(agent.node.NodeUnstageVolume, unstage(unique("missing"), "not/absolute"), SC.NOT_FOUND)
    # vol_b is staged elsewhere: not staged at a's path, so OK, and a's mount stays
    agent.node.NodeUnstageVolume(unstage(vol_b.volume_id, att_a.staging))
    assert top_mount(att_a.staging).fstype == "ext4"
    assert is_mounted(att_b.staging)
    link = agent.path("staging-link")
    os.symlink(att_a.staging, link)
    expect_code(agent.node.NodeUnstageVolume, unstage(vol_a.volume_id, link), SC.INVALID_ARGUMENT)
    assert is_mounted(att_a.staging)
    tear_down(agent, att_a)
    tear_down(agent, att_b)


def test_unpublish_removes_its_own_unrecorded_mount(agent: Agent) -> None:
    """A publish interrupted between its bind and its record leaves a mount only the device says is ours."""
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    target = agent.path("unrecorded")
    os.makedirs(target)
    subprocess.run(["mount", "--bind", att.staging, target], check=True)
    agent.node.NodeUnpublishVolume(unpublish(vol.volume_id, target))
    assert not is_mounted(target) and not os.path.lexists(target)
    tear_down(agent, att)


def test_unpublish_leaves_another_mount_stacked_on_its_target(agent: Agent) -> None:
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    foreign = agent.path("foreign")
    os.makedirs(foreign)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "basalt-foreign", foreign], check=True)
    try:
        subprocess.run(["mount", "--bind", foreign, att.target], check=True)
        err = expect_code(agent.node.NodeUnpublishVolume, unpublish(vol.volume_id, att.target),
                          SC.FAILED_PRECONDITION)
        assert "not this volume's" in err.details()
        assert top_mount(att.target).fstype == "tmpfs"
        subprocess.run(["umount", att.target], check=True)
    finally:
        subprocess.run(["umount", foreign], check=True)
    tear_down(agent, att)


def test_two_ids_unpublishing_one_path_at_once(agent: Agent) -> None:
    cap = mount_cap()
    vol_a, vol_b = agent.create_volume(8 * MiB, cap=cap), agent.create_volume(8 * MiB, cap=cap)
    att_a, att_b = bring_up(agent, vol_a, cap), bring_up(agent, vol_b, cap)
    assert att_a.target and att_b.target
    codes: dict[str, grpc.StatusCode] = {}
    start = threading.Barrier(2)

    def call(volume_id: str) -> None:
        start.wait()
        try:
            agent.node.NodeUnpublishVolume(unpublish(volume_id, att_a.target or ""))
            codes[volume_id] = SC.OK
        except grpc.RpcError as error:
            codes[volume_id] = error.code()

    threads = [threading.Thread(target=call, args=(v.volume_id,)) for v in (vol_a, vol_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == {vol_a.volume_id: SC.OK, vol_b.volume_id: SC.OK}
    assert not os.path.lexists(att_a.target)
    assert is_mounted(att_b.target), "b's own publication was touched by an unpublish of a's path"
    att_a.target = None
    tear_down(agent, att_a)
    tear_down(agent, att_b)


def test_stage_and_publish_through_symlinks_are_refused(agent: Agent) -> None:
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    elsewhere = agent.staging_dir()
    link = agent.path("staging-link")
    os.symlink(elsewhere, link)
    err = expect_code(agent.node.NodeStageVolume,
                      csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=link,
                                                 volume_capability=cap), SC.INVALID_ARGUMENT)
    assert "symlink" in err.details()
    assert not is_mounted(elsewhere)
    att = bring_up(agent, vol, cap, publish=False)
    real_parent = agent.path("real-parent")
    os.makedirs(real_parent)
    parent_link = agent.path("parent-link")
    os.symlink(real_parent, parent_link)
    expect_code(agent.node.NodePublishVolume,
                csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=att.staging,
                                             target_path=os.path.join(parent_link, "mount"),
                                             volume_capability=cap), SC.INVALID_ARGUMENT)
    assert os.listdir(real_parent) == []
    tear_down(agent, att)


def test_stage_and_publish_onto_the_wrong_kind_of_file(agent: Agent) -> None:
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    loops = agent.pool_loops()
    plain = agent.path("plain")
    write_file(plain, b"")
    err = expect_code(agent.node.NodeStageVolume,
                      csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=plain,
                                                 volume_capability=cap), SC.FAILED_PRECONDITION)
    assert "not a directory" in err.details()
    assert agent.pool_loops() == loops, "a refused stage left its device attached"
    under_file = os.path.join(plain, "sub")
    expect_code(agent.node.NodeStageVolume,
                csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=under_file,
                                           volume_capability=cap), SC.FAILED_PRECONDITION)
    att = bring_up(agent, vol, cap, publish=False)
    err = expect_code(agent.node.NodePublishVolume,
                      csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=att.staging,
                                                   target_path=plain, volume_capability=cap),
                      SC.FAILED_PRECONDITION)
    assert "not a directory" in err.details()
    tear_down(agent, att)

    bcap = block_cap()
    bvol = agent.create_volume(8 * MiB, cap=bcap)
    batt = bring_up(agent, bvol, bcap, publish=False)
    directory = agent.path("a-directory")
    os.makedirs(directory)
    err = expect_code(agent.node.NodePublishVolume,
                      csi.NodePublishVolumeRequest(volume_id=bvol.volume_id, staging_target_path=batt.staging,
                                                   target_path=directory, volume_capability=bcap),
                      SC.FAILED_PRECONDITION)
    assert "not a regular file" in err.details()
    assert not is_mounted(directory)
    tear_down(agent, batt)


def test_xfs_on_a_volume_below_its_minimum(agent: Agent) -> None:
    ext4 = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=ext4)
    loops = agent.pool_loops()
    staging = agent.staging_dir()
    err = expect_code(agent.node.NodeStageVolume,
                      csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging,
                                                 volume_capability=mount_cap("xfs")), SC.FAILED_PRECONDITION)
    assert "too small for xfs" in err.details()
    assert not is_mounted(staging) and agent.pool_loops() == loops
    # CreateVolume knows it too when the capability names xfs: no size up to limit_bytes can hold it
    err = expect_code(agent.ctl.CreateVolume,
                      csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap("xfs")],
                                              capacity_range=crange(0, XFS_MIN - MiB)), SC.OUT_OF_RANGE)
    assert str(XFS_MIN) in err.details()


def test_stats_and_expand_find_the_volume_first(agent: Agent) -> None:
    cap = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    for path in ("some/path", "/x/../y", att.target):
        expect_code(agent.node.NodeGetVolumeStats,
                    csi.NodeGetVolumeStatsRequest(volume_id=unique("missing"), volume_path=path), SC.NOT_FOUND)
        expect_code(agent.node.NodeExpandVolume,
                    csi.NodeExpandVolumeRequest(volume_id=unique("missing"), volume_path=path), SC.NOT_FOUND)
    for path in ("some/path", os.path.relpath(att.target or "", "/"), "/x/../y"):
        expect_code(agent.node.NodeGetVolumeStats,
                    csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=path), SC.NOT_FOUND)
        expect_code(agent.node.NodeExpandVolume,
                    csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=path), SC.NOT_FOUND)
    expect_code(agent.node.NodeGetVolumeStats,
                csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=""), SC.INVALID_ARGUMENT)
    tear_down(agent, att)


def test_refused_ephemeral_publish_leaves_nothing(agent: Agent) -> None:
    loops, objects = agent.pool_loops(), agent.pool_objects()
    state_mounts = {m.mount_point for m in mounts_under(agent.state_dir)}
    plain = agent.path("plain")
    write_file(plain, b"")
    volume_id = unique("csi-eph")
    expect_code(agent.node.NodePublishVolume,
                csi.NodePublishVolumeRequest(volume_id=volume_id, target_path=plain,
                                             volume_capability=mount_cap(),
                                             volume_context={EPHEMERAL_KEY: "true", "size": "16Mi"}),
                SC.FAILED_PRECONDITION)
    assert {m.mount_point for m in mounts_under(agent.state_dir)} == state_mounts
    assert agent.pool_loops() == loops
    assert agent.pool_objects() == objects
    expect_code(agent.node.NodeUnpublishVolume, unpublish(volume_id, plain), SC.NOT_FOUND)
    assert os.path.isfile(plain)
