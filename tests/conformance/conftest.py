"""Fixtures for the Basalt CSI conformance suite (real agent, real devices).

Each module gets its own agent process (module-scoped fixtures) rooted in a
fresh ``/tmp/basalt-conformance-*`` directory; teardown stops the agent with
SIGTERM and removes only what the fixture created there (mounts under the
directory, loop devices backed by files under it, the directory itself).

``--pool-kind`` chooses the pool every agent serves: ``file`` (default,
``--pool file:ROOT/pool``) or ``lvm-loop`` (``--pool lvm:VG`` with loop
activation).  For ``lvm-loop`` each agent root also gets a sparse PV image,
its loop device, a private ``LVM_SYSTEM_DIR`` and a VG ``basalt-ct-<hex>``
holding two LVs Basalt did not make; teardown checks that those survived,
then detaches the LV mappings (loop devices over the PV device), removes the
VG and the PV label, and detaches the PV's loop device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from basalt_csi_testlib import (
    FILE_KIND,
    LVM_KINDS,
    LVM_LOOP_KIND,
    LVM_VG_CLASSES,
    LVMTHIN_KIND,
    POOL_KINDS,
    Agent,
    LvmVg,
    cleanup_root,
    device_mapper_problem,
    make_root,
)

XFS_POOL_IMAGE_SIZE = 2 * 1024**3  # sparse; holds several 300 MiB sparse volumes


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pool-kind", choices=POOL_KINDS, default=FILE_KIND,
        help="pool the conformance agents serve: file (--pool file:DIR, default) or lvm-loop "
             "(--pool lvm:VG --lvm-activation loop --lvm-alloc contiguous on a private VG); "
             "real kernel only (device-mapper; run in the VM tier): lvm-dm (--pool lvm:VG --lvm-activation dm) "
             "or lvmthin (--pool lvmthin:VG/thinpool)",
    )


def configured_pool_kind(config: pytest.Config) -> str:
    # The option exists only when this conftest is an initial one (tests/conformance named on
    # the command line); otherwise the default kind.
    return str(config.getoption("pool_kind", default=FILE_KIND))


def pytest_report_header(config: pytest.Config) -> str:
    return f"basalt conformance pool kind: {configured_pool_kind(config)}"


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


def _require_lvm() -> None:
    for tool in ("pvcreate", "vgcreate", "lvcreate", "lvs", "vgremove", "pvremove", "blockdev"):
        if shutil.which(tool) is None:
            pytest.skip(f"--pool-kind lvm-loop needs {tool} in PATH (Debian: lvm2)")


def _require_device_mapper(kind: str) -> None:
    """The real-kernel kinds skip on hosts without device-mapper (they run in tests/vm)."""
    problem = device_mapper_problem()
    if problem is not None:
        pytest.skip(
            f"--pool-kind {kind} needs a kernel with device-mapper ({problem}); "
            "it runs inside the VM tier: python3 -m pytest -m vm tests/vm"
        )
    if kind == LVMTHIN_KIND and shutil.which("thin_check") is None:
        pytest.skip(f"--pool-kind {kind} needs thin_check in PATH (Debian: thin-provisioning-tools)")


@pytest.fixture(scope="session")
def pool_kind(request: pytest.FixtureRequest) -> str:
    """The pool kind every agent of this run serves (``--pool-kind``)."""
    return configured_pool_kind(request.config)


def _new_agent(tag: str, kind: str, **kwargs: Any) -> Agent:
    """An agent (not started) in a fresh root; for lvm-loop with its VG made."""
    root = make_root(tag)
    lvm: LvmVg | None = None
    if kind in LVM_KINDS:
        lvm = LVM_VG_CLASSES[kind](root)
        try:
            _require_lvm()
            if kind != LVM_LOOP_KIND:
                _require_device_mapper(kind)
            lvm.create()
        except BaseException:
            _cleanup(Agent(root, os.path.join(root, "pool"), lvm=lvm))
            raise
    return Agent(root, os.path.join(root, "pool"), lvm=lvm, **kwargs)


def _cleanup(agent: Agent) -> list[str]:
    """Stop the agent, remove what its root holds; return problems with the foreign LVs."""
    agent.stop()
    lvm = agent.lvm
    if lvm is None:
        cleanup_root(agent.root)
        return []
    problems: list[str] = []
    try:
        problems = lvm.foreign_problems()
    finally:
        cleanup_root(
            agent.root,
            own_loops=[lvm.device] if lvm.device else [],
            backing_devices=[lvm.device] if lvm.device else [],
            release=lvm.release,
        )
    return problems


AgentFactory = Callable[..., Agent]


def _agent_factory(tag: str, kind: str) -> Iterator[AgentFactory]:
    """Yield a function starting agents; stops and cleans them all up at the end."""
    _require_root()
    started: list[Agent] = []

    def start(launch: bool = True, **kwargs: Any) -> Agent:
        agent = _new_agent(tag, kind, **kwargs)
        started.append(agent)
        return agent.start() if launch else agent

    problems: list[str] = []
    try:
        yield start
    finally:
        for agent in reversed(started):
            problems += _cleanup(agent)
    assert not problems, problems


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, pool_kind: str) -> Iterator[Agent]:
    """An agent serving the chosen pool kind (file: a directory on the root ext4 filesystem)."""
    _require_root()
    tag = request.path.stem.replace("test_", "")
    a = _new_agent(tag, pool_kind)
    problems: list[str] = []
    try:
        a.start()
        yield a
    finally:
        problems = _cleanup(a)
    assert not problems, problems


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
def agent_factory(request: pytest.FixtureRequest, pool_kind: str) -> Iterator[AgentFactory]:
    """Start extra agents with custom arguments (capacity limit, services...)."""
    tag = request.path.stem.replace("test_", "") + "-f"
    yield from _agent_factory(tag, pool_kind)


@pytest.fixture
def fresh_agent_factory(request: pytest.FixtureRequest, pool_kind: str) -> Iterator[AgentFactory]:
    """Like agent_factory but cleaned up after each test."""
    tag = request.node.name[:20].replace("[", "-").replace("]", "").replace("/", "-")
    yield from _agent_factory(tag, pool_kind)
