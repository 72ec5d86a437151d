"""The agent's start finishes what crashes left, and --cleanup-grace decides when a creation is abandoned.

Records are planted through the core's own file pool (what a crash between
the steps of a create or a delete leaves), then a real agent starts on them.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Any

import pytest
from basalt_csi_testlib import FILE_KIND, MiB, csi

from basalt_agent.nodestate import NodeState
from basalt_core import volumes
from basalt_core.file_pool import FilePool
from basalt_core.model import CREATING, DELETING, READY

GRACE = 15.0  # seconds, well above a loaded machine's agent start; the periodic sweep runs every GRACE/2


def plant(pool: FilePool, name: str, state: str, created_at: float) -> str:
    volume, _ = volumes.ensure_volume(pool, name, MiB)
    pool.save_volume(dataclasses.replace(volume, state=state, created_at=created_at))
    return volume.id


def test_start_removes_abandoned_creations_and_the_sweep_follows_cleanup_grace(fresh_agent_factory: Any,
                                                                               pool_kind: str) -> None:
    if pool_kind != FILE_KIND:
        pytest.skip("plants records through the file pool's API; the lvm pool's clean_up is covered by "
                    "tests/unit/test_lvm_pool.py::test_crash_after_lvcreate_is_completed_by_retry_or_cleaned")
    agent = fresh_agent_factory(launch=False, extra_args=["--cleanup-grace", str(GRACE)])
    pool = FilePool(agent.pool)
    pool.ensure_layout()
    kept = plant(pool, "kept", READY, time.time() - 3600)
    deleting = plant(pool, "half-deleted", DELETING, time.time())
    abandoned = plant(pool, "abandoned", CREATING, time.time() - 3600)
    recent = plant(pool, "being-created", CREATING, time.time())
    leftover = os.path.join(pool.directory, "volumes", ".tmp-crashed")
    open(leftover, "wb").close()

    agent.start()
    # The start's own clean-up runs in the background as soon as the socket serves, and finishes
    # before any periodic sweep (the first runs GRACE/2 after serving).
    agent.wait_logged("start-up clean-up finished", GRACE / 2)
    state = {v.id: v.state for v in pool.all_volumes()}
    assert state == {kept: READY, recent: CREATING}, state
    for gone in (deleting, abandoned):
        assert not os.path.exists(pool.image_path(gone)), f"{gone}'s data outlived its record"
    assert not os.path.exists(leftover)
    listed = [e.volume.volume_id for e in agent.ctl.ListVolumes(csi.ListVolumesRequest()).entries]
    assert listed == [kept]

    # The creation still within its grace is the sweep's, once GRACE has passed, not before.
    deadline = time.monotonic() + 3 * GRACE
    while recent in {v.id for v in pool.all_volumes()} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert {v.id for v in pool.all_volumes()} == {kept}
    assert not os.path.exists(pool.image_path(recent))
    assert agent.proc is not None and agent.proc.poll() is None  # the agent kept serving throughout


def test_start_keeps_the_devices_of_staged_volumes_and_detaches_the_rest(fresh_agent_factory: Any) -> None:
    """Start-up looks at the loop devices once for all volumes: a staged volume keeps its device (and its
    mount), a device no node record wants is detached (a crash between attach and record leaves one)."""
    agent = fresh_agent_factory()
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                               access_mode=csi.VolumeCapability.AccessMode(mode=1))
    kept, dropped = (agent.create_volume(16 * MiB, cap=cap) for _ in range(2))
    staged = {v.volume_id: agent.stage(v.volume_id, cap) for v in (kept, dropped)}
    agent.kill()
    NodeState(os.path.join(agent.state_dir, "node")).drop(dropped.volume_id)
    subprocess.run(["umount", staged[dropped.volume_id]], check=True)
    before = agent.pool_loops()
    agent.start()
    after = agent.pool_loops()
    assert len(before) == 2 and len(after) == 1 and set(after) < set(before), (before, after)
    assert os.path.ismount(staged[kept.volume_id])
    agent.unstage(kept.volume_id, staged[kept.volume_id])
