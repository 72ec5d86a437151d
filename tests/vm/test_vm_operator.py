"""The VM tier: ``basalt doctor`` and ``basalt gc`` against LIO and the kernel's iSCSI initiator (issue #14).

The host has neither (tests/iscsi/test_operator_tgt.py covers tgt and open-iscsi's node database
here); tests/vm/guest/check_operator_leftovers.py makes a LIO leftover (a Basalt-named export with
an ACL that no volume record owns) and a kernel session leftover (a login to a Basalt target that no
node record names), beside an owned session, a foreign LIO target with its session and the fixture's
foreign LVs, and checks that doctor finds exactly the leftovers and gc removes exactly those.
"""

from __future__ import annotations

import build_image
import pydeps
import pytest
import run_vm
from vm_testlib import check_lines, tail

pytestmark = pytest.mark.vm

CHECK = "operator_leftovers"


def test_doctor_and_gc_find_and_remove_lio_and_session_leftovers(image: build_image.Image) -> None:
    result = run_vm.run_vm(
        ["env", "BASALT_CHECK_TIMEOUT=600", "sh", "tests/vm/guest/run_checks.sh", CHECK],
        timeout=900, disks=1, disk_size_mib=2048, image=image, echo=None,
        extra_shares={pydeps.MOUNT_TAG: pydeps.ensure()},
    )
    print(result.console)
    assert result.verdict, f"{result.message}\n{tail(result.console)}"
    assert check_lines(result) == {CHECK: "PASS"}, f"{result.message}\n{tail(result.console, 150)}"
    assert result.rc == 0, result.message
