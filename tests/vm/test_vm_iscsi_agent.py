"""The VM tier: iSCSI THROUGH THE AGENT on a real kernel (LIO target, open-iscsi initiator, dm-multipath).

Each scenario is one boot with all its checks inside (tests/vm/guest):

* one VM, two agents (storage host with ``--pool lvm:VG --lvm-activation dm``
  and ``--iscsi-backend lio``; node with its own node id): the whole CSI life
  of a volume over a real kernel login, a refused CHAP secret and initiator
  IQN, LIO's saved config restoring the export, a read-only publication
  (check_agent_iscsi.py); and a volume on two portals staged on its
  dm-multipath map with multipathd running (check_agent_multipath.py);
* two VMs on a private QEMU network: the storage VM's agent exports, the
  node VM's agent stages, the data is checked on the storage VM's LV
  (check_agent_two_host.py).

The agents' Python packages come from the host's wheel cache (pydeps.py).
"""

from __future__ import annotations

import build_image
import pydeps
import pytest
import run_vm
from vm_testlib import check_lines, tail

pytestmark = pytest.mark.vm

ONE_VM_CHECKS = ["agent_iscsi", "agent_multipath"]
TWO_HOST = "tests/vm/guest/check_agent_two_host.py"


def test_iscsi_through_the_agents_in_one_vm(image: build_image.Image) -> None:
    """LIO export + open-iscsi stage through the agents' RPCs, then two portals under dm-multipath."""
    result = run_vm.run_vm(
        ["env", "BASALT_CHECK_TIMEOUT=600", "sh", "tests/vm/guest/run_checks.sh", *ONE_VM_CHECKS],
        timeout=1500, disks=len(ONE_VM_CHECKS), disk_size_mib=4096, image=image, echo=None,
        extra_shares={pydeps.MOUNT_TAG: pydeps.ensure()},
    )
    print(result.console)
    assert result.verdict, f"{result.message}\n{tail(result.console)}"
    verdicts = check_lines(result)
    for check in ONE_VM_CHECKS:
        assert verdicts.get(check) == "PASS", f"check {check}: {verdicts.get(check)}\n{tail(result.console, 150)}"
    assert result.rc == 0, result.message


def test_iscsi_through_the_agents_across_two_vms(image: build_image.Image) -> None:
    """Storage VM (agent: create, publish over LIO, check the LV, unpublish, delete) and node VM (agent:
    stage over the private network, publish, write, unstage), coordinated over HTTP between the guests."""
    storage, node = run_vm.run_pair(
        ["python3", TWO_HOST, "storage"], ["python3", TWO_HOST, "node"], timeout=1200, image=image, echo=None,
        extra_shares={pydeps.MOUNT_TAG: pydeps.ensure()},
    )
    print(storage.console)
    print(node.console)
    assert check_lines(node) == {"agent_two_host_node": "PASS"}, f"{node.message}\n{tail(node.console, 150)}"
    assert check_lines(storage) == {"agent_two_host_storage": "PASS"}, \
        f"{storage.message}\n{tail(storage.console, 150)}"
    assert (storage.rc, node.rc) == (0, 0)
