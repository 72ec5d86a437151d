"""basalt.csi.volume: module arguments in, core calls and result out (data-driven)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.errors import CommandFailed, InUse, InvalidRequest, NoSpace
from ansible_collections.basalt.csi.plugins.module_utils.model import (
    READY,
    SOURCE_SNAPSHOT,
    ContentSource,
    Volume,
    volume_id_for,
)
from ansible_collections.basalt.csi.plugins.modules import volume as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

MiB = 1 << 20
SPEC = "file:/pool"
NAME = "pvc-ünï✓"
VID = volume_id_for(NAME)
SNAP = "snap-" + "1" * 32


class FakePool:
    kind = "file"
    unit = MiB
    location = "/pool"

    def image_path(self, volume_id: str) -> str:
        return f"/pool/volumes/{volume_id}.img"


POOL = FakePool()


def vol(size: int, source: Any = None) -> Volume:
    return Volume(id=VID, name=NAME, size=size, pool="file", source=source, state=READY)


def facts(size: Any, state: str = READY, source: Any = None) -> Dict[str, Any]:
    return dict(id=VID, name=NAME, size=size, pool=SPEC, source=source, state=state,
                path=f"/pool/volumes/{VID}.img" if size else None)


ABSENT = facts(None, "absent")
# the detach is an ioctl (basalt_core.losetup): the kernel's refusal typed as the losetup failure it replaces
FAIL = CommandFailed(["LOOP_CLR_FD", "/dev/loop7"], 1, "/dev/loop7: No such device or address", "detach /dev/loop7")

CASES = [
    Case(
        "create, quantity rounded up to the pool unit",
        dict(name=NAME, pool=SPEC, size="7340033"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 8 * MiB, source=None, check_mode=False, returns=(vol(8 * MiB), True)),
        ],
        dict(changed=True, volume=facts(8 * MiB)),
    ),
    Case(
        "10G is 10^10 bytes (decimal), rounded up to the pool unit",
        dict(name=NAME, pool=SPEC, size="10G"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 9537 * MiB, source=None, check_mode=False,
                 returns=(vol(9537 * MiB), True)),
        ],
        dict(changed=True, volume=facts(9537 * MiB)),
    ),
    Case(
        "1.5Gi is 1536 MiB",
        dict(name=NAME, pool=SPEC, size="1.5Gi"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 1536 * MiB, source=None, check_mode=False,
                 returns=(vol(1536 * MiB), True)),
        ],
        dict(changed=True, volume=facts(1536 * MiB)),
    ),
    Case(
        "create in check mode, with diff",
        dict(name=NAME, pool=SPEC, size="8Mi"),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 8 * MiB, source=None, check_mode=True, returns=(vol(8 * MiB), True)),
        ],
        dict(changed=True, diff=dict(before=ABSENT, after=facts(8 * MiB))),
        check_mode=True, diff=True,
    ),
    Case(
        "restore from a snapshot, size as an integer",
        dict(name=NAME, pool=SPEC, size=16 * MiB, source_snapshot=SNAP),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 16 * MiB, source=ContentSource(SOURCE_SNAPSHOT, SNAP),
                 check_mode=False, returns=(vol(16 * MiB, ContentSource(SOURCE_SNAPSHOT, SNAP)), True)),
        ],
        dict(changed=True, volume=facts(16 * MiB, source=dict(kind="snapshot", id=SNAP))),
    ),
    Case(
        "same size again: nothing changes",
        dict(name=NAME, pool=SPEC, size="8Mi"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(changed=False, volume=facts(8 * MiB)),
    ),
    Case(
        "no size, existing volume: nothing changes",
        dict(name=NAME, pool=SPEC),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(changed=False, volume=facts(8 * MiB)),
    ),
    Case(
        "larger size grows the volume",
        dict(name=NAME, pool=SPEC, size="1Gi"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("expand_volume", POOL, VID, 1024 * MiB, check_mode=False, returns=(vol(1024 * MiB), True)),
        ],
        dict(changed=True, volume=facts(1024 * MiB)),
    ),
    Case(
        "grow in check mode, with diff",
        dict(name=NAME, pool=SPEC, size="16Mi"),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("expand_volume", POOL, VID, 16 * MiB, check_mode=True, returns=(vol(16 * MiB), True)),
        ],
        dict(changed=True, diff=dict(before=facts(8 * MiB), after=facts(16 * MiB))),
        check_mode=True, diff=True,
    ),
    Case(
        "smaller size: at least that size, so a larger volume (grown since) is fine and unchanged",
        dict(name=NAME, pool=SPEC, size="4Mi"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(changed=False, volume=facts(8 * MiB)),
    ),
    Case(
        "smaller size in check mode: unchanged too",
        dict(name=NAME, pool=SPEC, size="4Mi"),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(changed=False, volume=facts(8 * MiB)),
        check_mode=True,
    ),
    Case(
        "smaller size with allow_shrink fails: the file pool cannot shrink",
        dict(name=NAME, pool=SPEC, size="4Mi", allow_shrink=True),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(msg="the file pool does not shrink volumes"),
        failed=True,
    ),
    Case(
        "missing volume and no size fails",
        dict(name=NAME, pool=SPEC),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
        ],
        dict(msg="size is needed to create it"),
        failed=True,
    ),
    Case(
        "existing volume with another source is a conflict",
        dict(name=NAME, pool=SPEC, size="8Mi", source_snapshot=SNAP),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
        ],
        dict(msg="another content source"),
        failed=True,
    ),
    Case(
        "no space is reported with the volume's name",
        dict(name=NAME, pool=SPEC, size="8Mi"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("ensure_volume", POOL, NAME, 8 * MiB, source=None, check_mode=False,
                 raises=NoSpace("the file pool at /pool has 0 bytes available")),
        ],
        dict(msg=f"volume {NAME!r}: the file pool at /pool has 0 bytes available"),
        failed=True,
    ),
    Case(
        "bad quantity",
        dict(name=NAME, pool=SPEC, size="ten gigs"),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(msg="is not a Kubernetes quantity"),
        failed=True,
    ),
    Case(
        "suffixes are case-sensitive: 10gi is no quantity",
        dict(name=NAME, pool=SPEC, size="10gi"),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(msg="suffixes are case-sensitive"),
        failed=True,
    ),
    Case(
        "m is milli, not a size",
        dict(name=NAME, pool=SPEC, size="10m"),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(msg="m is milli"),
        failed=True,
    ),
    Case(
        "zero bytes is no size",
        dict(name=NAME, pool=SPEC, size="0Gi"),
        [call("open_pool", SPEC, create_layout=True, returns=POOL)],
        dict(msg="size must be positive"),
        failed=True,
    ),
    Case(
        "unsupported pool spec",
        dict(name=NAME, pool="zfs:tank", size="8Mi"),
        [call("open_pool", "zfs:tank", create_layout=True, raises=InvalidRequest("pool 'zfs:tank' is not supported"))],
        dict(msg="is not supported"),
        failed=True,
    ),
    Case(
        "name longer than 128 bytes",
        dict(name="é" * 65, pool=SPEC, size="8Mi"),
        [],
        dict(msg="volume name is longer than 128 bytes in UTF-8"),
        failed=True,
    ),
    Case(
        "name with a control character: the rule the agent applies too",
        dict(name="pvc\nx", pool=SPEC, size="8Mi"),
        [],
        dict(msg="volume name contains control character(s) '\\n'"),
        failed=True,
    ),
    Case(
        "both sources",
        dict(name=NAME, pool=SPEC, size="8Mi", source_snapshot=SNAP, source_volume="vol-" + "2" * 32),
        [],
        dict(msg="mutually exclusive"),
        failed=True,
    ),
    Case(
        "delete",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("delete_volume", POOL, VID, check_mode=False, returns=True),
        ],
        dict(changed=True, volume=ABSENT),
    ),
    Case(
        "delete in check mode, with diff",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=False, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("delete_volume", POOL, VID, check_mode=True, returns=True),
        ],
        dict(changed=True, diff=dict(before=facts(8 * MiB), after=ABSENT)),
        check_mode=True, diff=True,
    ),
    Case(
        "delete what is not there",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=None),
            call("delete_volume", POOL, VID, check_mode=False, returns=False),
        ],
        dict(changed=False, volume=ABSENT),
    ),
    Case(
        "delete an attached volume is refused",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("delete_volume", POOL, VID, check_mode=False,
                 raises=InUse(f"volume {VID} is in use: attached as /dev/loop7")),
        ],
        dict(msg="attached as /dev/loop7"),
        failed=True,
    ),
    Case(
        "a failing tool reports rc and stderr",
        dict(name=NAME, pool=SPEC, state="absent"),
        [
            call("open_pool", SPEC, create_layout=True, returns=POOL),
            call("find_volume_by_name", POOL, NAME, returns=vol(8 * MiB)),
            call("delete_volume", POOL, VID, check_mode=False, raises=FAIL),
        ],
        dict(msg=f"volume {NAME!r}: detach /dev/loop7: LOOP_CLR_FD failed (rc=1)", rc=1,
             stderr="/dev/loop7: No such device or address", cmd=FAIL.argv),
        failed=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_volume(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(module, case)
