"""pytest setup of the VM tier: the ``vm`` marker and the import path.

Select or deselect the tier from the main suite with ``-m vm`` /
``-m "not vm"``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots a real kernel under QEMU (slow: about 2 minutes)")
