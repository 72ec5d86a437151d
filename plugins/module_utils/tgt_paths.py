"""Where tgt's persistent config and Basalt's grant record live by default.

Apart from tgt.py so that what only names these paths (the agent's settings and
``--help``, the modules' argument specs) does not load the tgt backend itself.
"""

from __future__ import annotations

import os

from .model import DEFAULT_STATE_DIR

DEFAULT_CONF = "/etc/tgt/conf.d/basalt.conf"


def record_path_under(state_dir: str) -> str:
    """Where the grant record lives in a state directory (the agent's and the modules' default agree)."""
    return os.path.join(state_dir, "iscsi", "tgt-grants.json")


DEFAULT_RECORD = record_path_under(DEFAULT_STATE_DIR)
