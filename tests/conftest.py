"""Shared pytest setup: make the agent package importable without installing it.

With ``pip install -e .`` ``basalt_agent`` is already importable and this is a
no-op; from a bare checkout it puts ``agent/`` on sys.path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"

if importlib.util.find_spec("basalt_agent") is None:
    sys.path.insert(0, str(AGENT_DIR))
