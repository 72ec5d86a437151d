"""The collection as it ships: ``ansible-galaxy collection build`` into a temporary directory, then its tarball.

- every path or link the shipped READMEs and docs (Markdown, reStructuredText, the plugins' and roles'
  documentation) name is in the tarball (the shipped README is README.collection.md, galaxy.yml's
  ``readme``; the source repository's README.md stays out);
- the tarball holds no build output, caches or files no shipped content uses: each shipped root is listed
  below with what uses it, and nothing else ships;
- the agent role builds the agent from an installed collection without writing into it (no build/ or
  *.egg-info, nothing changed): the role's own wheel tasks, run from the installed tarball.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterator, List, Set, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED_README = "README.collection.md"

# Everything the tarball holds, by root, with what uses it. A root listed here that no longer ships fails
# too, so the list stays the truth.
SHIPPED_ROOTS: Dict[str, str] = {
    "MANIFEST.json": "ansible-galaxy (written by the build)",
    "FILES.json": "ansible-galaxy (written by the build)",
    SHIPPED_README: "galaxy.yml's readme; pyproject.toml's readme (the agent's wheel)",
    "LICENSE": "galaxy.yml's license",
    "CHANGELOG.rst": "the release notes, generated from changelogs/",
    "changelogs": "antsibull-changelog: changelog.yaml, config.yaml and the fragments not yet released",
    ".ansible-lint": "ansible-lint on the installed collection (scripts/ansible-checks.sh)",
    "meta/runtime.yml": "ansible-core (requires_ansible)",
    "plugins": "the modules, filter, doc fragments and the storage core",
    "roles": "the roles",
    "playbooks": "the playbooks",
    "inventory/sample": "the sample inventory the README and the playbooks' group_vars name",
    "pyproject.toml": "the agent role's wheel (roles/agent/tasks/wheel.yml)",
    "agent/basalt_agent": "the agent role's wheel (roles/agent/tasks/wheel.yml)",
    "tests/conftest.py": "ansible-test units (links the core as basalt_core)",
    "tests/unit/conftest.py": "ansible-test units (the scripted command runner)",
    "tests/unit/requirements.txt": "ansible-test units",
    "tests/unit/plugins": "ansible-test units",
    "tests/sanity": "ansible-test sanity (ignore files)",
    "tests/integration/targets": "ansible-test integration",
}
# Never in a built collection, at any depth.
BUILD_LEFTOVERS = re.compile(r"(^|/)(build|dist|__pycache__|[^/]*\.egg-info|\.mypy_cache|\.ruff_cache"
                             r"|\.pytest_cache|\.benchmarks|\.hypothesis|\.cache|\.tox|\.venv|output)(/|$)|\.py[co]$")
# What a doc names: links, and the words of its inline and fenced code.
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"``?([^`]+)``?")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PATH_WORD = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./*-]*$")


def _missing() -> str | None:
    if shutil.which("ansible-galaxy") is None or shutil.which("ansible-playbook") is None:
        return "ansible-core is not installed (scripts/ansible-checks.sh installs it)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("basalt-csi-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def members(tarball: Path) -> Dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as tar:
        return {member.name.rstrip("/"): member for member in tar.getmembers()}


@pytest.fixture(scope="module")
def shipped(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball unpacked, to read its docs."""
    tree = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(tarball) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _under(name: str, root: str) -> bool:
    return name == root or name.startswith(root + "/")


def _words(text: str) -> Iterator[str]:
    """The candidates for paths in a Markdown or reStructuredText document."""
    yield from LINK.findall(text)
    for chunk in CODE.findall(FENCE.sub("", text)) + FENCE.findall(text):
        yield from chunk.split()


def _named_paths(doc: str, text: str) -> Iterator[Tuple[str, str]]:
    """(word, path in the collection) for every word of the doc that names a path of the source repository.

    A word names a path when, relative to the collection root or to the doc's own directory, it is a file
    or directory of the source repository, or when its first part is a top-level name of the repository
    (so that a path that never existed is caught too). Absolute paths, URLs, anchors and words such as
    ``POOL/freezes/`` that name nothing in the repository are the host's or the reader's, not the tarball's.
    """
    top = {entry.name for entry in REPO.iterdir()} - {".git"}
    doc_dir = PurePosixPath(doc).parent
    for word in _words(text):
        word = word.strip(",.;:()'\"").split("#")[0]
        if not word or not PATH_WORD.match(word) or "://" in word or word in {".", ".."}:
            continue
        if "*" in word:
            continue
        candidates = [os.path.normpath(path) for path in (PurePosixPath(word), doc_dir / word)]
        existing = [path for path in candidates if not path.startswith("..") and (REPO / path).exists()]
        if existing:
            yield word, existing[0]
        elif "/" in word and word.split("/")[0] in top:
            yield word, candidates[0]


def test_the_shipped_readme_is_the_collection_readme(members: Dict[str, tarfile.TarInfo], shipped: Path) -> None:
    manifest = json.loads((shipped / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["readme"] == SHIPPED_README
    assert yaml.safe_load((REPO / "galaxy.yml").read_text())["readme"] == SHIPPED_README
    assert SHIPPED_README in members
    assert "README.md" not in members  # the source repository's README names what does not ship


def test_license_matches_and_no_placeholder_urls(shipped: Path) -> None:
    """LICENSE is the license galaxy.yml (and the agent's package) declares; the collection's metadata names
    no URL it does not have (there is no public repository yet): each is left out, never a placeholder."""
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert galaxy["license"] == ["Apache-2.0"] and "license_file" not in galaxy
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    license_text = (shipped / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the whole text, not a stub
    info = json.loads((shipped / "MANIFEST.json").read_text())["collection_info"]
    for key in ("repository", "documentation", "homepage", "issues"):
        assert key not in galaxy
        assert info[key] is None


def test_shipped_docs_name_only_shipped_paths(members: Dict[str, tarfile.TarInfo], shipped: Path) -> None:
    docs = sorted(name for name, member in members.items() if member.isfile() and name.endswith((".md", ".rst")))
    assert SHIPPED_README in docs and "roles/agent/README.md" in docs and "CHANGELOG.rst" in docs
    named: Set[str] = set()
    absent: List[str] = []
    for doc in docs:
        for word, path in _named_paths(doc, (shipped / doc).read_text()):
            named.add(path)
            if path not in members:
                absent.append(f"{doc}: {word}")
    assert absent == [], f"shipped docs name files the tarball lacks: {absent}"
    # the scan finds what the README names: role READMEs, the sample inventory, the license
    expected = {"roles/agent/README.md", "inventory/sample", "LICENSE", "roles/cluster/requirements.txt"}
    assert expected <= named, expected - named


def _plugin_docs(source: str) -> str:
    """The documentation a plugin or doc fragment carries (what ansible-doc shows)."""
    texts = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                and {getattr(target, "id", None) for target in node.targets} & {"DOCUMENTATION", "EXAMPLES", "RETURN"}):
            texts.append(node.value.value)
    return "\n".join(texts)


def test_plugin_and_role_docs_name_only_shipped_paths(members: Dict[str, tarfile.TarInfo], shipped: Path) -> None:
    """The modules', filters' and doc fragments' documentation and the roles' argument specifications (what
    ansible-doc shows): every path-like word (with a "/", markup such as C(...) taken off) ships."""
    plugin_dirs = ("plugins/modules/", "plugins/filter/", "plugins/doc_fragments/")
    docs = {name: _plugin_docs((shipped / name).read_text()) for name in members
            if name.startswith(plugin_dirs) and name.endswith(".py")}
    docs.update({name: (shipped / name).read_text() for name in members
                 if re.fullmatch(r"roles/[^/]+/meta/argument_specs\.yml", name)})
    assert "plugins/modules/volume.py" in docs and "roles/agent/meta/argument_specs.yml" in docs
    assert "basalt.csi.volume" in docs["plugins/modules/volume.py"]  # the docs were found
    absent = []
    for doc, text in docs.items():
        words = (re.sub(r"^[A-Z]\(|\)$", "", word) for word in text.split())
        for word, path in _named_paths(doc, " ".join(f"`{word}`" for word in words if "/" in word)):
            if path not in members:
                absent.append(f"{doc}: {word}")
    assert absent == [], f"plugin or role docs name files the tarball lacks: {absent}"


def test_the_scan_catches_paths_that_do_not_ship() -> None:
    text = ("Run `scripts/demo.sh`, see [the notes](docs/vm-tier.md) and `tests/vm/`; `/etc/basalt` and\n"
            "`POOL/freezes/` are not ours.\n```sh\npython3 bench/bench_rpc.py --help\n```\n")
    named = {word for word, _ in _named_paths("README.collection.md", text)}
    assert named == {"scripts/demo.sh", "docs/vm-tier.md", "tests/vm/", "bench/bench_rpc.py"}
    # a role README's own relative paths resolve in the role
    assert dict(_named_paths("roles/defaults/README.md", "through its `meta/main.yml`")) == {
        "meta/main.yml": "roles/defaults/meta/main.yml"}


def test_no_build_output_caches_or_unused_files(members: Dict[str, tarfile.TarInfo]) -> None:
    leftovers = sorted(name for name in members if BUILD_LEFTOVERS.search(name))
    assert leftovers == [], f"build output or caches in the tarball: {leftovers}"
    unused = sorted(name for name, member in members.items() if not member.isdir()
                    and not any(_under(name, root) for root in SHIPPED_ROOTS))
    assert unused == [], f"{unused}: shipped, but no shipped content uses it: build_ignore it, or list its user here"
    gone = sorted(root for root in SHIPPED_ROOTS if root not in members)
    assert gone == [], f"{gone}: listed as shipped, but not in the tarball"


def test_sanity_ignore_files_cover_what_requires_ansible_admits() -> None:
    """requires_ansible admits only the ansible-core versions tests/sanity has an ignore file for."""
    spec = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["requires_ansible"]
    bounds = dict(re.findall(r"(>=|<)(\d+\.\d+)", spec))
    low = tuple(int(part) for part in bounds[">="].split("."))
    high = tuple(int(part) for part in bounds["<"].split("."))
    admitted = {f"{low[0]}.{minor}" for minor in range(low[1], high[1])} if low[0] == high[0] else None
    assert admitted, f"requires_ansible {spec!r}: one major version, bounded above"
    ignores = {path.stem.removeprefix("ignore-") for path in (REPO / "tests" / "sanity").glob("ignore-*.txt")}
    assert admitted <= ignores


def _tree_state(root: Path) -> Dict[str, Tuple[int, int]]:
    return {str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in root.rglob("*")}


def test_agent_wheel_from_the_installed_collection_writes_nothing_into_it(tarball: Path, tmp_path: Path) -> None:
    """The agent role's wheel tasks (roles/agent/tasks/wheel.yml), run from the collection as installed from
    its tarball: the wheel holds the agent and the core, and the installed tree is exactly as installed."""
    collections = tmp_path / "collections"
    subprocess.run(["ansible-galaxy", "collection", "install", "--offline", "--no-deps", "-p", str(collections),
                    str(tarball)], check=True, capture_output=True, text=True, timeout=300)
    tree = collections / "ansible_collections" / "basalt" / "csi"
    before = _tree_state(tree)
    wheels = tmp_path / "wheels"
    playbook = tmp_path / "wheel.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "The agent role's wheel, from the installed collection",
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"name": "Build it", "ansible.builtin.include_role": {"name": "basalt.csi.agent", "tasks_from": "wheel"}},
            {"name": "Keep it", "ansible.builtin.copy": {"src": "{{ basalt_agent_wheels.files[0].path }}",
                                                         "dest": f"{wheels}/", "mode": "0600"}},
            {"name": "Remove the build directory",
             "ansible.builtin.file": {"path": "{{ basalt_agent_build.path }}", "state": "absent"}},
        ]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="0")
    proc = subprocess.run(["ansible-playbook", "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
                           str(playbook)], env=env, capture_output=True,
                          text=True, timeout=540, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    (wheel,) = wheels.glob("basalt_csi-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"basalt_agent/main.py", "basalt_agent/proto/csi.proto", "basalt_core/runner.py"} <= names
    after = _tree_state(tree)
    assert sorted(set(after) - set(before)) == [], "the build wrote into the installed collection"
    assert after == before
    assert not list(tree.rglob("*.egg-info")) and not (tree / "build").exists()
