"""CreateVolume on the lvm pool killed around its one lvcreate (docs/crash-safety.md), with loop activation
(``--pool-kind lvm-loop``) and with device-mapper (``lvm-dm``, the VM tier: that lvcreate maps the LV too).

Under LVM's own lock on the VG the agent zeroes the ends of the extents it chose, on the PV, then runs one
``lvcreate --nolocking`` there carrying the ready record (plugins/module_utils/lvm_placing.py).  A kill
before that lvcreate leaves zeroed free extents; right after it, a ready LV whose ends are zero.  Either way
the retried call answers the volume, start-up leaves nothing half made, the VG's lock is free again (the
LVM commands of the test run), and LVs Basalt did not make keep their data.

The agent answers CreateVolume as soon as lvcreate says the LV is created, and DeleteVolume as soon as
lvremove says the LV is removed, before either tool's exit (the VG lock's end is then the tool's: with
device-mapper, LVM still waits for udev and writes its backup under it): ``answered`` kills the agent after
that answer, when the tool has ended.  A thin LV's lvcreate and lvremove likewise (``lvmthin``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from basalt_csi_testlib import (
    LVM_DM_KIND,
    LVM_KINDS,
    LVM_LOOP_KIND,
    LVMTHIN_KIND,
    Agent,
    MiB,
    csi,
    iter_log_records,
    mount_cap,
    read_file,
    stage_tracking_image,
    unique,
    volume_lv_name,
    write_file,
)
from crashpoints import CrashPoints
from test_crash import assert_nothing_left, crashed, delete, restart

AgentFactory = Callable[..., Agent]
MANAGED_TAG = "basalt.managed"
READY_TAG = "basalt.state=ready"


@pytest.fixture
def lvm_crashable(fresh_agent_factory: AgentFactory) -> Iterator[tuple[Agent, CrashPoints]]:
    """A started lvm-loop or lvm-dm agent whose lvcreate can be armed to kill it."""
    agent = fresh_agent_factory(launch=False)
    if agent.kind not in (LVM_LOOP_KIND, LVM_DM_KIND):
        pytest.skip("the lvm pool's one placed lvcreate (thick LVs, loop or device-mapper activation)")
    points = CrashPoints(agent.root).wrap("lvcreate")
    agent.extra_env.update(points.env())
    agent.start()
    yield agent, points


@pytest.mark.parametrize("when", ["before", "after", "answered"])
def test_killed_around_the_one_lvcreate_of_a_blank_volume(
        lvm_crashable: tuple[Agent, CrashPoints], when: str) -> None:
    agent, points = lvm_crashable
    assert agent.lvm is not None
    cap = mount_cap("ext4")
    # Old data where the new volume goes: a volume filled, then deleted (the first fit takes its extents again).
    old = agent.create_volume(16 * MiB, cap=cap)
    old_lv = volume_lv_name(old.volume_id)
    offset, length = agent.lvm.lv_location(old_lv)
    agent.lvm.write_lv(old_lv, b"\xaa" * length)
    delete(agent, old.volume_id)
    request = csi.CreateVolumeRequest(name=unique("blank"), volume_capabilities=[cap],
                                      capacity_range=csi.CapacityRange(required_bytes=16 * MiB))
    points.arm("lvcreate", when, arg="--nolocking")  # the placed one, under the pool's VG lock
    if when == "answered":
        answered = agent.ctl.CreateVolume(request).volume  # before lvcreate's exit
        points.go("lvcreate")
    else:
        crashed(agent.ctl.CreateVolume, request)
    assert points.fired("lvcreate")["outcome"] == when
    ours = {name: row for name, row in agent.lvm.lvs().items() if MANAGED_TAG in row["lv_tags"].split(",")}
    with open(agent.lvm.device or "", "rb") as pv:  # the extents the old volume had: their ends zeroed
        pv.seek(offset)
        extents = pv.read(length)
    assert extents[:MiB] == extents[-MiB:] == bytes(MiB) and extents[MiB:-MiB] == b"\xaa" * (length - 2 * MiB)
    if when == "before":
        assert ours == {}, "no LV before lvcreate ran"
    else:
        assert len(ours) == 1 and READY_TAG in next(iter(ours.values()))["lv_tags"].split(",")
        assert agent.lvm.lv_location(next(iter(ours))) == (offset, length)
    restart(agent)
    points.disarm("lvcreate")
    vol = agent.ctl.CreateVolume(request).volume  # the retry: made now, or found made and ready
    if when == "answered":
        assert vol == answered
    lv = volume_lv_name(vol.volume_id)
    assert agent.lvm.lv_location(lv) == (offset, length)
    assert READY_TAG in agent.lvm.lvs()[lv]["lv_tags"].split(",")
    # blank at both ends: formatted, not refused (loop: on the loop device at the LV's offset of the PV)
    staging = (stage_tracking_image(agent, vol.volume_id, cap).staging if agent.kind == LVM_LOOP_KIND
               else agent.stage(vol.volume_id, cap))
    write_file(os.path.join(staging, "data"), b"new volume")
    assert read_file(os.path.join(staging, "data")) == b"new volume"
    agent.unstage(vol.volume_id, staging)
    assert agent.lvm.foreign_problems() == []
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


def test_killed_after_deletevolume_answered_before_lvremoves_exit(
        fresh_agent_factory: AgentFactory) -> None:
    """DeleteVolume answers once lvremove says the LV is removed; the agent killed then (the tool ended
    meanwhile) restarts with the volume gone, and the retry answers it deleted."""
    agent = fresh_agent_factory(launch=False)
    if agent.kind not in LVM_KINDS:
        pytest.skip("the LVM pools' lvremove")
    points = CrashPoints(agent.root).wrap("lvremove")
    agent.extra_env.update(points.env())
    agent.start()
    assert agent.lvm is not None
    vol = agent.create_volume(16 * MiB, cap=mount_cap("ext4"))
    lv = volume_lv_name(vol.volume_id)
    points.arm("lvremove", "answered", arg=f"{agent.lvm.vg}/{lv}")
    delete(agent, vol.volume_id)  # answered before lvremove's exit
    points.go("lvremove")
    assert points.fired("lvremove")["outcome"] == "answered"
    assert lv not in agent.lvm.lvs()
    restart(agent)
    points.disarm("lvremove")
    delete(agent, vol.volume_id)
    assert agent.lvm.foreign_problems() == []
    assert_nothing_left(agent)


def test_killed_after_a_thin_createvolume_answered_before_lvcreates_exit(
        fresh_agent_factory: AgentFactory) -> None:
    """lvmthin: CreateVolume answers once lvcreate says the thin LV is created (both its commits done); the agent
    killed then (the tool ended meanwhile: its udev wait, backup, teardown) restarts with the LV there and ready,
    and the retry answers the same volume, which stages and deletes."""
    agent = fresh_agent_factory(launch=False)
    if agent.kind != LVMTHIN_KIND:
        pytest.skip("the thin pool's lvcreate")
    points = CrashPoints(agent.root).wrap("lvcreate")
    agent.extra_env.update(points.env())
    agent.start()
    assert agent.lvm is not None
    cap = mount_cap("ext4")
    request = csi.CreateVolumeRequest(name=unique("thin"), volume_capabilities=[cap],
                                      capacity_range=csi.CapacityRange(required_bytes=16 * MiB))
    points.arm("lvcreate", "answered", arg="--thinpool")
    answered = agent.ctl.CreateVolume(request).volume  # before lvcreate's exit
    points.go("lvcreate")
    assert points.fired("lvcreate")["outcome"] == "answered"
    lv = volume_lv_name(answered.volume_id)
    assert READY_TAG in agent.lvm.lvs()[lv]["lv_tags"].split(",")
    restart(agent)
    points.disarm("lvcreate")
    assert agent.ctl.CreateVolume(request).volume == answered
    staging = agent.stage(answered.volume_id, cap)
    write_file(os.path.join(staging, "data"), b"thin volume")
    assert read_file(os.path.join(staging, "data")) == b"thin volume"
    agent.unstage(answered.volume_id, staging)
    delete(agent, answered.volume_id)
    assert agent.lvm.foreign_problems() == []
    assert_nothing_left(agent)


def test_the_lvm_tools_are_answered_at_their_commit_lines(fresh_agent_factory: AgentFactory) -> None:
    """Real LVM: CreateVolume's lvcreate and DeleteVolume's lvremove are answered at their commit lines (the
    agent's debug log: ``ran [...] answered in``), and each tool's exit is still awaited and logged (``ended
    [...] rc=0``), by the time the agent has stopped at the latest."""
    agent = fresh_agent_factory()
    if agent.kind not in LVM_KINDS:
        pytest.skip("the LVM pools' lvcreate and lvremove")
    vol = agent.create_volume(16 * MiB, cap=mount_cap("ext4"))
    delete(agent, vol.volume_id)
    agent.stop()
    messages = [str(record.get("msg", "")) for record in iter_log_records(agent.log())]
    for tool in ("lvcreate", "lvremove"):
        answered = [m for m in messages if m.startswith("ran [") and f"'{tool}'" in m and " answered in " in m]
        ended = [m for m in messages if m.startswith("ended [") and f"'{tool}'" in m]
        assert len(answered) == 1 and len(ended) == 1 and " rc=0 in " in ended[0], (tool, answered, ended)
