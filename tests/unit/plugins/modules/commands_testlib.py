"""Scripted external commands for the iSCSI modules' unit tests: the exact argv in, the tool's output out.

The module runs the real storage core; only ``runner.run`` in the tool
wrappers named here is replaced, by a script of (argv, rc, stdout, stderr)
in the format the real tools print (see tests/unit/plugins/module_utils/iscsi_recorded/README.md
for where each format was recorded: tgt 1.0.85, open-iscsi 2.1.8).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from ansible_collections.basalt.csi.plugins.module_utils.errors import CommandFailed
from ansible_collections.basalt.csi.plugins.module_utils.runner import CommandResult

# (argv, rc, stdout, stderr)
Command = Tuple[List[str], int, str, str]
CORE = "ansible_collections.basalt.csi.plugins.module_utils"


def ok(argv: List[str], stdout: str = "") -> Command:
    return (argv, 0, stdout, "")


def fails(argv: List[str], rc: int, stderr: str) -> Command:
    return (argv, rc, "", stderr)


class Commands:
    """Stands in for ``run`` and checks each command, in order; keeps the secrets= each was given."""

    def __init__(self, script: Sequence[Command]) -> None:
        self.pending = list(script)
        self.secrets: List[List[str]] = []

    def __call__(self, argv: Sequence[str], *, check: bool = True, what: Optional[str] = None,
                 secrets: Sequence[str] = (), **_: Any) -> CommandResult:
        assert self.pending, f"unexpected command {list(argv)}"
        expected, rc, stdout, stderr = self.pending.pop(0)
        assert list(argv) == expected, f"command {len(self.secrets) + 1}: got {list(argv)}, expected {expected}"
        self.secrets.append(list(secrets))
        if check and rc != 0:
            raise CommandFailed(argv, rc, stderr, what)
        return CommandResult(list(argv), rc, stdout, stderr)


def install(monkeypatch: Any, script: Sequence[Command], tools: Sequence[str]) -> Commands:
    """Put one script in place of ``run`` in the core's wrappers of *tools* (e.g. ``("tgt",)``)."""
    commands = Commands(script)
    for tool in tools:
        monkeypatch.setattr(f"{CORE}.{tool}.run", commands)
    return commands
