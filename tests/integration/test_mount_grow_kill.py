"""basalt.csi.mount killed during its offline ext4 grow, then run again: the play's re-run converges as a retried
NodeStage does (tests/conformance/test_crash.py), on a real loop device with the real resize2fs and e2undo.

The module runs as Ansible runs it (a Python process given its arguments file); a wrapper ``resize2fs`` first on
its PATH (tests/conformance/crashpoints.py) SIGKILLs it while resize2fs is rewriting the filesystem.  This host
drops CAP_SYS_RESOURCE, so the module grows ext4 offline, the path under test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices, mkfs and mounts need root")

TREE = Path(__file__).resolve().parents[2]
SMALL, GROWN = 16 << 20, 64 << 20
_spec = importlib.util.spec_from_file_location("crashpoints", TREE / "tests" / "conformance" / "crashpoints.py")
assert _spec is not None and _spec.loader is not None
crashpoints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crashpoints)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[str]:
    """A loop device of GROWN bytes holding a SMALL-byte ext4 with one file, ``data``."""
    image = tmp_path / "vol.img"
    image.write_bytes(b"")
    os.truncate(image, SMALL)
    assert run("mkfs.ext4", "-q", str(image)).returncode == 0
    assert run("debugfs", "-w", "-R", f"write {__file__} data", str(image)).returncode == 0
    os.truncate(image, GROWN)
    loop = run("losetup", "--find", "--show", str(image)).stdout.strip()
    assert loop.startswith("/dev/loop")
    yield loop
    run("umount", str(tmp_path / "mnt"))
    run("losetup", "--detach", loop)


def mount_module(tmp_path: Path, device: str, points: Any) -> subprocess.CompletedProcess[str]:
    """Run basalt.csi.mount once, as Ansible would (arguments file, collection on the path)."""
    shim = tmp_path / "collections"
    if not shim.exists():
        (shim / "ansible_collections" / "basalt").mkdir(parents=True)
        (shim / "ansible_collections" / "basalt" / "csi").symlink_to(TREE)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "device": device, "path": str(tmp_path / "mnt"), "state_dir": str(tmp_path / "state")}}))
    env = dict(os.environ, PYTHONPATH=str(shim), **points.env())
    return subprocess.run([sys.executable, "-m", "ansible_collections.basalt.csi.plugins.modules.mount", str(args)],
                          capture_output=True, text=True, env=env, check=False, timeout=300)


def test_a_play_killed_during_the_grow_converges_when_run_again(tmp_path: Path, device: str) -> None:
    data = Path(__file__).read_text(encoding="utf-8")
    points = crashpoints.CrashPoints(str(tmp_path)).wrap("resize2fs")
    points.arm("resize2fs", "grown", watch=1, size=64 << 10)  # undo file 64 KiB: ~60 blocks rewritten
    killed = mount_module(tmp_path, device, points)
    fired = points.fired("resize2fs")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert fired["outcome"] == "during", fired  # resize2fs was rewriting the filesystem when the task died
    marks = sorted(os.listdir(tmp_path / "state" / "mount"))
    assert len(marks) == 2 and marks[0].endswith(".grow"), marks  # the mark and its undo file

    rerun = mount_module(tmp_path, device, points)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["changed"] is True and result["mount"]["mounted"] is True, result
    stat = os.statvfs(tmp_path / "mnt")
    assert stat.f_blocks * stat.f_frsize > GROWN - (8 << 20)  # grown: the old size was SMALL
    assert (tmp_path / "mnt" / "data").read_text(encoding="utf-8") == data
    assert os.listdir(tmp_path / "state" / "mount") == []
    assert run("umount", str(tmp_path / "mnt")).returncode == 0
    check = run("e2fsck", "-f", "-n", device)
    assert check.returncode == 0, check.stdout + check.stderr
    assert int(run("dumpe2fs", "-h", device).stdout.split("Block count:")[1].split()[0]) * 1024 == GROWN
