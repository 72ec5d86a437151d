"""Unit-test fixtures: a scripted command runner for the core's tool wrappers.

Each case lists the exact argv the core must run and the output the real
tool gave (recorded on Debian 12 / util-linux 2.38, e2fsprogs 1.47, xfsprogs 6.1).

Shipped with the core's tests (tests/unit/plugins/module_utils), which import
``basalt_core`` (tests/conftest.py links this tree's core under that name,
under ansible-test units too) and their helpers (``lvm_testlib``,
``multipath_testlib``) by plain name: ansible-test imports test files as
collection packages, so the helpers' directory goes on sys.path here.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from basalt_core.errors import CommandFailed
from basalt_core.runner import CommandResult

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins", "module_utils")
if HELPERS not in sys.path:
    sys.path.insert(0, HELPERS)

# (argv, rc, stdout, stderr)
Call = Tuple[List[str], int, str, str]


@dataclass
class ScriptedRunner:
    """Stands in for basalt_core.runner.run and checks the calls, in order."""

    script: List[Call]
    ran: List[List[str]] = field(default_factory=list)
    #: the secrets= given with each call, so tests can check what gets redacted
    secrets: List[List[str]] = field(default_factory=list)
    #: the env= and stdin= given with each call (None: not given)
    envs: List[Optional[Dict[str, str]]] = field(default_factory=list)
    stdins: List[Optional[str]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], *, check: bool = True, what: Optional[str] = None,
                 secrets: Sequence[str] = (), env: Optional[Dict[str, str]] = None, stdin: Optional[str] = None,
                 **_: Any) -> CommandResult:
        assert self.script, f"unexpected command {list(argv)}"
        expected, rc, stdout, stderr = self.script.pop(0)
        assert list(argv) == expected
        self.ran.append(list(argv))
        self.secrets.append(list(secrets))
        self.envs.append(None if env is None else dict(env))
        self.stdins.append(stdin)
        if check and rc != 0:
            raise CommandFailed(argv, rc, stderr, what)
        return CommandResult(list(argv), rc, stdout, stderr)


MODULES_USING_RUN = ("blkid", "filesystem", "mount", "lvm_command", "tgt", "tgt_socket", "iscsiadm",
                     "multipath")


@dataclass
class FakeLoopDevices:
    """A fake sysfs for the loop-device lookup (``basalt_core.losetup.SYS_BLOCK``), as the kernel keeps it:
    every device node has a directory, a bound one also a ``loop`` directory; each attribute ends with a
    newline."""

    sys_block: str
    #: the fake /proc/partitions: a bound device (with a capacity) is listed
    partitions: str = ""

    def add(self, number: int, backing_file: str, offset: int = 0, size_limit: int = 0,
            read_only: bool = False, autoclear: bool = False) -> str:
        attributes = {"loop/backing_file": backing_file, "loop/offset": str(offset),
                      "loop/sizelimit": str(size_limit), "loop/autoclear": "1" if autoclear else "0",
                      "ro": "1" if read_only else "0"}
        for name, text in attributes.items():
            path = os.path.join(self.sys_block, f"loop{number}", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        with open(self.partitions, "a", encoding="utf-8") as table:
            table.write(f"   7    {number:>5}       8192 loop{number}\n")
        return f"/dev/loop{number}"

    def remove(self, number: int) -> None:
        """Unbind: the kernel removes the ``loop`` directory, the device node stays."""
        shutil.rmtree(os.path.join(self.sys_block, f"loop{number}", "loop"))
        with open(self.partitions, encoding="utf-8") as table:
            rows = [row for row in table if not row.rstrip().endswith(f" loop{number}")]
        with open(self.partitions, "w", encoding="utf-8") as table:
            table.writelines(rows)


@pytest.fixture
def loop_devices(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> FakeLoopDevices:
    """The lookup reads a fake sysfs with three unbound devices (and a name that is no device)."""
    fake = FakeLoopDevices(os.path.join(str(tmp_path), "sys-devices-virtual-block"),
                           os.path.join(str(tmp_path), "proc-partitions"))
    with open(fake.partitions, "w", encoding="utf-8") as table:
        table.write("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
    for number in range(3):
        os.makedirs(os.path.join(fake.sys_block, f"loop{number}"))
    os.makedirs(os.path.join(fake.sys_block, "loop-control-not-a-device"))
    monkeypatch.setattr("basalt_core.losetup.SYS_BLOCK", fake.sys_block)
    monkeypatch.setattr("basalt_core.losetup.PROC_PARTITIONS", fake.partitions)

    def refused(*args: Any) -> None:
        raise AssertionError(f"a loop ioctl {args[1:2]} on the fake sysfs: it would act on this host's devices")
    # attach and detach are ioctls on /dev, which the fake does not replace: they must never reach this
    # host's devices, whose numbers the fake's names share
    monkeypatch.setattr("basalt_core.losetup.fcntl", types.SimpleNamespace(ioctl=refused))
    return fake


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch, loop_devices: FakeLoopDevices) -> Iterator[Any]:
    """``script(calls)`` installs a ScriptedRunner in every tool module and returns it.

    The loop-device lookup reads sysfs, not a command: here it reads the empty fake of ``loop_devices``
    (never this host's devices); the device nodes the scripted tools would make are there at once."""
    runners: Dict[str, ScriptedRunner] = {}
    monkeypatch.setattr("basalt_core.device_wait.wait_for_node", lambda _path, _timeout, **_kwargs: True)
    # tgt requests go through tgtadm here (its argv is what the scripts pin); test_tgt*.py also run them over
    # tgtd's socket (tgt_wire.py)
    monkeypatch.setattr("basalt_core.tgt.socket_client", lambda *_args: None)

    def install(calls: List[Call]) -> ScriptedRunner:
        runner = ScriptedRunner(list(calls))
        for name in MODULES_USING_RUN:
            monkeypatch.setattr(f"basalt_core.{name}.run", runner)
        runners["current"] = runner
        return runner

    yield install
    if "current" in runners:
        assert runners["current"].script == [], "commands expected but never run"


@pytest.fixture
def lvm_script(script: Callable[[List[Call]], Any]) -> Iterator[Callable[[List[Call]], Any]]:
    """``script``, plus the checks every LVM command must pass (stdin at EOF, fd warnings off)."""
    runners: List[Any] = []

    def install(calls: List[Call]) -> Any:
        runners.append(script(calls))
        return runners[-1]

    yield install
    for runner in runners:
        assert runner.stdins == [""] * len(runner.ran), "LVM must see EOF on stdin so that a prompt is answered 'n'"
        assert all(env is not None and env.get("LVM_SUPPRESS_FD_WARNINGS") == "1" for env in runner.envs)
