"""Helpers shared by the VM tier's test modules: reading the guest's verdicts (the ``image`` fixture is
in conftest.py)."""

from __future__ import annotations

import run_vm


def tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def check_lines(result: run_vm.VmResult) -> dict[str, str]:
    """{check: PASS|FAIL} from the guest's checks.txt (result share)."""
    verdicts: dict[str, str] = {}
    for line in result.files.get("checks.txt", "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "BASALT-CHECK":
            verdicts[parts[1]] = parts[2]
    return verdicts
