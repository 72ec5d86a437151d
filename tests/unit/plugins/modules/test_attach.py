"""basalt.csi.attach: module arguments in, core calls and result out (data-driven)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

pytest.importorskip("ansible", reason="ansible-core is not installed (scripts/ansible-checks.sh installs it)")

from ansible_collections.basalt.csi.plugins.module_utils.errors import CommandFailed, InUse, NotFound
from ansible_collections.basalt.csi.plugins.module_utils.model import volume_id_for
from ansible_collections.basalt.csi.plugins.modules import attach as module
from ansible_collections.basalt.csi.tests.unit.plugins.modules.harness import Case, call

SPEC = "file:/pool"
VID = volume_id_for("db")
POOL = object()
MISSING = NotFound(f"volume {VID!r} does not exist in the file pool at /pool")
BUSY = InUse(f"volume {VID} (/dev/loop7) is mounted at /mnt/db: unmount it first")
# the attach is ioctls (basalt_core.losetup): the kernel's refusal typed as the losetup failure it replaces
LOOP_FAILED = CommandFailed(["LOOP_CTL_GET_FREE", "/dev/loop-control"], 1,
                            "/dev/loop-control: No such file or directory", "attach /pool/volumes/x.img")

CASES = [
    Case("attach by name", dict(pool=SPEC, volume_name="db"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_attached", POOL, VID, check_mode=False, returns=("/dev/loop7", True))],
         dict(changed=True, device="/dev/loop7", volume_id=VID)),
    Case("attach again by id: nothing changes", dict(pool=SPEC, volume_id=VID),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_attached", POOL, VID, check_mode=False, returns=("/dev/loop7", False))],
         dict(changed=False, device="/dev/loop7")),
    Case("attach in check mode, with diff", dict(pool=SPEC, volume_name="db"),
         [call("open_pool", SPEC, create_layout=False, returns=POOL),
          call("ensure_attached", POOL, VID, check_mode=True, returns=(None, True))],
         dict(changed=True, device=None, diff=dict(before=dict(attached=False), after=dict(attached=True))),
         check_mode=True, diff=True),
    Case("detach", dict(pool=SPEC, volume_name="db", state="detached"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_detached", POOL, VID, check_mode=False, returns=True)],
         dict(changed=True, device=None)),
    Case("detach what is not attached, with diff", dict(pool=SPEC, volume_name="db", state="detached"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_detached", POOL, VID, check_mode=False, returns=False)],
         dict(changed=False, diff=dict(before=dict(attached=False), after=dict(attached=False))), diff=True),
    Case("a mounted device is not detached", dict(pool=SPEC, volume_name="db", state="detached"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_detached", POOL, VID, check_mode=False, raises=BUSY)],
         dict(msg=f"volume {VID}: volume {VID} (/dev/loop7) is mounted at /mnt/db", changed=False), failed=True),
    Case("a missing volume fails naming it", dict(pool=SPEC, volume_name="db"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_attached", POOL, VID, check_mode=False, raises=MISSING)],
         dict(msg="does not exist in the file pool"), failed=True),
    Case("a refused attach with its rc and the kernel's text", dict(pool=SPEC, volume_name="db"),
         [call("open_pool", SPEC, create_layout=True, returns=POOL),
          call("ensure_attached", POOL, VID, check_mode=False, raises=LOOP_FAILED)],
         dict(rc=1, stderr="/dev/loop-control: No such file or directory", cmd=LOOP_FAILED.argv), failed=True),
    Case("a volume is named once", dict(pool=SPEC, volume_name="db", volume_id=VID), [],
         dict(msg="parameters are mutually exclusive: volume_id|volume_name"), failed=True),
    Case("a volume must be named", dict(pool=SPEC), [],
         dict(msg="one of the following is required: volume_id, volume_name"), failed=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attach(case: Case, run_case: Callable[[Any, Case], Dict[str, Any]]) -> None:
    run_case(module, case)
