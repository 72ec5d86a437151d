"""The agent role's CSI client (roles/agent/files/csi_client.py) against a real agent over its socket.

``published`` is what lets ``uninstall -e basalt_purge=true`` refuse while any volume is published: it must
list a volume exactly while it is published, and fail when no agent answers. ``smoke`` walks a volume
through the agent and leaves nothing behind (root: loop devices, mkfs, mounts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from basalt_agent.launcher import AgentProcess
from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "roles" / "agent" / "files" / "csi_client.py"
NODE = "role-node"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    process = AgentProcess(str(tmp_path / "csi.sock"), ["--node-id", NODE, "--state-dir", str(tmp_path / "state")],
                           log_path=str(tmp_path / "agent.log"))
    process.start()
    try:
        process.wait_ready(timeout=60)
        yield f"unix://{tmp_path}/csi.sock"
    finally:
        process.stop(timeout=60)


def client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=300,
                          check=False)


def test_published_lists_a_volume_exactly_while_it_is_published(agent: str) -> None:
    mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    cap = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode)
    with grpc.insecure_channel(agent) as channel:
        controller = rpc.ControllerStub(channel)
        vid = controller.CreateVolume(csi.CreateVolumeRequest(
            name="kept", volume_capabilities=[cap], capacity_range=csi.CapacityRange(required_bytes=8 << 20))
        ).volume.volume_id
        listed = client("published", "--endpoint", agent)
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed
        controller.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=vid, node_id=NODE, volume_capability=cap))
        listed = client("published", "--endpoint", agent)
        assert json.loads(listed.stdout) == [{"volume_id": vid, "nodes": [NODE]}], listed
        controller.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vid, node_id=NODE))
        assert json.loads(client("published", "--endpoint", agent).stdout) == []


def test_published_fails_when_no_agent_answers(tmp_path: Path) -> None:
    listed = client("published", "--endpoint", f"unix://{tmp_path}/none.sock")
    assert listed.returncode == 1 and "UNAVAILABLE" in listed.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="loop devices, mkfs and mounts need root")
def test_smoke_walks_a_volume_and_leaves_nothing(agent: str) -> None:
    walked = client("smoke", "--endpoint", agent, "--node-id", NODE, "--size", "16Mi")
    assert walked.returncode == 0, walked.stdout + walked.stderr
    assert "read the same bytes back through the staging mount" in walked.stdout
    with grpc.insecure_channel(agent) as channel:
        assert list(rpc.ControllerStub(channel).ListVolumes(csi.ListVolumesRequest()).entries) == []
