"""Make the storage core importable as ``basalt_core`` when it is not installed.

``pip install -e .`` maps ``plugins/module_utils`` to ``basalt_core``; under
``ansible-test units`` (a venv holding only ansible-core and pytest) nothing
installs it, so the unit tests' shared fixtures alias the package to its folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("basalt_core") is None:  # pragma: no cover - depends on the environment
    _CORE = Path(__file__).resolve().parents[1] / "plugins" / "module_utils"
    _spec = importlib.util.spec_from_file_location(
        "basalt_core", _CORE / "__init__.py", submodule_search_locations=[str(_CORE)]
    )
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["basalt_core"] = _module
    _spec.loader.exec_module(_module)
