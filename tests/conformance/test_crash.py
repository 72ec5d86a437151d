"""The agent SIGKILLed at the exact points where a crash used to strand the host (issue 10).

Each test kills a real agent at one point (a tool wrapper from
``crashpoints.py`` first on its PATH, an audit hook right after a loop attach's
ioctl from ``loop_crashpoint.py``, or a state made as a crash leaves it),
starts it again on the same state, retries the call as a CO does, and checks
that it converges: data intact, nothing frozen, nothing left attached.
docs/crash-safety.md lists these points per RPC.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    LVM_LOOP_KIND,
    SC,
    XFS_MIN,
    Agent,
    MiB,
    csi,
    expect_code,
    loop_table,
    mount_cap,
    mounts_under,
    pattern,
    read_file,
    retry_until,
    snapshot_source,
    stage_tracking_image,
    top_mount,
    unique,
    volume_lv_name,
    volume_source,
    write_file,
)
from crashpoints import CrashPoints
from loop_crashpoint import LoopAttachCrash

AgentFactory = Callable[..., Agent]


@pytest.fixture
def crashable(fresh_agent_factory: AgentFactory) -> Iterator[tuple[Agent, CrashPoints]]:
    """A started agent whose tools can be armed to kill it."""
    agent = fresh_agent_factory(launch=False)
    points = CrashPoints(agent.root).wrap("mkfs.xfs", "mkfs.ext4", "fsfreeze", "resize2fs", "e2fsck", "e2undo")
    agent.extra_env.update(points.env())
    agent.start()
    yield agent, points


@pytest.fixture
def attach_crashable(fresh_agent_factory: AgentFactory) -> Iterator[tuple[Agent, LoopAttachCrash]]:
    """A started agent that can be armed to die right after its next loop attach (an ioctl: no tool to wrap)."""
    agent = fresh_agent_factory(launch=False)
    point = LoopAttachCrash(agent.root)
    agent.extra_env.update(point.env(agent.env().get("PYTHONPATH", "")))
    agent.start()
    yield agent, point


def pool_neutral(agent: Agent) -> None:
    """Node-side logic the pool does not change: proven on the file pool, skipped on the others (CI time)."""
    if agent.lvm is not None:
        pytest.skip("pool-neutral node logic: covered by the file pool run")


def restart(agent: Agent) -> None:
    agent.kill()
    agent.start()


def crashed(call: Any, request: Any) -> None:
    """*call* dies with the agent: the CO sees the connection go."""
    with pytest.raises(grpc.RpcError) as failure:
        call(request)
    assert failure.value.code() in (SC.UNAVAILABLE, SC.CANCELLED, SC.UNKNOWN, SC.INTERNAL), failure.value


def assert_writable(directory: str, timeout: float = 15.0) -> None:
    """An application can write and fsync there (a frozen filesystem blocks it)."""
    probe = os.path.join(directory, f"probe-{unique()}")
    writer = subprocess.Popen([sys.executable, "-c", "import os, sys\n"
                               "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
                               "os.write(fd, b'x'); os.fsync(fd); os.close(fd); os.unlink(sys.argv[1])", probe])
    try:
        writer.wait(timeout)
    except subprocess.TimeoutExpired:
        subprocess.run(["fsfreeze", "--unfreeze", directory], check=False)  # let the writer finish
        writer.wait(30)
        pytest.fail(f"{directory} stayed frozen: a write hung for {timeout}s")
    assert writer.returncode == 0


def assert_nothing_left(agent: Agent) -> None:
    """No device over the pool, no mount, no node record or temp file, no freeze record.

    (A detached loop device goes once its last opener closes it and its backing file's dirty pages are
    written: seconds on a loaded host.)
    """
    assert retry_until(lambda: agent.pool_loops() == {}, 60), agent.pool_loops()
    assert mounts_under(agent.root) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", "*")) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", ".tmp-*")) == []
    assert glob.glob(os.path.join(agent.pool, "freezes", "*")) == []
    assert glob.glob(os.path.join(agent.pool, "*", ".tmp-*")) == []


def node_req(vol: Any, cap: Any, staging: str) -> Any:
    return csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging, volume_capability=cap)


def delete(agent: Agent, volume_id: str) -> None:
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))


# -- 1. freezes ------------------------------------------------------------------

def test_agent_killed_while_a_copy_holds_the_freeze(crashable: tuple[Agent, CrashPoints]) -> None:
    """Killed just after fsfreeze: the thaw guard thaws at once; the retried snapshot holds the data."""
    agent, points = crashable
    if agent.kind == LVM_LOOP_KIND:
        pytest.skip("lvm-loop refuses to copy a volume in use (no dm_snapshot): it never freezes")
    cap = mount_cap("ext4")
    vol = agent.create_volume(64 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    data = pattern(8 * MiB, "frozen")
    write_file(os.path.join(att.staging, "data"), data)
    name = unique("snap")
    points.arm("fsfreeze", "after", arg="--freeze")
    crashed(agent.ctl.CreateSnapshot, csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name))
    assert points.fired("fsfreeze")["outcome"] == "after"
    agent.kill()
    assert_writable(att.staging)  # thawed by the guard, before any restart
    agent.start()
    snap = agent.ctl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name)).snapshot
    assert snap.ready_to_use
    assert_writable(att.staging)
    restored = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=unique("restore"), volume_capabilities=[cap], volume_content_source=snapshot_source(snap.snapshot_id),
        capacity_range=csi.CapacityRange(required_bytes=64 * MiB))).volume
    att2 = stage_tracking_image(agent, restored.volume_id, cap)
    assert read_file(os.path.join(att2.staging, "data")) == data
    for done in (att, att2):
        agent.unstage(done.volume_id, done.staging)
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    for volume_id in (vol.volume_id, restored.volume_id):
        delete(agent, volume_id)
    assert_nothing_left(agent)


def test_start_up_thaws_a_recorded_freeze(crashable: tuple[Agent, CrashPoints]) -> None:
    """The guard died with the agent (a whole container killed): the freeze record makes start-up thaw it."""
    agent, _points = crashable
    if agent.kind == LVM_LOOP_KIND:
        pytest.skip("lvm-loop never freezes (see above)")
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    agent.kill()
    # What a copy killed together with its guard leaves: the filesystem frozen, its record written.
    os.makedirs(os.path.join(agent.pool, "freezes"), exist_ok=True)
    with open(os.path.join(agent.pool, "freezes", "left.json"), "w", encoding="utf-8") as record:
        json.dump({"mount_point": att.staging}, record)
    subprocess.run(["fsfreeze", "--freeze", att.staging], check=True)
    agent.start()
    assert_writable(att.staging)
    assert "thawed " + att.staging in agent.log()
    agent.unstage(att.volume_id, att.staging)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


def test_a_copy_slower_than_the_freeze_limit_fails_and_thaws(fresh_agent_factory: AgentFactory) -> None:
    """With --freeze-limit (1 ms) shorter than the copy: FAILED_PRECONDITION naming the limit, the volume writable."""
    agent = fresh_agent_factory(extra_args=["--freeze-limit", "0.001"])
    if agent.kind == LVM_LOOP_KIND:
        pytest.skip("lvm-loop never freezes (see above)")
    cap = mount_cap("ext4")
    vol = agent.create_volume(64 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    write_file(os.path.join(att.staging, "data"), pattern(48 * MiB, "slow"))  # copied in well over 1 ms
    err = expect_code(agent.ctl.CreateSnapshot, csi.CreateSnapshotRequest(source_volume_id=vol.volume_id,
                                                                          name=unique("snap")), SC.FAILED_PRECONDITION)
    assert "freeze limit of 0.001s" in (err.details() or ""), err.details()
    assert_writable(att.staging)
    agent.unstage(att.volume_id, att.staging)
    delete(agent, vol.volume_id)


# -- 2. loop devices ---------------------------------------------------------------

def test_killed_after_attaching_a_copy_device(attach_crashable: tuple[Agent, LoopAttachCrash]) -> None:
    """Killed while a copy holds a temporary loop device: start-up detaches it, the source is not "in use"."""
    agent, point = attach_crashable
    cap = mount_cap("ext4")
    vol = agent.create_volume(32 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    data = pattern(4 * MiB, "copy-device")
    write_file(os.path.join(att.staging, "data"), data)
    agent.unstage(att.volume_id, att.staging)
    name = unique("snap")
    point.arm()  # lvm-loop: the copy's first device (file pools copy files)
    request = csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=name)
    if agent.kind == LVM_LOOP_KIND:
        crashed(agent.ctl.CreateSnapshot, request)
        assert point.fired()["outcome"] == "after"
        assert agent.pool_loops(), "the crash point left no device: it tests nothing"
        restart(agent)
        assert retry_until(lambda: agent.pool_loops() == {}, 60), "start-up left the copy's device attached"
    point.disarm()
    snap = agent.ctl.CreateSnapshot(request).snapshot
    restored = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=unique("restore"), volume_capabilities=[cap], volume_content_source=snapshot_source(snap.snapshot_id),
        capacity_range=csi.CapacityRange(required_bytes=32 * MiB))).volume
    att2 = stage_tracking_image(agent, restored.volume_id, cap)
    assert read_file(os.path.join(att2.staging, "data")) == data
    agent.unstage(att2.volume_id, att2.staging)
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    for volume_id in (vol.volume_id, restored.volume_id):
        delete(agent, volume_id)
    assert_nothing_left(agent)


def test_killed_after_node_stage_attached(attach_crashable: tuple[Agent, LoopAttachCrash]) -> None:
    """Killed between NodeStage's attach and its record: start-up detaches it; a CO may then delete the volume."""
    agent, point = attach_crashable
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    point.arm()
    crashed(agent.node.NodeStageVolume, node_req(vol, cap, agent.staging_dir()))
    assert point.fired()["outcome"] == "after"
    assert agent.pool_loops()
    restart(agent)
    delete(agent, vol.volume_id)  # was FAILED_PRECONDITION "attached as /dev/loopN" for ever
    assert_nothing_left(agent)


def test_devices_that_are_not_the_pools_stay(fresh_agent_factory: AgentFactory) -> None:
    """Start-up detaches only devices over the pool's storage: a device over another file, or (lvm) within an LV
    Basalt does not manage, is left alone."""
    agent = fresh_agent_factory()
    other = os.path.join(agent.root, "not-the-pool.img")
    with open(other, "wb") as handle:
        handle.truncate(8 * MiB)
    mine = [subprocess.run(["losetup", "--find", "--show", other], check=True, capture_output=True,
                           text=True).stdout.strip()]
    try:
        if agent.lvm is not None:
            offset, length = agent.lvm.lv_location(agent.lvm.FOREIGN_LVS[0])
            mine.append(subprocess.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                                        str(length), agent.lvm.device], check=True, capture_output=True,
                                       text=True).stdout.strip())
        restart(agent)
        attached = {loop.device for loop in loop_table()}
        assert set(mine) <= attached, "start-up detached a loop device that is not the pool's"
    finally:
        for device in mine:
            subprocess.run(["losetup", "--detach", device], check=False)


def test_a_stale_device_past_the_volume_is_never_used(fresh_agent_factory: AgentFactory) -> None:
    """lvm-loop: a device left over a removed, larger LV at the volume's offset is refused, then detached at
    start; the volume then gets a device of exactly its size (the data-loss chain of issue 10, item 2)."""
    agent = fresh_agent_factory()
    if agent.lvm is None:
        pytest.skip("file pools reuse a device only over the very same image file (inode), never a range")
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    offset, length = agent.lvm.lv_location(volume_lv_name(vol.volume_id))
    stale = subprocess.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                            str(length + 64 * MiB), agent.lvm.device], check=True, capture_output=True,
                           text=True).stdout.strip()
    try:
        err = expect_code(agent.node.NodeStageVolume, node_req(vol, cap, agent.staging_dir()),
                          SC.FAILED_PRECONDITION)
        assert stale in (err.details() or ""), err.details()
        restart(agent)
        assert retry_until(lambda: stale not in {loop.device for loop in loop_table()}, 60)
        att = stage_tracking_image(agent, vol.volume_id, cap)  # checks the device's offset and exact size
        agent.unstage(att.volume_id, att.staging)
    finally:
        subprocess.run(["losetup", "--detach", stale], check=False, capture_output=True)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


# -- 3. half-made filesystems ---------------------------------------------------------

@pytest.mark.parametrize("fs_type, tool, when, magic, offset", [
    ("xfs", "mkfs.xfs", "magic", b"XFSB", 0),  # superblock written, the rest not: "Structure needs cleaning"
    ("ext4", "mkfs.ext4", "after", b"", 0),  # made, never recorded
])
def test_killed_while_node_stage_makes_the_filesystem(crashable: tuple[Agent, CrashPoints], fs_type: str,
                                                      tool: str, when: str, magic: bytes, offset: int) -> None:
    """A filesystem Basalt was making when it died is made again by the retried NodeStage."""
    agent, points = crashable
    if fs_type == "ext4":
        pool_neutral(agent)
    cap = mount_cap(fs_type)
    vol = agent.create_volume(XFS_MIN if fs_type == "xfs" else 16 * MiB, cap=cap)
    staging = agent.staging_dir()
    wanted = "during" if when == "magic" else when
    for _attempt in range(5):  # on a loaded host mkfs may finish before the wrapper sees its magic: again
        points.arm(tool, when, magic=magic, offset=offset)
        crashed(agent.node.NodeStageVolume, node_req(vol, cap, staging))
        outcome = points.fired(tool)["outcome"]
        restart(agent)
        if outcome == wanted:
            break
    assert outcome == wanted
    agent.node.NodeStageVolume(node_req(vol, cap, staging))
    data = pattern(MiB, fs_type)
    write_file(os.path.join(staging, "data"), data)
    agent.unstage(vol.volume_id, staging)
    agent.stage(vol.volume_id, cap, staging)  # staged again: never reformatted now
    assert read_file(os.path.join(staging, "data")) == data
    agent.unstage(vol.volume_id, staging)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


def test_data_is_never_reformatted(attach_crashable: tuple[Agent, LoopAttachCrash]) -> None:
    """The mark covers only our own mkfs: a killed NodeStage of a volume holding data never reformats it."""
    agent, point = attach_crashable
    pool_neutral(agent)
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    data = pattern(MiB, "keep")
    write_file(os.path.join(att.staging, "data"), data)
    agent.unstage(vol.volume_id, att.staging)
    point.arm()
    crashed(agent.node.NodeStageVolume, node_req(vol, cap, att.staging))
    point.fired()
    restart(agent)
    agent.stage(vol.volume_id, cap, att.staging)
    assert read_file(os.path.join(att.staging, "data")) == data
    agent.unstage(vol.volume_id, att.staging)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


# -- 4. an interrupted offline ext4 grow -----------------------------------------------------

GROWN = 80 * MiB


def ext4_bytes(staging: str) -> int:
    """What the ext4 filesystem mounted at *staging* spans, by its superblock."""
    device = top_mount(staging).source
    out = subprocess.run(["dumpe2fs", "-h", device], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def df_bytes(staging: str) -> int:
    st = os.statvfs(staging)
    return st.f_blocks * st.f_frsize


def grow_leftovers(agent: Agent) -> list[str]:
    return glob.glob(os.path.join(agent.state_dir, "node", "*.grow*"))


# crash point (docs/crash-safety.md) -> the kills, in order, each followed by a restart: (tool, when, arm keywords)
MID_WRITE = ("resize2fs", "grown", {"watch": 1, "size": 64 << 10})  # undo file 64 KiB: ~60 blocks rewritten
GROW_CRASHES: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "checked": [("e2fsck", "after", {"arg": "-f"})],  # e2fsck -f done, no mark saved yet
    "started": [("resize2fs", "delay", {"delay_ms": 0})],  # mark saved, resize2fs just started
    "mid-write": [MID_WRITE],
    "finished": [("resize2fs", "after", {})],  # grown; mark and undo file not removed yet
    "rolled back": [MID_WRITE, ("e2undo", "after", {})],  # the retry killed once e2undo replayed the undo file
}
POOL_NEUTRAL_POINTS = ("checked", "started", "finished", "rolled back")  # the file pool's run covers them (CI time)


def test_killed_while_node_stage_grows_ext4(crashable: tuple[Agent, CrashPoints]) -> None:
    """Stage, write, unstage, ControllerExpand by 40 MiB, NodeStage killed at one point of the offline grow, for
    each point in turn: the retried NodeStage rolls back what was written (e2undo) and grows again; the data is
    intact, the filesystem the volume's size, and no mark or undo file is left."""
    agent, points = crashable
    cap = mount_cap("ext4")
    size = 40 * MiB
    vol = agent.create_volume(size, cap=cap)
    staging = agent.stage(vol.volume_id, cap)
    data = pattern(2 * MiB, "grow")
    write_file(os.path.join(staging, "data"), data)
    for point, kills in GROW_CRASHES.items():
        if agent.lvm is not None and point in POOL_NEUTRAL_POINTS:
            continue
        for _attempt in range(3):  # a loaded host may let resize2fs finish before the watcher sees it: again
            before = df_bytes(staging)
            agent.unstage(vol.volume_id, staging)
            size += 40 * MiB
            agent.ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
                volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=size)))
            hit = True
            for tool, when, arm in kills:
                points.arm(tool, when, **arm)
                crashed(agent.node.NodeStageVolume, node_req(vol, cap, staging))
                fired = points.fired(tool)
                hit &= fired["outcome"] == ("during" if when in ("delay", "grown") else "after")
                assert bool(grow_leftovers(agent)) == (tool != "e2fsck"), f"{point}: the mark is saved before resize2fs"
                restart(agent)
            agent.stage(vol.volume_id, cap, staging)  # converges whatever the moment was
            assert ext4_bytes(staging) == size, point
            assert df_bytes(staging) > before + 30 * MiB, point
            assert read_file(os.path.join(staging, "data")) == data, point
            assert grow_leftovers(agent) == [], point
            if hit:
                break
        assert hit, f"{point}: the crash point never hit its moment"
    agent.unstage(vol.volume_id, staging)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


# -- 8. a copy's own identity ---------------------------------------------------------------

def test_an_xfs_copy_stages_beside_its_origin(fresh_agent_factory: AgentFactory) -> None:
    """A clone of a mounted xfs volume (same UUID, log not replayed) stages beside it with a UUID of its own."""
    agent = fresh_agent_factory()
    cap = mount_cap("xfs")
    vol = agent.create_volume(XFS_MIN, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    data = pattern(MiB, "identity")
    write_file(os.path.join(att.staging, "data"), data)
    if agent.lvm is not None:  # lvm-loop copies only idle volumes: copy it unstaged, then stage both
        agent.unstage(vol.volume_id, att.staging)
    clone = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=unique("clone"), volume_capabilities=[cap], capacity_range=csi.CapacityRange(required_bytes=XFS_MIN),
        volume_content_source=volume_source(vol.volume_id))).volume
    if agent.lvm is not None:  # staged again: the origin's loop device is a new one, found anew
        att = stage_tracking_image(agent, vol.volume_id, cap, staging=att.staging)
    att2 = stage_tracking_image(agent, clone.volume_id, cap)
    assert read_file(os.path.join(att2.staging, "data")) == data
    uuids = [subprocess.run(["blkid", "-p", "-s", "UUID", "-o", "value", device], capture_output=True, text=True,
                            check=True).stdout.strip() for device in (att.device, att2.device)]
    assert uuids[0] != uuids[1], uuids
    for done in (att, att2):
        agent.unstage(done.volume_id, done.staging)
    for volume_id in (vol.volume_id, clone.volume_id):
        delete(agent, volume_id)
    assert_nothing_left(agent)


def test_a_grow_abandoned_with_its_volume_is_never_replayed(crashable: tuple[Agent, CrashPoints]) -> None:
    """Killed mid-grow, then the volume deleted and its name restored from a snapshot taken before a later write
    (same id, same filesystem UUID): staging the restore never replays the old undo file into it (which would
    put back the old volume's block bitmaps and group descriptors over the snapshot's), and start-up drops the
    abandoned mark."""
    agent, points = crashable
    pool_neutral(agent)
    cap = mount_cap("ext4")
    name = unique("vol")
    vol = agent.create_volume(40 * MiB, cap=cap, name=name)
    staging = agent.stage(vol.volume_id, cap)
    kept = pattern(MiB, "kept")
    write_file(os.path.join(staging, "kept"), kept)
    agent.unstage(vol.volume_id, staging)
    snap = agent.ctl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=vol.volume_id,
                                                              name=unique("snap"))).snapshot
    agent.stage(vol.volume_id, cap, staging)
    write_file(os.path.join(staging, "later"), pattern(MiB, "later"))
    agent.unstage(vol.volume_id, staging)
    agent.ctl.ControllerExpandVolume(csi.ControllerExpandVolumeRequest(
        volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=GROWN)))
    points.arm(*MID_WRITE[:2], **MID_WRITE[2])
    crashed(agent.node.NodeStageVolume, node_req(vol, cap, staging))
    assert points.fired("resize2fs")["outcome"] in ("during", "exited")  # a mark and an undo file left, either way
    restart(agent)
    delete(agent, vol.volume_id)  # the CO gave up on it
    restored = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=name, volume_capabilities=[cap], volume_content_source=snapshot_source(snap.snapshot_id),
        capacity_range=csi.CapacityRange(required_bytes=40 * MiB))).volume
    assert restored.volume_id == vol.volume_id
    agent.stage(restored.volume_id, cap, staging)
    assert read_file(os.path.join(staging, "kept")) == kept
    assert not os.path.exists(os.path.join(staging, "later"))
    assert "rolled back the interrupted grow" not in agent.log(), "the old volume's undo file was replayed"
    agent.unstage(restored.volume_id, staging)
    restart(agent)  # drops the abandoned mark and its undo file
    agent.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
    delete(agent, restored.volume_id)
    assert_nothing_left(agent)


def test_btrfs_is_refused_so_no_copy_shares_its_id(fresh_agent_factory: AgentFactory) -> None:
    """btrfs (which refuses two filesystems with one fsid) is not offered: CreateVolume, NodeStageVolume and
    NodePublishVolume answer INVALID_ARGUMENT naming the filesystems Basalt makes."""
    agent = fresh_agent_factory()
    pool_neutral(agent)
    vol = agent.create_volume(16 * MiB, cap=mount_cap("ext4"))
    btrfs = mount_cap("btrfs")
    calls = [
        (agent.ctl.CreateVolume, csi.CreateVolumeRequest(name=unique("btrfs"), volume_capabilities=[btrfs])),
        (agent.node.NodeStageVolume, node_req(vol, btrfs, agent.staging_dir())),
        (agent.node.NodePublishVolume, csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=agent.staging_dir(), target_path=agent.path("mount"),
            volume_capability=btrfs)),
    ]
    for call, request in calls:
        err = expect_code(call, request, SC.INVALID_ARGUMENT)
        assert "'btrfs' is not supported (use one of ext4, xfs)" in (err.details() or ""), err.details()
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)


# -- 5. node record temp files ---------------------------------------------------------

def test_start_up_sweeps_node_record_temp_files(fresh_agent_factory: AgentFactory) -> None:
    """What a kill during a node-record write leaves (its temp file) is removed at start; records stay."""
    agent = fresh_agent_factory()
    pool_neutral(agent)
    cap = mount_cap("ext4")
    vol = agent.create_volume(16 * MiB, cap=cap)
    att = stage_tracking_image(agent, vol.volume_id, cap)
    node_dir = os.path.join(agent.state_dir, "node")
    records = set(os.listdir(node_dir))
    agent.kill()
    with open(os.path.join(node_dir, ".tmp-left1234"), "w", encoding="utf-8") as torn:
        torn.write('{"volume_id": "half')
    agent.start()
    assert set(os.listdir(node_dir)) == records
    assert agent.pool_loops(), "the staged volume's device must stay: its record wants it"
    agent.unstage(att.volume_id, att.staging)
    delete(agent, vol.volume_id)
    assert_nothing_left(agent)
