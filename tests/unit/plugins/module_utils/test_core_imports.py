"""The core's imports run one way: the graph of its modules importing each other has no circle (lazy imports
inside functions count too), and the core reaches its own modules only relatively, never a face."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Union

import basalt_core

CORE = Path(basalt_core.__file__).resolve().parent  # plugins/module_utils, under either import name
FACES = ("ansible", "basalt_agent", "basalt_core")  # absolute imports the core must never make


def imports_of(path: Path) -> List[Union[ast.Import, ast.ImportFrom]]:
    return [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.Import, ast.ImportFrom))]


def import_graph() -> Dict[str, Set[str]]:
    """Each core module -> the core modules it imports (``from .x import``, ``from . import x``)."""
    modules = {path.stem: path for path in CORE.glob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        found: Set[str] = set()
        for node in imports_of(path):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[name] = found & modules.keys()
    return graph


def circle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import circle (a path that returns to its start), or None."""
    done: Set[str] = set()

    def visit(name: str, path: List[str]) -> Optional[List[str]]:
        if name in path:
            return [*path[path.index(name):], name]
        if name in done:
            return None
        for imported in sorted(graph[name]):
            found = visit(imported, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_core_has_no_import_circle() -> None:
    graph = import_graph()
    assert {"pool", "pool_factory", "file_pool", "lvm_pool"} <= graph.keys()  # the graph is the core's
    assert "file_pool" in graph["pool_factory"] and "pool" in graph["file_pool"]  # and it sees imports
    found = circle(graph)
    assert found is None, "import circle in the core: " + " -> ".join(found or [])


def test_the_circle_finder_finds_one() -> None:
    assert circle({"pool": {"pool_factory"}, "pool_factory": {"file_pool"}, "file_pool": {"pool"}}) == [
        "file_pool", "pool", "pool_factory", "file_pool"]
    assert circle({"pool": set(), "file_pool": {"pool"}}) is None


def test_the_core_imports_its_modules_relatively_and_no_face() -> None:
    wrong = []
    for path in sorted(CORE.glob("*.py")):
        for node in imports_of(path):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if node.level == 0 else [])
            wrong += [f"{path.name}:{node.lineno} imports {name}" for name in names
                      if name.split(".")[0] in FACES]
    assert wrong == []
