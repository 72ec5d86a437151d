"""Node service: volume expansion, online and offline, of filesystems and block volumes (ControllerExpandVolume,
then NodeExpandVolume, as a CO calls them)."""

from __future__ import annotations

import os
from typing import Any

import grpc
from basalt_csi_testlib import (
    SC,
    XFS_MIN,
    Agent,
    Attached,
    MiB,
    block_cap,
    bring_up,
    code_of,
    crange,
    csi,
    expect_code,
    fs_total_bytes,
    mount_cap,
    pattern,
    read_file,
    tear_down,
    unique,
    write_file,
)


def ctl_expand(agent: Agent, volume_id: str, size: int, cap: Any) -> Any:
    return agent.ctl.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=crange(size), volume_capability=cap
        )
    )


def node_expand(agent: Agent, att: Attached, size: int, cap: Any) -> Any:
    return agent.node.NodeExpandVolume(
        csi.NodeExpandVolumeRequest(
            volume_id=att.volume_id,
            volume_path=att.target or att.staging,
            staging_target_path=att.staging,
            capacity_range=crange(size),
            volume_capability=cap,
        )
    )


# --------------------------------------------------------------------------
# expansion
# --------------------------------------------------------------------------


def test_xfs_online_expand(agent: Agent) -> None:
    cap = mount_cap("xfs")
    vol = agent.create_volume(XFS_MIN, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    before = fs_total_bytes(att.target)
    new_size = XFS_MIN + 100 * MiB
    resp = ctl_expand(agent, vol.volume_id, new_size, cap)
    assert resp.capacity_bytes == new_size and resp.node_expansion_required
    nresp = node_expand(agent, att, new_size, cap)
    assert nresp.capacity_bytes in (0, new_size)
    after = fs_total_bytes(att.target)
    assert after >= before + 90 * MiB, (before, after)
    tear_down(agent, att)


def test_ext4_online_expand(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    data = pattern(4096, "ext4-online")
    write_file(os.path.join(att.target, "d"), data)
    before = fs_total_bytes(att.target)
    ctl_expand(agent, vol.volume_id, 48 * MiB, cap)
    code, res = code_of(agent.node.NodeExpandVolume, csi.NodeExpandVolumeRequest(
        volume_id=vol.volume_id, volume_path=att.target, staging_target_path=att.staging,
        capacity_range=crange(48 * MiB), volume_capability=cap,
    ))
    if code == SC.OK:
        assert fs_total_bytes(att.target) >= before + 24 * MiB
    else:
        # resize2fs online needs CAP_SYS_RESOURCE, which this VM lacks
        assert code != SC.UNKNOWN, res.details()
        msg = (res.details() or "").lower()
        assert any(w in msg for w in ("resize", "online", "grow", "expand")), res.details()
    assert read_file(os.path.join(att.target, "d")) == data
    tear_down(agent, att)
    # offline path: the next NodeStage grows the filesystem
    att2 = bring_up(agent, vol, cap)
    assert att2.target
    assert fs_total_bytes(att2.target) >= before + 24 * MiB
    assert read_file(os.path.join(att2.target, "d")) == data
    tear_down(agent, att2)


def test_ext4_offline_expand_grown_at_stage(agent: Agent) -> None:
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    data = pattern(8192, "offline")
    write_file(os.path.join(att.staging, "d"), data)
    before = fs_total_bytes(att.staging)
    tear_down(agent, att)
    resp = ctl_expand(agent, vol.volume_id, 64 * MiB, cap)
    assert resp.capacity_bytes == 64 * MiB
    att2 = bring_up(agent, vol, cap, publish=False)
    after = fs_total_bytes(att2.staging)
    assert after >= before + 40 * MiB, (before, after)
    assert read_file(os.path.join(att2.staging, "d")) == data
    tear_down(agent, att2)


def test_block_expand(agent: Agent) -> None:
    cap = block_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap)
    assert att.target
    ctl_expand(agent, vol.volume_id, 16 * MiB, cap)
    code, res = code_of(agent.node.NodeExpandVolume, csi.NodeExpandVolumeRequest(
        volume_id=vol.volume_id, volume_path=att.target, staging_target_path=att.staging,
        capacity_range=crange(16 * MiB), volume_capability=cap,
    ))
    assert code == SC.OK, res.details() if isinstance(res, grpc.RpcError) else res
    fd = os.open(att.target, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == 16 * MiB
    finally:
        os.close(fd)
    tear_down(agent, att)


def test_node_expand_missing_volume(agent: Agent) -> None:
    expect_code(
        agent.node.NodeExpandVolume,
        csi.NodeExpandVolumeRequest(volume_id=unique("missing"), volume_path=agent.path("x"),
                                    capacity_range=crange(16 * MiB)),
        SC.NOT_FOUND,
    )
