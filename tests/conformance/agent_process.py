"""The agent under test: a real ``python3 -m basalt_agent`` process (``Agent``) with gRPC stubs and what its
pool holds on this host, and the CO's call sequences over it (``bring_up``, ``tear_down``)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from csi_requests import (
    AGENT_SRC,
    REPO_ROOT,
    MiB,
    TimedStub,
    csi,
    exact,
    mount_cap,
    unique,
)
from host_state import (
    files_under,
    is_mounted,
    loop_table,
    loops_under,
    retry_until,
)
from pool_backends import (
    FILE_KIND,
    LvmVg,
    volume_lv_name,
)

from basalt_agent.launcher import AgentFailed, AgentProcess
from basalt_agent.proto import csi_pb2_grpc as csi_grpc

# --------------------------------------------------------------------------
# the agent process
# --------------------------------------------------------------------------


# Only bounds a failure: under QEMU TCG (the VM tier) on a loaded 2-core host, the agent's
# imports alone took more than 20 s (seen 2026-11-25, load 7-16).
START_TIMEOUT = 90.0

_SHIM_DIR: list[str] = []


def _import_shim() -> list[str]:
    """A PYTHONPATH entry that makes the working tree's agent importable.

    The installed layout maps ``agent/basalt_agent`` to ``basalt_agent`` and
    ``plugins/module_utils`` to ``basalt_core``; mirror it with symlinks in a
    private temporary directory so that the agent under test is always this
    working tree's code, installed or not.
    """
    if not _SHIM_DIR:
        shim = tempfile.mkdtemp(prefix="basalt-conformance-pypath-", dir="/tmp")
        os.symlink(AGENT_SRC / "basalt_agent", os.path.join(shim, "basalt_agent"))
        os.symlink(REPO_ROOT / "plugins" / "module_utils", os.path.join(shim, "basalt_core"))
        atexit.register(shutil.rmtree, shim, True)
        _SHIM_DIR.append(shim)
    return [_SHIM_DIR[0]]


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    parts = _import_shim()
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def make_root(tag: str) -> str:
    return tempfile.mkdtemp(prefix=f"basalt-conformance-{tag}-", dir="/tmp")


class LaunchedAgent(AgentProcess):
    """The agent's process, run under *launcher* (a command that ends by exec'ing the agent) when one is given."""

    def __init__(self, launcher: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.launcher = launcher

    @property
    def argv(self) -> list[str]:
        return [*self.launcher, *super().argv]


class Agent:
    """A running ``python3 -m basalt_agent`` and gRPC stubs talking to it."""

    def __init__(
        self,
        root: str,
        pool: str,
        node_id: str | None = None,
        services: str | None = None,
        capacity_limit: int | None = None,
        extra_args: Iterable[str] = (),
        lvm: LvmVg | None = None,
        extra_env: dict[str, str] | None = None,
        launcher: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.pool = pool  # the file pool's directory (created, unused, for lvm-loop)
        self.lvm = lvm
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.socket = os.path.join(root, "csi.sock")
        self.state_dir = os.path.join(root, "state")
        self.log_path = os.path.join(root, "agent.stderr")
        self.services = services
        self.capacity_limit = capacity_limit
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.launcher = list(launcher)  # a command the agent runs under, e.g. unshare for its own mount namespace
        self.process: AgentProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the running agent's process
        self.channel: grpc.Channel | None = None
        self.returncode: int | None = None
        os.makedirs(self.pool, exist_ok=True)
        os.makedirs(os.path.join(root, "mnt"), exist_ok=True)

    # -- process ----------------------------------------------------------

    def command(self) -> list[str]:
        """The agent's arguments after ``--endpoint``."""
        cmd = [
            "--node-id", self.node_id,
            "--pool", self.pool_spec,
            "--state-dir", self.state_dir,
            "--log-level", "debug",
        ]
        if self.lvm is not None:
            cmd += self.lvm.agent_args()
        if self.services:
            cmd += ["--services", self.services]
        if self.capacity_limit is not None:
            cmd += ["--pool-capacity-limit", str(self.capacity_limit)]
        return cmd + self.extra_args

    @property
    def kind(self) -> str:
        return self.lvm.kind if self.lvm is not None else FILE_KIND

    @property
    def pool_spec(self) -> str:
        return self.lvm.pool_spec() if self.lvm is not None else f"file:{self.pool}"

    def env(self) -> dict[str, str]:
        env = agent_env()
        if self.lvm is not None:
            env.update(self.lvm.env())
        env.update(self.extra_env)
        return env

    def start(self, wait_ready: bool = True) -> Agent:
        self.process = LaunchedAgent(self.launcher, self.socket, self.command(), log_path=self.log_path,
                                     env=self.env(), cwd=self.root)
        self.process.start()
        self.proc = self.process.proc
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.identity = TimedStub(csi_grpc.IdentityStub(self.channel))
        self.ctl = TimedStub(csi_grpc.ControllerStub(self.channel))
        self.node = TimedStub(csi_grpc.NodeStub(self.channel))
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.process is not None
        try:
            self.process.wait_ready(timeout, poll=0.1)
        except AgentFailed as failure:
            self.stop()
            pytest.fail(str(failure))

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None:
            self.returncode = self.process.stop(timeout)
            self.process = None
            self.proc = None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the agent (a crash), unless it already died (a crash point killed it)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.returncode = self.proc.wait(10)
        self.process = None
        self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_logged(self, text: str, seconds: float) -> None:
        """Wait until the agent's log holds *text*: the end of its work in the background, e.g. the start-up
        clean-up, which runs once the socket already serves."""
        deadline = time.monotonic() + seconds
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert text in self.log(), self.log()[-4000:]

    # -- what the pool holds on this host -----------------------------------

    def pool_loops(self) -> dict[str, str]:
        """The pool's loop devices: device -> what backs it.

        file: the image file under the pool directory; lvm-loop: ``PV@OFFSET``
        for each loop device over the PV device (an LV's mapping).
        """
        if self.lvm is None:
            return loops_under(self.pool)
        return {
            lo.device: f"{lo.back_file}@{lo.offset}"
            for lo in loop_table() if self.lvm.device and lo.back_file == self.lvm.device
        }

    def loops_for(self, backing: str) -> list[str]:
        """Loop devices attached over ``backing`` (a value of ``pool_loops``)."""
        return sorted(dev for dev, back in self.pool_loops().items() if back == backing)

    def detached(self, backing: str, timeout: float = 5.0) -> bool:
        """Whether no loop device is attached over ``backing`` (within ``timeout``).

        ``losetup -d`` of a device that something still holds open (a
        concurrent ``losetup --list`` or blkid anywhere on the host) only sets
        autoclear; the kernel detaches it when the last opener closes.
        """
        return retry_until(lambda: not self.loops_for(backing), timeout)

    def allocation_unit(self) -> int:
        """What the pool allocates in: MiB (file), the VG's extent size (lvm-loop)."""
        return self.lvm.extent_size() if self.lvm is not None else MiB

    def pool_objects(self) -> set[str]:
        """What the pool stores: files under the pool directory, or every LV of the VG."""
        if self.lvm is None:
            return files_under(self.pool)
        return set(self.lvm.lvs())

    # -- convenience --------------------------------------------------------

    def path(self, *parts: str) -> str:
        """A fresh path under the agent's tmp tree (parent created, leaf not)."""
        p = os.path.join(self.root, "mnt", uuid.uuid4().hex[:10], *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def staging_dir(self) -> str:
        """A staging path as a CO makes it: an existing directory."""
        p = self.path("globalmount")
        os.makedirs(p)
        return p

    def create_volume(
        self,
        size: int | None = 16 * MiB,
        cap: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> Any:
        req = csi.CreateVolumeRequest(
            name=name or unique(),
            volume_capabilities=[cap if cap is not None else mount_cap()],
            **kwargs,
        )
        if size is not None:
            req.capacity_range.CopyFrom(exact(size))
        return self.ctl.CreateVolume(req).volume

    def stage(self, volume_id: str, cap: Any, staging: str | None = None, **kw: Any) -> str:
        staging = staging or self.staging_dir()
        self.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, volume_capability=cap, **kw
            )
        )
        return staging

    def publish(
        self, volume_id: str, cap: Any, staging: str, target: str | None = None,
        readonly: bool = False, **kw: Any,
    ) -> str:
        target = target or self.path("mount")
        self.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, target_path=target,
                volume_capability=cap, readonly=readonly, **kw,
            )
        )
        return target

    def unpublish(self, volume_id: str, target: str) -> None:
        self.node.NodeUnpublishVolume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        )

    def unstage(self, volume_id: str, staging: str) -> None:
        self.node.NodeUnstageVolume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)
        )

    def get_volume(self, volume_id: str) -> Any:
        """ControllerGetVolume's answer (volume and status)."""
        return self.ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=volume_id))

    def volume_stats(self, volume_id: str, path: str, staging: str = "") -> Any:
        """NodeGetVolumeStats's answer for the volume at *path*."""
        return self.node.NodeGetVolumeStats(
            csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path, staging_target_path=staging)
        )

    def list_all_volumes(self) -> list[Any]:
        entries, token = [], ""
        for _ in range(10_000):
            resp = self.ctl.ListVolumes(csi.ListVolumesRequest(max_entries=50, starting_token=token))
            entries += list(resp.entries)
            token = resp.next_token
            if not token:
                return entries
        pytest.fail("ListVolumes pagination never ended")


@dataclass
class Attached:
    """A volume staged (and optionally published) through the agent."""

    volume_id: str
    staging: str
    image: str | None  # the image file (file pool); None for lvm-loop
    backing: str = ""  # what backs the loop device, as Agent.pool_loops() says
    target: str | None = None
    device: str | None = None
    publish_context: dict[str, str] = field(default_factory=dict)


def stage_tracking_image(agent: Agent, volume_id: str, cap: Any, **kw: Any) -> Attached:
    """NodeStage and find out which loop device it attached, and what backs it.

    file: an image file under the pool directory; lvm-loop: the PV device at
    the offset of the volume's LV (checked against LVM's report).
    """
    before = agent.pool_loops()
    staging = agent.stage(volume_id, cap, **kw)
    new = {d: b for d, b in agent.pool_loops().items() if d not in before}
    assert len(new) == 1, f"expected one new loop device backed by the pool, got {new}"
    device, backing = next(iter(new.items()))
    if agent.lvm is not None:
        offset, length = agent.lvm.lv_location(volume_lv_name(volume_id))
        assert backing == f"{agent.lvm.device}@{offset}", (
            f"{device} is at {backing}, not at the LV's offset {offset}"
        )
        size = int(subprocess.run(["blockdev", "--getsize64", device], check=True,
                                  capture_output=True, text=True).stdout)
        assert size == length, f"{device} is {size} bytes, the LV {length}"
        return Attached(volume_id=volume_id, staging=staging, image=None, backing=backing, device=device)
    return Attached(volume_id=volume_id, staging=staging, image=backing, backing=backing, device=device)


def iter_log_records(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def bring_up(
    agent: Agent, vol: Any, cap: Any, publish: bool = True, readonly: bool = False
) -> Attached:
    """ControllerPublish, NodeStage and (optionally) NodePublish, like a CO does."""
    ctx = agent.ctl.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=cap,
            readonly=readonly, volume_context=vol.volume_context,
        )
    ).publish_context
    att = stage_tracking_image(
        agent, vol.volume_id, cap, publish_context=ctx, volume_context=vol.volume_context
    )
    att.publish_context = dict(ctx)
    if publish:
        att.target = agent.publish(
            vol.volume_id, cap, att.staging, readonly=readonly,
            publish_context=ctx, volume_context=vol.volume_context,
        )
    return att


def tear_down(agent: Agent, att: Attached) -> None:
    """NodeUnpublish, NodeUnstage and ControllerUnpublish; checks the loop device is gone."""
    if att.target:
        agent.unpublish(att.volume_id, att.target)
        assert not os.path.lexists(att.target), "NodeUnpublish must remove the target path"
    agent.unstage(att.volume_id, att.staging)
    assert not is_mounted(att.staging)
    if att.backing:
        assert agent.detached(att.backing), (
            f"loop device still attached over {att.backing}: "
            f"{[lo for lo in loop_table() if lo.device in agent.loops_for(att.backing)]}"
        )
    agent.ctl.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=att.volume_id, node_id=agent.node_id)
    )
