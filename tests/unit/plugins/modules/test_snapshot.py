"""basalt.csi.snapshot: module arguments in, core calls and result out (data-driven)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.errors import CommandFailed, Conflict, NotFound
from ansible_collections.basalt.csi.plugins.module_utils.model import (
    READY,
    Snapshot,
    Volume,
    snapshot_id_for,
    volume_id_for,
)
from ansible_collections.basalt.csi.plugins.modules import snapshot as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

MiB = 1 << 20
SPEC = "file:/pool"
NAME = "nightly"
SID = snapshot_id_for(NAME)
VOLUME = Volume(id=volume_id_for("db"), name="db", size=8 * MiB, pool="file", state=READY)
SNAPSHOT = Snapshot(id=SID, name=NAME, source_volume_id=VOLUME.id, size=8 * MiB, pool="file", state=READY)


class FakePool:
    kind = "file"
    location = "/pool"


POOL = FakePool()
FACTS = dict(id=SID, name=NAME, source_volume_id=VOLUME.id, size=8 * MiB, state=READY)
ABSENT = dict(id=SID, name=NAME, source_volume_id=None, size=None, state="absent")
MISSING = NotFound(f"snapshot {SID!r} does not exist in the file pool at /pool")
COPY_FAILED = CommandFailed(["fsfreeze", "--freeze", "/mnt/db"], 1, "fsfreeze: /mnt/db: freeze failed: Busy\n",
                            "freeze /mnt/db")

CASES = [
    Case(
        "a name with a control character is refused before the pool is opened",
        dict(name="nightly\x00", pool=SPEC, volume_name="db"),
        [],
        dict(msg="snapshot name contains control character(s) '\\x00'"),
        failed=True,
    ),
    Case(
        "a name over 128 bytes is refused",
        dict(name="✓" * 43, pool=SPEC, volume_name="db"),
        [],
        dict(msg="snapshot name is longer than 128 bytes in UTF-8"),
        failed=True,
    ),
    Case(
        "take a snapshot of a volume by name",
        dict(name=NAME, pool=SPEC, volume_name="db"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, raises=MISSING),
            call("find_volume_by_name", POOL, "db", returns=VOLUME),
            call("ensure_snapshot", POOL, NAME, VOLUME.id, check_mode=False, returns=(SNAPSHOT, True)),
        ],
        dict(changed=True, snapshot=FACTS),
    ),
    Case(
        "take it again: nothing changes",
        dict(name=NAME, pool=SPEC, volume_id=VOLUME.id),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, returns=SNAPSHOT),
            call("ensure_snapshot", POOL, NAME, VOLUME.id, check_mode=False, returns=(SNAPSHOT, False)),
        ],
        dict(changed=False, snapshot=FACTS),
    ),
    Case(
        "check mode with diff",
        dict(name=NAME, pool=SPEC, volume_id=VOLUME.id),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("get_snapshot", POOL, SID, raises=MISSING),
            call("ensure_snapshot", POOL, NAME, VOLUME.id, check_mode=True, returns=(SNAPSHOT, True)),
        ],
        dict(changed=True, diff=dict(before=ABSENT, after=FACTS)),
        check_mode=True, diff=True,
    ),
    Case(
        "a volume name that does not exist",
        dict(name=NAME, pool=SPEC, volume_name="nope"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, raises=MISSING),
            call("find_volume_by_name", POOL, "nope", returns=None),
        ],
        dict(msg="snapshot 'nightly': there is no volume named 'nope' in the file pool at /pool"),
        failed=True,
    ),
    Case(
        "same name, other volume: conflict",
        dict(name=NAME, pool=SPEC, volume_id="vol-" + "9" * 32),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, returns=SNAPSHOT),
            call("ensure_snapshot", POOL, NAME, "vol-" + "9" * 32, check_mode=False,
                 raises=Conflict(f"snapshot 'nightly' ({SID}) already exists of volume {VOLUME.id}")),
        ],
        dict(msg="already exists of volume"),
        failed=True,
    ),
    Case(
        "freeze fails: rc and stderr",
        dict(name=NAME, pool=SPEC, volume_id=VOLUME.id),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, raises=MISSING),
            call("ensure_snapshot", POOL, NAME, VOLUME.id, check_mode=False, raises=COPY_FAILED),
        ],
        dict(msg="snapshot 'nightly': freeze /mnt/db: fsfreeze failed (rc=1)", rc=1,
             stderr="fsfreeze: /mnt/db: freeze failed: Busy", cmd=["fsfreeze", "--freeze", "/mnt/db"]),
        failed=True,
    ),
    Case(
        "present needs a volume",
        dict(name=NAME, pool=SPEC),
        [],
        dict(msg="state is present but any of the following are missing: volume_id, volume_name"),
        failed=True,
    ),
    Case(
        "delete",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, returns=SNAPSHOT),
            call("delete_snapshot", POOL, SID, check_mode=False, returns=True),
        ],
        dict(changed=True, snapshot=ABSENT),
    ),
    Case(
        "delete in check mode, with diff",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("get_snapshot", POOL, SID, returns=SNAPSHOT),
            call("delete_snapshot", POOL, SID, check_mode=True, returns=True),
        ],
        dict(changed=True, diff=dict(before=FACTS, after=ABSENT)),
        check_mode=True, diff=True,
    ),
    Case(
        "delete what is not there",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("get_snapshot", POOL, SID, raises=MISSING),
            call("delete_snapshot", POOL, SID, check_mode=False, returns=False),
        ],
        dict(changed=False, snapshot=ABSENT),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_snapshot(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(module, case)
