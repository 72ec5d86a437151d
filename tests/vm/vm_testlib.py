"""Helpers shared by the VM tier's test modules: reading the guest's verdicts, and a fake QEMU for the
runners' own tests (the ``image`` fixture is in conftest.py)."""

from __future__ import annotations

import os
import stat
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import build_image
import pytest
import run_vm

# CI (scripts/test.sh) sets this: there, a tier that cannot run is a failure, not a skip.
REQUIRED = os.environ.get("BASALT_VM_REQUIRED") == "1"


def unavailable(reason: str) -> None:
    """Skip the test for *reason*; fail instead where the tier is required."""
    if REQUIRED:
        pytest.fail(f"{reason} (BASALT_VM_REQUIRED=1: the VM tier must run here)", pytrace=False)
    pytest.skip(reason)


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


def junit_outcomes(xml: str) -> dict[str, str]:
    """{test name: passed|failed|error|skipped} from a JUnit report."""
    outcomes: dict[str, str] = {}
    for case in ET.fromstring(xml).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag if tag != "failure" else "failed"
        outcomes[case.get("name", "?")] = outcome
    return outcomes


def junit_suite_properties(xml: str) -> dict[str, str]:
    """The test suites' properties (pytest's ``record_testsuite_property``) from a JUnit report."""
    return {prop.get("name", "?"): prop.get("value", "")
            for suite in ET.fromstring(xml).iter("testsuite") for prop in suite.findall("properties/property")}


def fake_image(tmp_path: Path) -> build_image.Image:
    files = {}
    for name in ("vmlinuz", "initrd.img", "root.img"):
        files[name] = tmp_path / name
        files[name].write_text("")
    return build_image.Image(tmp_path, files["vmlinuz"], files["initrd.img"], files["root.img"], {})


def fake_qemu(tmp_path: Path, body: str) -> str:
    """A stand-in for qemu-system-x86_64: $RESULTS is the results share; it
    records its temp dir ($TMPDIR) in tmp_path/tmpdir."""
    script = tmp_path / "fake-qemu"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$TMPDIR" > {tmp_path}/tmpdir\n'
        'RESULTS=$(printf "%s\\n" "$@" | sed -n "s/.*path=\\([^,]*\\),mount_tag=results.*/\\1/p")\n' + body
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def gone(pid: int, wait: float = 5.0) -> bool:
    """Whether process `pid` is dead (or a zombie) within `wait` seconds: a
    killed child may take a moment to be reaped by init."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False
