"""The collection's modules on a real kernel: real ansible-playbook inside the VM (issue #6).

The host has no LIO and no kernel iSCSI initiator, so iscsi_export's LIO
backend and iscsi_attach's login run here: tests/vm/guest/check_modules.py
drives volume -> iscsi_export (LIO, CHAP, this VM's initiator IQN) ->
iscsi_attach (open-iscsi, /dev/sdX) -> mount -> write/read -> unmount ->
logout -> withdraw -> delete, every step twice.  ansible-core comes from the
host's wheel cache (pydeps.ensure_ansible, 9p share "ansible").
"""

from __future__ import annotations

import json
import sys

import build_image
import pydeps
import pytest
import run_vm
from vm_testlib import check_lines, tail

pytestmark = pytest.mark.vm

RUN_CHECKS = "tests/vm/guest/run_checks.sh"


def test_modules_through_ansible_playbook(image: build_image.Image) -> None:
    deps = pydeps.ensure_ansible()
    result = run_vm.run_vm(
        ["env", "BASALT_CHECK_TIMEOUT=1500", "sh", RUN_CHECKS, "modules"],
        timeout=1800, disks=1, disk_size_mib=1024, image=image, echo=sys.stdout,  # progress of a slow TCG run
        extra_shares={pydeps.ANSIBLE_MOUNT_TAG: deps},
    )
    assert result.verdict, f"{result.message}\n{tail(result.console)}"
    assert check_lines(result) == {"modules": "PASS"}, (
        f"{result.message}\n{tail(result.files.get('modules-playbook.log', result.console), 120)}")
    summary = json.loads(result.files["modules.json"])
    for step in ("volume", "exported", "attached", "mounted", "unmounted", "detached", "withdrawn", "deleted"):
        assert (summary[step]["changed"], summary[f"{step}_again"]["changed"]) == (True, False), step
    device = summary["attached"]["device"]
    assert device.startswith("/dev/sd") and summary["attached_again"]["device"] == device
    assert summary["mounted"]["mount"]["source"] == device
    assert summary["exported"]["export"]["serial"] and summary["withdrawn"]["export"]["exported"] is False
    assert result.rc == 0, result.message
