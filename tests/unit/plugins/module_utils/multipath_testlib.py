"""The VM tier's multipath recordings (multipath_recorded), for test_multipath and test_iscsi_attach_core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Union

from basalt_core import multipath

RECORDED = Path(__file__).parent / "multipath_recorded"
SHOW_DAEMON = ["multipathd", "show", "daemon"]


def recorded(name: str) -> str:
    """A recording without its ``# argv -> rc`` header line."""
    return (RECORDED / name).read_text().split("\n", 1)[1]


def sysfs_tree() -> Dict[str, Any]:
    """sysfs.json: paths under /sys; a list is a directory's entries, a string a file's content."""
    data: Dict[str, Any] = json.loads((RECORDED / "sysfs.json").read_text())
    return data


def build_tree(root: Path, tree: Dict[str, Union[str, List[str]]]) -> None:
    """Directories (listed entries become empty sub-directories, as sysfs links list) and files."""
    for path, value in tree.items():
        if isinstance(value, list):
            (root / path).mkdir(parents=True, exist_ok=True)
            for entry in value:
                (root / path / entry).mkdir(exist_ok=True)
        else:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(value)


def the_map(tree: Dict[str, Any]) -> multipath.Map:
    """What the recording says: the one dm holder of the path disks."""
    (kernel_name,) = {h for key, value in tree.items() if key.endswith("/holders") for h in value}
    return multipath.Map(tree[f"block/{kernel_name}/dm/name"].strip(), kernel_name,
                         tree[f"block/{kernel_name}/dm/uuid"].strip(), tuple(tree[f"block/{kernel_name}/slaves"]))
