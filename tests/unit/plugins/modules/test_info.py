"""basalt.csi.volume_info and snapshot_info: module arguments in, core calls and result out (data-driven)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.errors import Precondition
from ansible_collections.basalt.csi.plugins.module_utils.model import (
    READY,
    SOURCE_SNAPSHOT,
    ContentSource,
    Publication,
    Snapshot,
    Volume,
    snapshot_id_for,
    volume_id_for,
)
from ansible_collections.basalt.csi.plugins.modules import snapshot_info, volume_info
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

MiB = 1 << 20
SPEC = "lvm:vg0"
DB = Volume(id=volume_id_for("db"), name="db", size=8 * MiB, pool="vg0", state=READY,
            publications={"node-1": Publication(readonly=False, access_mode="SINGLE_NODE_WRITER")})
SNAP = Snapshot(id=snapshot_id_for("nightly"), name="nightly", source_volume_id=DB.id, size=8 * MiB, pool="vg0",
                state=READY, created_at=1796405400.5)
CLONE = Volume(id=volume_id_for("clone"), name="clone", size=16 * MiB, pool="vg0", state=READY,
               source=ContentSource(SOURCE_SNAPSHOT, SNAP.id), copy_method="thin")


class FakePool:
    def volume_problems(self, volumes: Any) -> Dict[str, Any]:
        return {v.id: ("thin pool data 95% full" if v is CLONE else None) for v in volumes}


POOL = FakePool()
DB_FACTS = dict(volume_id=DB.id, name="db", capacity_bytes=8 * MiB, content_source=None,
                published_node_ids=["node-1"], abnormal=False, condition="volume data present", state=READY,
                copy_method=None)
CLONE_FACTS = dict(volume_id=CLONE.id, name="clone", capacity_bytes=16 * MiB,
                   content_source=dict(snapshot_id=SNAP.id), published_node_ids=[], abnormal=True,
                   condition="thin pool data 95% full", state=READY, copy_method="thin")
SNAP_FACTS = dict(snapshot_id=SNAP.id, name="nightly", source_volume_id=DB.id, size_bytes=8 * MiB,
                  creation_time="2026-12-04T17:30:00Z", ready_to_use=True, state=READY)
NO_VG = Precondition("volume group vg0 is not available")

VOLUME_CASES = [
    Case("every volume", dict(pool=SPEC),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_volumes", POOL, returns=[DB, CLONE])],
         dict(changed=False, volumes=[DB_FACTS, CLONE_FACTS])),
    Case("one by name", dict(pool=SPEC, name="clone"),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_volumes", POOL, returns=[DB, CLONE])],
         dict(volumes=[CLONE_FACTS])),
    Case("one by id, in check mode", dict(pool=SPEC, id=DB.id),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_volumes", POOL, returns=[DB, CLONE])],
         dict(changed=False, volumes=[DB_FACTS]), check_mode=True),
    Case("a missing volume is an empty list", dict(pool=SPEC, name="nothing"),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_volumes", POOL, returns=[DB, CLONE])],
         dict(changed=False, volumes=[])),
    Case("a pool that cannot be read fails naming it", dict(pool=SPEC),
         [call("open_pool", SPEC, create_layout=False, raises=NO_VG)],
         dict(msg="volumes of lvm:vg0: volume group vg0 is not available"), failed=True),
    Case("by id or by name", dict(pool=SPEC, id=DB.id, name="db"), [],
         dict(msg="parameters are mutually exclusive: id|name"), failed=True),
]

SNAPSHOT_CASES = [
    Case("every snapshot", dict(pool=SPEC),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_snapshots", POOL, returns=[SNAP])],
         dict(changed=False, snapshots=[SNAP_FACTS])),
    Case("by name", dict(pool=SPEC, name="nightly"),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_snapshots", POOL, returns=[SNAP])],
         dict(snapshots=[SNAP_FACTS])),
    Case("of another volume: none", dict(pool=SPEC, source_volume_id=CLONE.id),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_snapshots", POOL, returns=[SNAP])],
         dict(changed=False, snapshots=[])),
    Case("a missing snapshot is an empty list", dict(pool=SPEC, id=snapshot_id_for("other")),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("list_snapshots", POOL, returns=[SNAP])],
         dict(snapshots=[])),
]


@pytest.mark.parametrize("case", VOLUME_CASES, ids=[c.id for c in VOLUME_CASES])
def test_volume_info(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(volume_info, case)


@pytest.mark.parametrize("case", SNAPSHOT_CASES, ids=[c.id for c in SNAPSHOT_CASES])
def test_snapshot_info(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(snapshot_info, case)
