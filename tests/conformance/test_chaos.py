"""Chaos: a mixed workload while the agent is SIGKILLed at random moments, every call retried as a CO does.

One driver plays the CO: create, snapshot, clone, restore, expand, stage,
publish, write with fsync, read, unpublish, unstage, delete, chosen by a
seeded random generator.  A killer thread SIGKILLs the agent at random
moments (at least ``BASALT_CHAOS_KILLS`` times: 8 by default, the bounded run
CI makes on each pool kind; README's Reliability figures come from longer runs) and starts it
again on the same state.  Every call is retried until it answers OK, as
sidecars and kubelet do; a call that keeps failing for ``PATIENCE`` seconds
fails the test with its last error.

At the end every acknowledged write is read back (volumes staged again for
it), nothing is frozen, then the driver deletes everything and the host must
hold nothing of the pool: backing objects, loop devices, mounts, node and
freeze records, temp files.  The seed is printed: ``BASALT_CHAOS_SEED``
replays a run.
"""

from __future__ import annotations

import glob
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    SC,
    Agent,
    MiB,
    csi,
    mount_cap,
    mounts_under,
    pattern,
    read_file,
    retry_until,
    snapshot_source,
    volume_source,
    write_file,
)
from test_crash import assert_writable, ext4_bytes

KILLS = int(os.environ.get("BASALT_CHAOS_KILLS", "8"))
PATIENCE = 90.0  # seconds a CO keeps retrying one call before the test calls it stuck
CAP = mount_cap("ext4")


@dataclass
class Vol:
    name: str
    volume_id: str
    size: int
    files: dict[str, bytes] = field(default_factory=dict)  # acknowledged writes
    staging: str = ""
    target: str = ""


@dataclass
class Snap:
    name: str
    snapshot_id: str
    size: int
    files: dict[str, bytes]


class Chaos:
    def __init__(self, agent: Agent, rng: random.Random) -> None:
        self.agent = agent
        self.rng = rng
        self.up = threading.Event()
        self.up.set()
        self.stop = threading.Event()
        self.kills = 0
        self.retried = 0
        self.calls = 0
        self.vols: dict[str, Vol] = {}
        self.snaps: dict[str, Snap] = {}
        self.counter = 0
        self.broken: BaseException | None = None
        self.succeeded = 0

    # -- the killer ------------------------------------------------------------
    def killer(self) -> None:
        try:
            while not self.stop.is_set():
                # Liveness: a call must have succeeded since the last restart, or on a loaded host a slow
                # call could be killed for ever (a CO would give up; the test would say nothing).
                seen = self.succeeded
                while self.succeeded == seen and not self.stop.is_set():
                    time.sleep(0.01)
                time.sleep(self.rng.uniform(0.0, 0.8))
                if self.stop.is_set():
                    break
                self.up.clear()
                self.agent.kill()
                self.kills += 1
                self.agent.start()
                self.up.set()
        except BaseException as error:  # e.g. the agent failed to start again: the driver reports it
            self.broken = error
            self.stop.set()
            self.up.set()

    # -- a CO's retries ----------------------------------------------------------
    def call(self, service: str, method: str, request: Any, final: tuple[grpc.StatusCode, ...] = ()) -> Any:
        """*request* retried until it answers OK (the answer) or one of the *final* codes (None)."""
        self.calls += 1
        deadline = time.monotonic() + PATIENCE
        while True:
            self.up.wait()
            if self.broken is not None:
                raise AssertionError(f"the killer thread failed: {self.broken!r}") from self.broken
            try:
                answer = getattr(getattr(self.agent, service), method)(request)
                self.succeeded += 1
                return answer
            except grpc.RpcError as error:
                if error.code() in final:
                    return None
                if time.monotonic() > deadline:
                    pytest.fail(f"{method} never succeeded in {PATIENCE}s: {error.code().name} {error.details()}")
                self.retried += 1
                if error.code() not in (SC.UNAVAILABLE, SC.CANCELLED, SC.ABORTED, SC.UNKNOWN):
                    time.sleep(0.2)  # e.g. a device the kernel has not let go of yet
                time.sleep(0.05)

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"chaos-{prefix}-{self.counter}"

    # -- the workload --------------------------------------------------------------
    def create(self, source: Any = None, files: dict[str, bytes] | None = None, size: int = 16 * MiB) -> None:
        name = self.name("vol")
        request = csi.CreateVolumeRequest(name=name, volume_capabilities=[CAP],
                                          capacity_range=csi.CapacityRange(required_bytes=size))
        if source is not None:
            request.volume_content_source.CopyFrom(source)
        volume = self.call("ctl", "CreateVolume", request).volume
        self.vols[name] = Vol(name, volume.volume_id, volume.capacity_bytes, dict(files or {}))

    def stage(self, vol: Vol) -> None:
        vol.staging = vol.staging or self.agent.staging_dir()
        self.call("node", "NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging, volume_capability=CAP))
        # expanded while unstaged: grown offline by the stage, killed or not
        assert ext4_bytes(vol.staging) == vol.size, f"{vol.name}: the filesystem does not fill the volume"
        target = self.agent.path("mount")
        self.call("node", "NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging, target_path=target, volume_capability=CAP))
        vol.target = target

    def unstage(self, vol: Vol) -> None:
        self.call("node", "NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id, target_path=vol.target))
        self.call("node", "NodeUnstageVolume", csi.NodeUnstageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging))
        vol.target = ""

    def write(self, vol: Vol) -> None:
        name = f"f{self.counter}"
        self.counter += 1
        data = pattern(self.rng.choice([4096, 256 * 1024, MiB]), f"{vol.name}/{name}")
        write_file(os.path.join(vol.target, name), data)  # fsynced: acknowledged
        vol.files[name] = data

    def verify(self, vol: Vol) -> None:
        for name, data in vol.files.items():
            assert read_file(os.path.join(vol.target, name)) == data, f"{vol.name}/{name} lost or changed"

    def step(self) -> None:
        staged = [v for v in self.vols.values() if v.target]
        idle = [v for v in self.vols.values() if not v.target]
        # lvm-loop copies only idle volumes (no dm_snapshot): pick sources among those there.
        copyable = idle if self.agent.lvm is not None else list(self.vols.values())
        choices: list[tuple[int, Callable[[], None]]] = [(2 if len(self.vols) < 4 else 0, lambda: self.create())]
        if idle:
            still = self.rng.choice(idle)
            choices += [(3, lambda: self.stage(still)), (1, lambda: self.expand(still)),
                        (1 if len(self.vols) > 2 else 0, lambda: self.delete(still))]
        if staged:
            used = self.rng.choice(staged)
            choices += [(4, lambda: self.write(used)), (2, lambda: self.verify(used)),
                        (2, lambda: self.unstage(used))]
        if copyable and len(self.vols) < 6:
            source = self.rng.choice(copyable)
            choices += [(1, lambda: self.snapshot(source)),
                        (1, lambda: self.create(volume_source(source.volume_id), source.files, source.size))]
        if self.snaps:
            snap = self.rng.choice(list(self.snaps.values()))
            choices += [(1 if len(self.vols) < 6 else 0,
                         lambda: self.create(snapshot_source(snap.snapshot_id), snap.files, snap.size)),
                        (1, lambda: self.delete_snapshot(snap))]
        actions = [action for weight, action in choices for _ in range(weight)]
        self.rng.choice(actions)()

    def expand(self, vol: Vol) -> None:
        # lvm-loop LVs are contiguous: the extents after one may be another volume's (RESOURCE_EXHAUSTED).
        answer = self.call("ctl", "ControllerExpandVolume", csi.ControllerExpandVolumeRequest(
            volume_id=vol.volume_id, capacity_range=csi.CapacityRange(required_bytes=vol.size + 8 * MiB)),
            final=(SC.RESOURCE_EXHAUSTED,))
        if answer is not None:
            vol.size = answer.capacity_bytes

    def snapshot(self, vol: Vol) -> None:
        name = self.name("snap")
        snap = self.call("ctl", "CreateSnapshot", csi.CreateSnapshotRequest(
            source_volume_id=vol.volume_id, name=name)).snapshot
        self.snaps[name] = Snap(name, snap.snapshot_id, vol.size, dict(vol.files))

    def delete(self, vol: Vol) -> None:
        self.call("ctl", "DeleteVolume", csi.DeleteVolumeRequest(volume_id=vol.volume_id))
        del self.vols[vol.name]

    def delete_snapshot(self, snap: Snap) -> None:
        self.call("ctl", "DeleteSnapshot", csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        del self.snaps[snap.name]


def test_chaos(fresh_agent_factory: Callable[..., Agent]) -> None:
    seed = int(os.environ.get("BASALT_CHAOS_SEED", str(random.randrange(1 << 32))))
    print(f"chaos seed {seed} (BASALT_CHAOS_SEED={seed} replays it)")
    agent = fresh_agent_factory()
    objects_before = {path for path in agent.pool_objects() if not path.endswith("/freezes")}
    chaos = Chaos(agent, random.Random(seed))
    killer = threading.Thread(target=chaos.killer, name="killer", daemon=True)
    started = time.monotonic()
    killer.start()
    try:
        while chaos.kills < KILLS:
            chaos.step()
    finally:
        chaos.stop.set()
        killer.join(60)
    chaos.up.wait()
    elapsed = time.monotonic() - started
    # Every acknowledged write, in every volume (staged again where it is not), and nothing frozen.
    for vol in list(chaos.vols.values()):
        if not vol.target:
            chaos.stage(vol)
        assert_writable(vol.staging)
        chaos.verify(vol)
        chaos.unstage(vol)
    for snap in list(chaos.snaps.values()):
        chaos.delete_snapshot(snap)
    for vol in list(chaos.vols.values()):
        chaos.delete(vol)
    print(f"chaos: {chaos.kills} kills, {chaos.calls} calls, {chaos.retried} retries, {elapsed:.0f}s")
    # Nothing leaked.
    assert retry_until(lambda: agent.pool_loops() == {}, 60), agent.pool_loops()
    assert {path for path in agent.pool_objects() if not path.endswith("/freezes")} == objects_before
    assert mounts_under(agent.root) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", "*")) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", ".tmp-*")) == []
    assert glob.glob(os.path.join(agent.pool, "freezes", "*")) == []
    assert glob.glob(os.path.join(agent.pool, "*", ".tmp-*")) == []
    assert chaos.kills >= KILLS
