"""The VM image builder's mirror comes from the machine's own apt sources (tests/vm/apt_sources.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))
import apt_sources  # found through the path set above


def write(root: Path, name: str, text: str) -> None:
    path = root / "etc" / "apt" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BASALT_VM_MIRROR", raising=False)


def test_deb822_sources_give_the_first_uri_serving_the_suite_with_main(tmp_path: Path) -> None:
    write(tmp_path, "sources.list.d/a-other.sources",
          "Types: deb\nURIs: https://vendor.invalid/apt\nSuites: nodistro\nComponents: main\n")
    write(tmp_path, "sources.list.d/debian.sources",
          "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
          "Components: main contrib\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n"
          "Suites: bookworm-security\nComponents: main\n")
    write(tmp_path, "sources.list.d/x.list.disabled", "deb http://disabled.invalid/debian bookworm main\n")
    assert apt_sources.debian_mirror("bookworm", str(tmp_path)) == "http://mirror.invalid/debian"


def test_one_line_sources_list_comes_first_and_options_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, "sources.list", "# deb http://commented.invalid/debian bookworm main\n"
          "deb-src http://src.invalid/debian bookworm main\n"
          "deb [arch=amd64 signed-by=/k.gpg] http://proxy.invalid:3142/debian bookworm main\n")
    write(tmp_path, "sources.list.d/debian.sources",
          "Types: deb\nURIs: http://later.invalid/debian\nSuites: bookworm\nComponents: main\n")
    assert apt_sources.debian_mirror("bookworm", str(tmp_path)) == "http://proxy.invalid:3142/debian"


def test_disabled_stanzas_are_skipped_and_the_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "sources.list.d/debian.sources",
          "Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\n")
    with pytest.raises(SystemExit, match="BASALT_VM_MIRROR"):
        apt_sources.debian_mirror("bookworm", str(tmp_path))
    monkeypatch.setenv("BASALT_VM_MIRROR", "http://override.invalid/debian/")
    assert apt_sources.debian_mirror("bookworm", str(tmp_path)) == "http://override.invalid/debian"
