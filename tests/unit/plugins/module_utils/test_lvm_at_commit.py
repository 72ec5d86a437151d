"""lvremove answered at its commit line: ``lvm.remove(at_commit=True)`` returns once lvremove says the LV is
removed, while the tool still runs (its metadata backup and teardown: 30-90 ms of a real lvremove here, most
of it the kernel's ``io_destroy``, measured with strace).

A stand-in named ``lvremove`` goes first on PATH: a real lvremove outlives its line by those few milliseconds
only, too short to look at from a test; this one prints exactly lvremove's line, then waits for the test.  The
real lvremove runs the same path in tests/conformance (lvm-loop: test_lvm_pool_answers.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_runner import alive

from basalt_core import lvm, runner
from basalt_core.errors import CommandFailed

STAND_IN = """#!/bin/sh
echo $$ > {pid}
echo '  Logical volume "{lv}" successfully removed.'
i=0; while [ ! -e {go_on} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
exit {rc}
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lv: str, rc: int = 0) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid, go_on = tmp_path / "pid", tmp_path / "go-on"
    tool = bin_dir / "lvremove"
    tool.write_text(STAND_IN.format(pid=pid, lv=lv, go_on=go_on, rc=rc))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return pid, go_on


def running(pid_file: Path) -> bool:
    return alive(int(pid_file.read_text()))


def test_remove_at_commit_returns_at_lvremoves_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid, go_on = stand_in(tmp_path, monkeypatch, "lv1")
    lvm.remove("vg1", "lv1", at_commit=True)
    assert running(pid), "remove returned only at lvremove's exit"
    go_on.touch()
    assert runner.settle(10) and not running(pid)


def test_remove_waits_for_the_exit_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without *at_commit* (device-mapper), or when the line is another LV's: the exit, and its rc, count."""
    pid, go_on = stand_in(tmp_path, monkeypatch, "lv1", rc=5)
    go_on.touch()
    with pytest.raises(CommandFailed, match=r"rc=5"):
        lvm.remove("vg1", "lv1")
    with pytest.raises(CommandFailed, match=r"rc=5"):
        lvm.remove("vg1", "lv2", at_commit=True)
    assert not running(pid)
