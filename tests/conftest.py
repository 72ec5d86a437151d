"""Make every test import the tree it belongs to, installed or not.

``pip install -e .`` maps ``plugins/module_utils`` to ``basalt_core`` and
``agent/basalt_agent`` to ``basalt_agent``; an editable install of *another*
checkout (or a wheel) would otherwise answer those imports, and the suite would
test code other than this tree's. So mirror the installed layout with symlinks
in a private directory, put it first on ``sys.path`` and on ``PYTHONPATH`` (for
the agents, playbooks and helpers the tests start), and refuse to run when the
imported packages still come from elsewhere.

Where the checkout has tests/zip_bytecode_site (the built collection does not), the processes the tests
start also cache the bytecode of what they import from zip archives: Ansible's modules (see there).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]
_PACKAGES = {
    "basalt_core": TREE / "plugins" / "module_utils",
    "basalt_agent": TREE / "agent" / "basalt_agent",
}


def _link_dir() -> Path:
    """A directory of links named as the installed packages, one per tree."""
    digest = hashlib.sha256(str(TREE).encode()).hexdigest()[:12]
    links = Path(tempfile.gettempdir()) / f"basalt-tree-{digest}"
    links.mkdir(mode=0o755, exist_ok=True)
    for name, source in _PACKAGES.items():
        if not source.is_dir():  # ansible-test's copy of the collection ships no agent
            continue
        link = links / name
        if link.is_symlink() and os.readlink(link) == str(source):
            continue
        staged = links / f".{name}.{os.getpid()}"
        os.symlink(source, staged)
        os.replace(staged, link)
    return links


def _use_this_tree() -> None:
    links = str(_link_dir())
    if links not in sys.path:
        sys.path.insert(0, links)
    inherited = [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part and part != links]
    os.environ["PYTHONPATH"] = os.pathsep.join([links, *inherited])
    for name, source in _PACKAGES.items():
        if not source.is_dir():
            continue
        module = __import__(name)
        origin = Path(module.__file__ or "").resolve().parent
        if origin != source:
            raise RuntimeError(f"{name} imports from {origin}, not from the tree under test ({source})")


_use_this_tree()
if (TREE / "tests" / "zip_bytecode_site").is_dir():
    import zip_bytecode_site

    zip_bytecode_site.enable()
