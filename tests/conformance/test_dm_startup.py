"""Start-up takes down the device-mapper activations a killed agent left, and only those (issue 10).

Real-kernel kinds only (``--pool-kind lvm-dm`` / ``lvmthin``: the VM tier runs
this file inside its guest, tests/vm/test_vm_chaos.py).  With dm activation an
LV is active while a copy reads or writes it, while NodeStage uses it, and
from its lvcreate until something deactivates it.  A kill leaves those
activations; start-up (agent/basalt_agent/recovery.py) deactivates every LV of
the pool that no record wants (staged, published), never an LV that is not the
pool's, and so releases what kept a thin pool busy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from basalt_csi_testlib import (
    LVM_DM_KIND,
    LVMTHIN_KIND,
    THIN_POOL_NAME,
    Agent,
    MiB,
    csi,
    mount_cap,
    pattern,
    unique,
    volume_lv_name,
)
from crashpoints import CrashPoints
from test_crash import crashed, restart

AgentFactory = Callable[..., Agent]
CAP = mount_cap("ext4")


def only(kind: str, pool_kind: str) -> None:
    if pool_kind != kind:
        pytest.skip(f"device-mapper start-up sweep: this case runs with --pool-kind {kind}")


def active_lvs(agent: Agent) -> set[str]:
    assert agent.lvm is not None
    rows = agent.lvm.report("lvs", "lv", "lv_name,lv_active", agent.lvm.vg)
    return {row["lv_name"] for row in rows if row["lv_active"] == "active"}


@pytest.fixture
def lvchange_crash(fresh_agent_factory: AgentFactory, pool_kind: str) -> Iterator[tuple[Agent, CrashPoints]]:
    """lvm-dm: a started agent whose lvchange can be armed to kill it (skips before making anything)."""
    only(LVM_DM_KIND, pool_kind)
    agent = fresh_agent_factory(launch=False)
    points = CrashPoints(agent.root).wrap("lvchange")
    agent.extra_env.update(points.env())
    agent.start()
    yield agent, points


def test_killed_during_a_copy_start_up_deactivates_what_the_copy_activated(
        lvchange_crash: tuple[Agent, CrashPoints]) -> None:
    """lvm-dm: killed just after a copy snapshot activated its idle origin (the new snapshot LV active too, as
    lvcreate leaves it): start-up deactivates both, keeps the foreign LVs it did not activate active, and the
    retried CreateSnapshot completes with the origin's bytes."""
    agent, points = lvchange_crash
    assert agent.lvm is not None
    vg = agent.lvm
    vol = agent.create_volume(16 * MiB, cap=CAP)
    origin = volume_lv_name(vol.volume_id)
    data = pattern(2 * MiB, "dm-copy-origin")
    vg.write_lv(origin, data)
    vg.run("lvchange", "-an", f"{vg.vg}/{origin}")  # idle: the copy must activate it
    for foreign in vg.FOREIGN_LVS:
        vg.run("lvchange", "-ay", f"{vg.vg}/{foreign}")
    before = set(vg.lvs())
    points.arm("lvchange", "after", arg=f"{vg.vg}/{origin}")
    request = csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=unique("snap"))
    crashed(agent.ctl.CreateSnapshot, request)
    argv = points.fired("lvchange")["argv"]
    assert isinstance(argv, list) and "ey" in argv, f"the crash point fired on another lvchange: {argv}"
    [snapshot_lv] = set(vg.lvs()) - before
    left = active_lvs(agent)
    assert {origin, snapshot_lv} <= left, f"the kill left no activation to sweep: {left}"
    points.disarm("lvchange")
    restart(agent)
    now = active_lvs(agent)
    assert not {origin, snapshot_lv} & now, f"start-up left the copy's activations: {now}"
    assert set(vg.FOREIGN_LVS) <= now, f"start-up deactivated LVs that are not the pool's: {now}"
    assert "(deactivated)" in agent.log()
    snap = agent.ctl.CreateSnapshot(request).snapshot
    assert snap.ready_to_use
    assert vg.read_lv(snapshot_lv, len(data)) == data
    assert not {origin, snapshot_lv} & active_lvs(agent), "the retried copy left its activations"
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    assert set(vg.FOREIGN_LVS) <= active_lvs(agent)


def test_start_up_releases_the_thin_pool_and_keeps_staged_volumes(
        fresh_agent_factory: AgentFactory, pool_kind: str) -> None:
    """lvmthin: thin LVs left active (lvcreate, a killed copy or NodeStage) keep the thin pool busy: after a
    kill, start-up deactivates those no record wants, keeps the staged one, and then the pool can be taken
    down once that one is unstaged."""
    only(LVMTHIN_KIND, pool_kind)
    agent = fresh_agent_factory()
    assert agent.lvm is not None
    vg = agent.lvm
    staged, idle = (agent.create_volume(16 * MiB, cap=CAP) for _ in range(2))
    staging = agent.stage(staged.volume_id, CAP)
    left = active_lvs(agent)
    assert volume_lv_name(idle.volume_id) in left, f"nothing for start-up to sweep: {left}"
    restart(agent)
    now = active_lvs(agent)
    assert volume_lv_name(idle.volume_id) not in now, f"start-up left an idle thin LV active: {now}"
    assert volume_lv_name(staged.volume_id) in now, f"start-up deactivated a staged volume: {now}"
    agent.unstage(staged.volume_id, staging)
    busy = vg.run("lvchange", "-an", f"{vg.vg}/{THIN_POOL_NAME}", check=False)
    assert busy.returncode == 0, f"the thin pool is still busy: {busy.stderr}"
    assert not active_lvs(agent) - set(vg.FOREIGN_LVS), active_lvs(agent)
    for volume in (staged, idle):
        agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume.volume_id))
