"""Recorded tool output ships with the collection only where a shipped test reads it (galaxy.yml build_ignore
keeps the reference-only recordings out), so the built collection carries no data nothing uses."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import List

import yaml

TREE = Path(__file__).resolve().parents[2]
SHIPPED_TESTS = TREE / "tests" / "unit" / "plugins"
NOT_DATA = {"README.md", "record.sh"}


def ignored(relative: str, patterns: List[str]) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def test_every_shipped_recording_is_read_by_a_shipped_test() -> None:
    patterns = yaml.safe_load((TREE / "galaxy.yml").read_text())["build_ignore"]
    code = "\n".join(path.read_text() for path in SHIPPED_TESTS.rglob("*.py") if not ignored(
        str(path.relative_to(TREE)), patterns))
    recordings = [path for path in SHIPPED_TESTS.glob("module_utils/*_recorded/*") if path.name not in NOT_DATA]
    assert len(recordings) > 50  # the glob finds them
    shipped = [path for path in recordings if not ignored(str(path.relative_to(TREE)), patterns)]
    unread = [str(path.relative_to(TREE)) for path in shipped if path.name.split(".")[0] not in code]
    assert unread == [], "shipped but read by no shipped test: ignore them in galaxy.yml, or test with them"
    assert len(shipped) < len(recordings)  # the reference-only ones are left out
