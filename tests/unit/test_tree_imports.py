"""The suite tests the tree it belongs to, and refuses to start when it would test another (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TREE = Path(__file__).resolve().parents[2]
# Another checkout's basalt_core: a size parser that accepts anything.
IMPOSTOR = "def parse_size(text):\n    return 1\n"
RUN_PYTEST = ("import sys, pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
              "'tests/unit/plugins/module_utils/test_sizes.py', '-k', 'test_parse_size_refuses']))")


def impostor(tmp_path: Path) -> Path:
    package = tmp_path / "elsewhere" / "basalt_core"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sizes.py").write_text(IMPOSTOR)
    return package.parent


def run(code: str, pythonpath: str) -> "subprocess.CompletedProcess[str]":
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-c", code], cwd=TREE, env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_other_basalt_core_first_on_pythonpath_is_not_what_the_tests_import(tmp_path: Path) -> None:
    result = run(RUN_PYTEST, str(impostor(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr  # the impostor would fail every refusal


def test_the_suite_refuses_to_start_when_basalt_core_was_imported_from_elsewhere(tmp_path: Path) -> None:
    elsewhere = impostor(tmp_path)
    result = run("import basalt_core; " + RUN_PYTEST, str(elsewhere))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"basalt_core imports from {elsewhere / 'basalt_core'}, not from the tree under test" in output
    assert " passed" not in output and " failed" not in output  # no test ran
