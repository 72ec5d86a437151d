"""The VM tier: chaos on a real kernel (device-mapper, thin pools, LIO and the kernel initiator), issue 10.

One boot, three checks inside it (tests/vm/guest), each on its own scratch disk:

* ``chaos_lvm_dm``: tests/conformance/test_chaos.py with ``--pool-kind lvm-dm``
  (``--pool lvm:VG --lvm-activation dm``: copies of volumes in use go through
  short-lived COW snapshots), and test_dm_startup.py: killed during a copy,
  start-up deactivates what the copy activated, a foreign active LV stays, the
  retry completes;
* ``chaos_lvmthin``: the same with ``--pool-kind lvmthin`` (thin LVs, thin
  snapshots; start-up releases the thin pool, keeps the staged volume);
* ``chaos_lio``: check_chaos_lio.py, the same workload through a storage agent
  (lvm-dm, LIO exports with CHAP) and a node agent staging over open-iscsi
  logins, either agent killed.

Each run kills the agents ``BASALT_CHAOS_KILLS`` times (``VM_KILLS`` by default:
the bounded run CI makes) with the seed ``BASALT_CHAOS_SEED`` (a fresh one,
printed, by default); it then asserts every acknowledged write intact and
nothing left (LVs, dm devices, loop devices, mounts, records, temp files, LIO
objects and saved entries, iSCSI sessions and node records).  The figures
(kills, calls, retries, seconds) are printed per run.
"""

from __future__ import annotations

import json
import os
import random

import build_image
import pydeps
import pytest
import run_vm
from vm_testlib import check_lines, junit_outcomes, junit_suite_properties, tail

pytestmark = pytest.mark.vm

VM_KILLS = 2  # per run in CI (the VM tier's time budget: docs/vm-tier.md); BASALT_CHAOS_KILLS runs longer
PYTEST_CHECKS = {  # check -> {test: expected JUnit outcome} (each dm start-up case is for one kind)
    "chaos_lvm_dm": {
        "test_chaos": "passed",
        "test_killed_during_a_copy_start_up_deactivates_what_the_copy_activated": "passed",
        "test_start_up_releases_the_thin_pool_and_keeps_staged_volumes": "skipped",
    },
    "chaos_lvmthin": {
        "test_chaos": "passed",
        "test_killed_during_a_copy_start_up_deactivates_what_the_copy_activated": "skipped",
        "test_start_up_releases_the_thin_pool_and_keeps_staged_volumes": "passed",
    },
}
CHECKS = [*PYTEST_CHECKS, "chaos_lio"]


def test_chaos_on_device_mapper_thin_pools_and_lio(image: build_image.Image) -> None:
    kills = int(os.environ.get("BASALT_CHAOS_KILLS", str(VM_KILLS)))
    seed = int(os.environ.get("BASALT_CHAOS_SEED", str(random.randrange(1 << 32))))
    print(f"VM chaos: {kills} kills per run, seed {seed} (BASALT_CHAOS_SEED={seed} replays it)")
    result = run_vm.run_vm(
        ["env", "BASALT_CHECK_TIMEOUT=900", f"BASALT_CHAOS_KILLS={kills}", f"BASALT_CHAOS_SEED={seed}",
         "sh", "tests/vm/guest/run_checks.sh", *CHECKS],
        timeout=2400, disks=len(CHECKS), disk_size_mib=8192, image=image, echo=None,
        extra_shares={pydeps.MOUNT_TAG: pydeps.ensure()},
    )
    print(result.console)
    assert result.verdict, f"{result.message}\n{tail(result.console)}"
    verdicts = check_lines(result)
    figures: dict[str, dict[str, int]] = {}
    for check, expected in PYTEST_CHECKS.items():
        report = result.files.get(check.replace("_", "-") + ".xml", "<testsuites/>")
        outcomes = junit_outcomes(report)
        assert outcomes == expected, f"{check}: {outcomes}\n{tail(result.console, 200)}"
        figures[check] = {name.removeprefix("chaos_"): int(value)
                          for name, value in junit_suite_properties(report).items() if name.startswith("chaos_")}
    lio = result.files.get("chaos-lio.json")
    assert verdicts.get("chaos_lio") == "PASS" and lio, f"chaos_lio: {verdicts}\n{tail(result.console, 200)}"
    figures["chaos_lio"] = json.loads(lio)
    for check in CHECKS:
        print(f"VM chaos {check}: " + ", ".join(f"{value} {name}" for name, value in figures[check].items()))
        assert verdicts.get(check) == "PASS", f"check {check}: {verdicts.get(check)}"
        assert figures[check]["kills"] >= kills, figures[check]
    assert result.rc == 0, result.message
