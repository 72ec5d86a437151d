"""basalt.csi.pool: module arguments in, core calls and result out (data-driven).

The core's pool_setup itself runs against real files in tests/unit/plugins/module_utils/test_pool_setup.py and
against real LVM in tests/unit/test_pool_setup_lvm.py.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.errors import InUse
from ansible_collections.basalt.csi.plugins.module_utils.pool_setup import PoolState
from ansible_collections.basalt.csi.plugins.module_utils.pool_spec import DEFAULTS, PoolSettings, parse_pool_spec
from ansible_collections.basalt.csi.plugins.modules import pool as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

GiB = 1 << 30
SPEC = "lvmthin:basalt/thin"
PARSED = parse_pool_spec(SPEC)
DISKS = ["/dev/sdb", "/dev/sdc"]
ABSENT = PoolState(SPEC, False, None)
THIN = PoolSettings(overprovision=4.0, capacity_limit=100 * GiB)
MADE = PoolState(SPEC, True, THIN.values("lvmthin"), tuple(DISKS), 0, 0, 50 * GiB)
CREATE = ["create VG basalt on /dev/sdb, /dev/sdc ...", "create thin pool basalt/thin of 90% ..."]

CASES = [
    Case(
        "create a thin pool on disks with its settings",
        dict(pool=SPEC, disks=DISKS, overprovision=4.0, capacity_limit="100Gi", max_volumes=5000),
        [
            call("describe_pool", PARSED, returns=ABSENT),
            call("stored_settings", PARSED, returns=None),
            call("ensure_pool", SPEC, THIN, disks=DISKS, max_volumes=5000, thin_pool_size=None, force=False,
                 check_mode=False, returns=CREATE),
            call("describe_pool", PARSED, returns=MADE),
        ],
        dict(changed=True, actions=CREATE, pool=MADE.to_dict()),
    ),
    Case(
        "an existing pool keeps the settings it stores when the task gives none",
        dict(pool=SPEC),
        [
            call("describe_pool", PARSED, returns=MADE),
            call("stored_settings", PARSED, returns=THIN),
            call("ensure_pool", SPEC, THIN, disks=[], max_volumes=1000, thin_pool_size=None, force=False,
                 check_mode=False, returns=[]),
            call("describe_pool", PARSED, returns=MADE),
        ],
        dict(changed=False, actions=[], pool=MADE.to_dict()),
    ),
    Case(
        "check mode predicts the settings, with diff",
        dict(pool=SPEC, thin_full_percent=80, thin_pool_size="20Gi"),
        [
            call("describe_pool", PARSED, returns=MADE),
            call("stored_settings", PARSED, returns=THIN),
            call("ensure_pool", SPEC, PoolSettings(overprovision=4.0, capacity_limit=100 * GiB, full_percent=80.0),
                 disks=[], max_volumes=1000, thin_pool_size=20 * GiB, force=False, check_mode=True,
                 returns=["store settings ..."]),
        ],
        dict(changed=True, diff=dict(before=MADE.to_dict(), after=dict(
            MADE.to_dict(), settings=dict(THIN.values("lvmthin"), full_percent=80.0)))),
        check_mode=True, diff=True,
    ),
    Case(
        "removal refused while volumes exist",
        dict(pool=SPEC, state="absent"),
        [
            call("describe_pool", PARSED, returns=MADE),
            call("remove_pool", SPEC, disks=[], force=False, check_mode=False,
                 raises=InUse("pool lvmthin:basalt/thin holds 3 volumes and 0 snapshots")),
        ],
        dict(msg="pool 'lvmthin:basalt/thin': pool lvmthin:basalt/thin holds 3 volumes"),
        failed=True,
    ),
    Case(
        "forced removal in check mode",
        dict(pool=SPEC, state="absent", force=True),
        [
            call("describe_pool", PARSED, returns=MADE),
            call("remove_pool", SPEC, disks=[], force=True, check_mode=True, returns=["remove VG basalt"]),
        ],
        dict(changed=True, actions=["remove VG basalt"], pool=ABSENT.to_dict()),
        check_mode=True,
    ),
    Case(
        "a capacity limit that is no quantity",
        dict(pool="file:/srv/pool", capacity_limit="lots"),
        [
            call("describe_pool", parse_pool_spec("file:/srv/pool"), returns=ABSENT),
            call("stored_settings", parse_pool_spec("file:/srv/pool"), returns=None),
        ],
        dict(msg="is not a Kubernetes quantity"),
        failed=True,
    ),
    Case(
        "an unsupported spec",
        dict(pool="zfs:tank"),
        [],
        dict(msg="pool 'zfs:tank': pool 'zfs:tank' is not supported"),
        failed=True,
    ),
]

assert DEFAULTS.overprovision != THIN.overprovision  # the cases tell given settings from defaults


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pool(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(module, case)
