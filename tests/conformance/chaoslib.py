"""The chaos workload, shared by test_chaos.py (file, lvm-loop) and the VM tier (lvm-dm, lvmthin, LIO).

One driver plays the CO: create, snapshot, clone, restore, expand, stage,
publish, write with fsync, read, unpublish, unstage, delete, chosen by a
seeded random generator.  A killer thread SIGKILLs an agent at random
moments and starts it again on the same state.  Every call is retried until
it answers OK, as sidecars and kubelet do; a call that keeps failing for
``PATIENCE`` seconds of agent uptime fails the run with its last error.

With a separate node agent (a storage host exporting over iSCSI to a node),
ControllerPublish comes before each NodeStage and ControllerUnpublish after
each NodeUnstage, as a CO does for a volume attached to another host, and the
killer picks either agent.  ``run`` drives it to the number of kills asked;
``settle`` then reads every acknowledged write back (staging volumes again for
it), checks nothing is frozen, and deletes everything; the callers check that
nothing is left.
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
    LVM_LOOP_KIND,
    SC,
    THIN_POOL_NAME,
    Agent,
    DmLvmVg,
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

PATIENCE = 90.0  # seconds of agent uptime a CO keeps retrying one call before the run calls it stuck
CAP = mount_cap("ext4")
Action = tuple[int, Callable[[], None]]  # a weight and what the CO does


@dataclass
class Vol:
    name: str
    volume_id: str
    size: int
    files: dict[str, bytes] = field(default_factory=dict)  # acknowledged writes
    volume_context: dict[str, str] = field(default_factory=dict)
    publish_context: dict[str, str] = field(default_factory=dict)
    staging: str = ""
    target: str = ""


@dataclass
class Snap:
    name: str
    snapshot_id: str
    size: int
    files: dict[str, bytes]


class Chaos:
    """*agent* serves the controller (and the node, unless *node* is given: then a CO publishes to *node*,
    with *secrets* in ControllerPublish and NodeStage)."""

    def __init__(self, agent: Agent, rng: random.Random, node: Agent | None = None,
                 secrets: dict[str, str] | None = None, cap: Any = CAP) -> None:
        self.agent = agent
        self.cap = cap  # what CreateVolume asks for
        self.node = node or agent
        self.agents = [agent] if node is None else [agent, node]
        self.secrets = dict(secrets or {})
        self.rng = rng
        self.restarted = time.monotonic()
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
                victim = self.rng.choice(self.agents)
                self.up.clear()
                victim.kill()
                self.kills += 1
                victim.start()
                self.restarted = time.monotonic()
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
                answer = getattr(getattr(self.node if service == "node" else self.agent, service), method)(request)
                self.succeeded += 1
                return answer
            except grpc.RpcError as error:
                if error.code() in final:
                    return None
                if time.monotonic() > max(deadline, self.restarted + PATIENCE):  # a TCG guest restarts slowly
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
        request = csi.CreateVolumeRequest(name=name, volume_capabilities=[self.cap],
                                          capacity_range=csi.CapacityRange(required_bytes=size))
        if source is not None:
            request.volume_content_source.CopyFrom(source)
        volume = self.call("ctl", "CreateVolume", request).volume
        self.vols[name] = Vol(name, volume.volume_id, volume.capacity_bytes, dict(files or {}),
                              dict(volume.volume_context))

    def stage(self, vol: Vol) -> None:
        if self.node is not self.agent:
            vol.publish_context = dict(self.call("ctl", "ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
                volume_id=vol.volume_id, node_id=self.node.node_id, volume_capability=CAP, secrets=self.secrets,
                volume_context=vol.volume_context)).publish_context)
        vol.staging = vol.staging or self.node.staging_dir()
        self.call("node", "NodeStageVolume", csi.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging, volume_capability=CAP, secrets=self.secrets,
            publish_context=vol.publish_context, volume_context=vol.volume_context))
        # expanded while unstaged: grown offline by the stage, killed or not
        assert ext4_bytes(vol.staging) == vol.size, f"{vol.name}: the filesystem does not fill the volume"
        target = self.node.path("mount")
        self.call("node", "NodePublishVolume", csi.NodePublishVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging, target_path=target, volume_capability=CAP,
            publish_context=vol.publish_context, volume_context=vol.volume_context))
        vol.target = target

    def unstage(self, vol: Vol) -> None:
        self.call("node", "NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(
            volume_id=vol.volume_id, target_path=vol.target))
        self.call("node", "NodeUnstageVolume", csi.NodeUnstageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=vol.staging))
        vol.target = ""
        if self.node is not self.agent:
            self.call("ctl", "ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(
                volume_id=vol.volume_id, node_id=self.node.node_id))

    def write(self, vol: Vol) -> None:
        assert vol.target, f"{vol.name} is not published: a write would land outside it"
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
        copyable = idle if self.agent.kind == LVM_LOOP_KIND else list(self.vols.values())
        choices: list[Action] = [(2 if len(self.vols) < 4 else 0, lambda: self.create())]
        if idle:
            still = self.rng.choice(idle)
            choices += [(3, lambda: self.stage(still)), (1, lambda: self.expand(still)),
                        (1 if len(self.vols) > 2 else 0, lambda: self.delete(still))]
        if staged:
            used = self.rng.choice(staged)
            choices += [(4, lambda: self.write(used)), (2, lambda: self.verify(used)),
                        (2, lambda: self.unstage(used))]
        self.pick(choices + self.copies(copyable))

    def copies(self, copyable: list[Vol]) -> list[Action]:
        """Snapshot or clone one of *copyable*, restore or delete a snapshot: weighted choices for ``pick``."""
        choices: list[Action] = []
        if copyable and len(self.vols) < 6:
            source = self.rng.choice(copyable)
            choices += [(1, lambda: self.snapshot(source)),
                        (1, lambda: self.create(volume_source(source.volume_id), source.files, source.size))]
        if self.snaps:
            snap = self.rng.choice(list(self.snaps.values()))
            choices += [(1 if len(self.vols) < 6 else 0,
                         lambda: self.create(snapshot_source(snap.snapshot_id), snap.files, snap.size)),
                        (1, lambda: self.delete_snapshot(snap))]
        return choices

    def pick(self, choices: list[Action]) -> None:
        """Run one of *choices*, drawn by weight."""
        self.rng.choice([action for weight, action in choices for _ in range(weight)])()

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

    # -- a whole run -----------------------------------------------------------------
    def run(self, kills: int) -> float:
        """The workload until the agents were killed *kills* times; return how long it took (seconds)."""
        killer = threading.Thread(target=self.killer, name="killer", daemon=True)
        started = time.monotonic()
        killer.start()
        try:
            while self.kills < kills:
                self.step()
        finally:
            self.stop.set()
            killer.join(max(60.0, PATIENCE))
        self.up.wait()
        return time.monotonic() - started

    def settle(self) -> None:
        """Every acknowledged write read back, in every volume (staged again where it is not), nothing frozen;
        then every snapshot and volume deleted."""
        for vol in list(self.vols.values()):
            if not vol.target:
                self.stage(vol)
            assert_writable(vol.staging)
            self.verify(vol)
            self.unstage(vol)
        for snap in list(self.snaps.values()):
            self.delete_snapshot(snap)
        for vol in list(self.vols.values()):
            self.delete(vol)

    def figures(self, elapsed: float) -> dict[str, int]:
        return {"kills": self.kills, "calls": self.calls, "retries": self.retried, "seconds": round(elapsed)}


def kills_and_seed(default_kills: int) -> tuple[int, int]:
    """``BASALT_CHAOS_KILLS`` (else *default_kills*) and ``BASALT_CHAOS_SEED`` (else a random one, printed)."""
    seed = int(os.environ.get("BASALT_CHAOS_SEED", str(random.randrange(1 << 32))))
    print(f"chaos seed {seed} (BASALT_CHAOS_SEED={seed} replays it)", flush=True)
    return int(os.environ.get("BASALT_CHAOS_KILLS", str(default_kills))), seed


# -- what must be left once everything is deleted --------------------------------------


def dm_devices(agent: Agent) -> list[str]:
    """The device-mapper devices of the agent's VG but its thin pool's (real-kernel kinds; none elsewhere).

    LVM stacks a ``-tpool`` layer under a thin pool while thin LVs use it and keeps it after the last one
    is gone: that is the pool's (the fixture made it), not a volume's.
    """
    if not isinstance(agent.lvm, DmLvmVg):
        return []
    thin_pool = agent.lvm.vg.replace("-", "--") + "-" + THIN_POOL_NAME
    return [name for name in agent.lvm.dm_devices()
            if name != thin_pool and not name.startswith((thin_pool + "-", thin_pool + "_"))]


def pool_state(agent: Agent) -> tuple[set[str], list[str]]:
    """What the pool holds before a run (its foreign LVs, a thin pool): the same must be there after it."""
    return {path for path in agent.pool_objects() if not path.endswith("/freezes")}, dm_devices(agent)


def assert_nothing_left(agent: Agent, before: tuple[set[str], list[str]]) -> None:
    """Nothing of the deleted volumes on the host: backing objects, loop and dm devices, mounts, node and
    freeze records, temp files."""
    assert retry_until(lambda: agent.pool_loops() == {}, 60), agent.pool_loops()
    assert retry_until(lambda: pool_state(agent) == before, 30), (pool_state(agent), before)
    assert mounts_under(agent.root) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", "*")) == []
    assert glob.glob(os.path.join(agent.state_dir, "node", ".tmp-*")) == []
    assert glob.glob(os.path.join(agent.pool, "freezes", "*")) == []
    assert glob.glob(os.path.join(agent.pool, "*", ".tmp-*")) == []
