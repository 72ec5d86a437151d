"""Long copies show their progress on a terminal, and nothing changes without one (issue #14).

A restore is a byte copy on the file pool (a filesystem without reflinks: the suite's /tmp is
ext4) and on lvm-loop (a thick LV's bytes); the agent runs once with its stderr on a
pseudo-terminal (on_a_terminal.py) and once with it on its log file, as always.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from basalt_csi_testlib import FILE_KIND, LVM_LOOP_KIND, MiB, csi, exact, mount_cap, pattern, unique, write_block

ON_A_TERMINAL = [sys.executable, str(Path(__file__).with_name("on_a_terminal.py"))]
SIZE = 24 * MiB


def restore(agent: Any) -> Any:
    """A volume with data, a snapshot of it and a volume restored from the snapshot: two copies by bytes."""
    volume = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=unique(), volume_capabilities=[mount_cap()], capacity_range=exact(SIZE))).volume
    if agent.lvm is None:  # data in the image, so that the sparse copy has chunks to copy
        write_block(Path(agent.pool) / "volumes" / f"{volume.volume_id}.img", pattern(6 * MiB, "progress"), 4 * MiB)
    snapshot = agent.ctl.CreateSnapshot(csi.CreateSnapshotRequest(source_volume_id=volume.volume_id,
                                                                   name=unique("snap"))).snapshot
    source = csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(
        snapshot_id=snapshot.snapshot_id))
    return agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=unique(), volume_capabilities=[mount_cap()], capacity_range=exact(SIZE),
        volume_content_source=source)).volume


@pytest.fixture
def copying_kind(pool_kind: str) -> str:
    if pool_kind not in (FILE_KIND, LVM_LOOP_KIND):
        pytest.skip(f"{pool_kind} restores without a byte copy")
    return pool_kind


def test_a_restore_by_copy_shows_its_progress_on_a_terminal(fresh_agent_factory: Any, copying_kind: str) -> None:
    agent = fresh_agent_factory(launcher=ON_A_TERMINAL)
    restored = restore(agent)
    assert agent.stop() == 0
    shown = agent.log()
    bars = re.findall(r"copying (\S+): +(\d+)%\|[^|\r\n]*\| *([\d.]+\w*)/([\d.]+\w*) \[[^]]*B/s\]", shown)
    assert bars, shown[-3000:]
    finals = {}
    for what, percent, done, total in bars:  # redrawn in place (CR): the last drawing of each copy counts
        finals[what] = (int(percent), done, total)
    assert len(finals) == 2, finals  # the snapshot and the restore (loop activation has no COW snapshots)
    assert all(percent == 100 and done == total == "24.0M" for percent, done, total in finals.values()), finals
    assert restored.capacity_bytes == SIZE


def test_without_a_terminal_the_log_has_no_progress(fresh_agent_factory: Any, copying_kind: str) -> None:
    agent = fresh_agent_factory()
    restore(agent)
    assert agent.stop() == 0
    lines = agent.log().splitlines()
    assert lines and "\r" not in agent.log()
    assert [json.loads(line)["level"] for line in lines]  # every line is one JSON log entry, as before
    assert not [line for line in lines if "%|" in line]
