"""Fixtures for the Basalt CSI conformance suite (real agent, real devices).

Each module gets its own agent process (module-scoped fixtures) rooted in a
fresh ``/tmp/basalt-conformance-*`` directory; teardown stops the agent with
SIGTERM and removes only what the fixture created there (mounts under the
directory, loop devices backed by files under it, the directory itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from basalt_csi_testlib import Agent, cleanup_root, make_root

XFS_POOL_IMAGE_SIZE = 2 * 1024**3  # sparse; holds several 300 MiB sparse volumes


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: CSI conformance test against a real basalt agent process"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in item.path.resolve().parents:
            item.add_marker(pytest.mark.conformance)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("conformance suite needs root (loop devices, mkfs, mount)")
    for tool in ("losetup", "mount", "umount", "mkfs.ext4", "mkfs.xfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"conformance suite needs {tool} in PATH")


AgentFactory = Callable[..., Agent]


def _agent_factory(tag: str) -> Iterator[AgentFactory]:
    """Yield a function starting agents; stops and cleans them all up at the end."""
    _require_root()
    started: list[tuple[Agent, str]] = []

    def start(launch: bool = True, **kwargs: object) -> Agent:
        root = make_root(tag)
        agent = Agent(root, os.path.join(root, "pool"), **kwargs)
        started.append((agent, root))
        return agent.start() if launch else agent

    try:
        yield start
    finally:
        for agent, root in reversed(started):
            agent.stop()
            cleanup_root(root)


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    """An agent whose file pool lives on the root (ext4) filesystem."""
    _require_root()
    tag = request.path.stem.replace("test_", "")
    root = make_root(tag)
    a = Agent(root, os.path.join(root, "pool"))
    try:
        a.start()
        yield a
    finally:
        a.stop()
        cleanup_root(root)


@pytest.fixture(scope="module")
def xfs_agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    """An agent whose pool directory is on an xfs filesystem (reflink capable)."""
    _require_root()
    tag = request.path.stem.replace("test_", "") + "-xfs"
    root = make_root(tag)
    image = os.path.join(root, "xfs-pool.img")
    mnt = os.path.join(root, "xfs")
    own_loops: list[str] = []
    own_mounts: list[str] = []
    a: Agent | None = None
    try:
        with open(image, "wb") as fh:
            fh.truncate(XFS_POOL_IMAGE_SIZE)
        mk = subprocess.run(
            ["mkfs.xfs", "-q", "-m", "reflink=1", image], capture_output=True, text=True
        )
        if mk.returncode != 0:
            pytest.skip(f"mkfs.xfs -m reflink=1 failed here: {mk.stderr.strip()}")
        dev = subprocess.run(
            ["losetup", "--find", "--show", image], check=True, capture_output=True, text=True
        ).stdout.strip()
        own_loops.append(dev)
        os.makedirs(mnt)
        subprocess.run(["mount", "-t", "xfs", dev, mnt], check=True, capture_output=True)
        own_mounts.append(mnt)
        a = Agent(root, os.path.join(mnt, "pool"))
        a.start()
        yield a
    finally:
        if a is not None:
            a.stop()
        cleanup_root(root, own_mounts=own_mounts, own_loops=own_loops)


@pytest.fixture(scope="module")
def agent_factory(request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """Start extra agents with custom arguments (capacity limit, services...)."""
    tag = request.path.stem.replace("test_", "") + "-f"
    yield from _agent_factory(tag)


@pytest.fixture
def fresh_agent_factory(request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """Like agent_factory but cleaned up after each test."""
    tag = request.node.name[:20].replace("[", "-").replace("]", "").replace("/", "-")
    yield from _agent_factory(tag)
