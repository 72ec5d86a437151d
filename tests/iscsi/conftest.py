"""Real iSCSI tests: private tgtd instances on 127.0.0.1, a loop device on our own sparse file, libiscsi as initiator.

Each test gets its own tgtd (``setsid tgtd -f -C N --iscsi portal=127.0.0.1:PORT``,
N and PORT unique), stopped in teardown by deleting each target with
``--force`` and then ``--mode system --op delete`` (tgtd ignores SIGTERM).
Only the processes, loop devices and files created here are touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest
from libiscsi_client import library_name
from tgtd_testlib import Loop, MiB, Tgtd, start_tgtd


def _missing() -> List[str]:
    missing = [tool for tool in ("tgtd", "tgtadm", "tgt-admin", "losetup") if shutil.which(tool) is None]
    if library_name() is None:
        missing.append("libiscsi.so.7")
    return missing


_MISSING = _missing()


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Skip, with the exact reason, what cannot run here: tgtd tests without tgt/libiscsi, anything without root."""
    for item in items:
        if "tests/iscsi/" not in str(item.fspath):
            continue
        reasons = []
        if _MISSING and "tgtd" in getattr(item, "fixturenames", ()):
            reasons.append(f"needs {', '.join(_MISSING)} (packages tgt and libiscsi7; scripts/setup.sh installs them)")
        if os.geteuid() != 0:
            reasons.append("needs root (tgtd, losetup, iscsiadm node database)")
        if reasons:
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


@pytest.fixture
def tgtd() -> Iterator[Tgtd]:
    daemon = start_tgtd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    backing = tmp_path / "volume.img"
    with open(backing, "wb") as handle:
        handle.truncate(16 * MiB)
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                            check=True, timeout=10).stdout.strip()
    try:
        yield Loop(device, backing)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False, timeout=10)
