"""NodeStage/Unstage of a volume exported by another storage host.

This machine has no kernel iSCSI initiator, so the login itself is
simulated: ``iscsi_attach.ensure_attached`` hands back a real loop device
standing in for the SCSI disk, and the test checks what the node service
asks of the initiator layer.  Everything after the login (format-if-blank,
mount, bind, unmount, records) runs for real.  The real login runs in the VM
tier (tests/vm, two hosts).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import grpc
import pytest
from servicer_context import Aborted, Context

from basalt_agent.locks import ObjectLocks
from basalt_agent.node import NodeService
from basalt_agent.nodestate import NodeState
from basalt_agent.proto import csi_pb2 as csi
from basalt_core import iscsi_attach, iscsiadm, multipath
from basalt_core import mount as mounts
from basalt_core.errors import CommandFailed
from basalt_core.file_pool import FilePool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and mounts")

TARGET = "iqn.2026-11.dev.basalt:vol-1"
CONTEXT = {"basalt.dev/pool": "lvm", "basalt.dev/storage-node": "storage-1", "basalt.dev/iscsi-target": TARGET,
           "basalt.dev/iscsi-portals": "192.0.2.10:3260,192.0.2.11:3260", "basalt.dev/iscsi-lun": "1",
           "basalt.dev/serial": "a1b2c3d4e5f60718"}
SECRETS = {"node.session.auth.username": "node-a", "node.session.auth.password": "Secret-Of-A-1234"}
MODE = csi.VolumeCapability.AccessMode
CAP = csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
                           access_mode=MODE(mode=MODE.SINGLE_NODE_WRITER))


class FakeInitiator:
    """Stands in for the kernel initiator: logging in makes the loop-device "disk" appear."""

    def __init__(self, disk: str) -> None:
        self.disk = disk
        self.logged_in = False
        self.calls: List[Any] = []
        self.detached_with: Dict[str, Any] = {}

    def ensure_attached(self, target: str, portals: List[str], chap: Any, serial: str, **_: Any) -> Any:
        self.calls.append(("attach", target, list(portals), chap.user if chap else None, serial))
        self.logged_in = True
        return self.disk, True

    def ensure_detached(self, target: str, portals: List[str], **kwargs: Any) -> bool:
        self.calls.append(("detach", target, list(portals)))
        self.detached_with = kwargs
        self.logged_in = False
        return True

    def attached_device(self, serial: str) -> Optional[str]:
        return self.disk if self.logged_in and serial == CONTEXT["basalt.dev/serial"] else None


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    image = tmp_path / "remote-lun.img"
    with open(image, "wb") as handle:
        handle.truncate(32 << 20)
    disk = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()
    initiator = FakeInitiator(disk)
    monkeypatch.setattr(iscsi_attach, "ensure_attached", initiator.ensure_attached)
    monkeypatch.setattr(iscsi_attach, "ensure_detached", initiator.ensure_detached)
    monkeypatch.setattr(iscsi_attach, "attached_device", initiator.attached_device)
    pool = FilePool(str(tmp_path / "pool"))
    pool.ensure_layout()
    service = NodeService(pool, "node-a", ObjectLocks(), NodeState(str(tmp_path / "state")),
                          str(tmp_path / "ephemeral"), 1 << 30)
    try:
        yield {"service": service, "initiator": initiator, "tmp": tmp_path, "disk": disk}
    finally:
        for entry in reversed(mounts.mounts()):
            if entry.mount_point.startswith(str(tmp_path)):
                subprocess.run(["umount", entry.mount_point], check=False)
        subprocess.run(["losetup", "--detach", disk], check=False)


def test_remote_volume_is_logged_in_formatted_mounted_and_logged_out(node: Dict[str, Any]) -> None:
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]
    staging, target = str(tmp / "staging"), str(tmp / "pod" / "data")
    request = csi.NodeStageVolumeRequest(volume_id="vol-" + "1" * 32, staging_target_path=staging,
                                         volume_capability=CAP, publish_context=CONTEXT, secrets=SECRETS)
    for _ in range(2):  # idempotent: the second stage finds the mount
        service.NodeStageVolume(request, Context())
    assert initiator.calls[0] == ("attach", TARGET, ["192.0.2.10:3260", "192.0.2.11:3260"], "node-a",
                                  CONTEXT["basalt.dev/serial"])
    assert mounts.find_mount(staging).source == node["disk"]  # type: ignore[union-attr]
    service.NodePublishVolume(csi.NodePublishVolumeRequest(
        volume_id="vol-" + "1" * 32, staging_target_path=staging, target_path=target, volume_capability=CAP,
        publish_context=CONTEXT), Context())
    with open(os.path.join(target, "hello"), "w") as handle:
        handle.write("from node-a")
    stats = service.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id="vol-" + "1" * 32,
                                                                      volume_path=target), Context())
    assert not stats.volume_condition.abnormal and stats.usage[0].total > 0
    service.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id="vol-" + "1" * 32, target_path=target),
                                Context())
    service.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id="vol-" + "1" * 32,
                                                           staging_target_path=staging), Context())
    assert initiator.calls[-1] == ("detach", TARGET, ["192.0.2.10:3260", "192.0.2.11:3260"])
    assert not mounts.is_mounted(staging) and not initiator.logged_in
    # the data went to the "remote" disk
    subprocess.run(["mount", node["disk"], staging], check=True)
    try:
        with open(os.path.join(staging, "hello")) as handle:
            assert handle.read() == "from node-a"
    finally:
        subprocess.run(["umount", staging], check=True)


def test_lost_session_is_reported_abnormal(node: Dict[str, Any]) -> None:
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]
    staging = str(tmp / "staging")
    service.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id="vol-" + "2" * 32, staging_target_path=staging,
                                                       volume_capability=CAP, publish_context=CONTEXT,
                                                       secrets=SECRETS), Context())
    initiator.logged_in = False  # the session dropped behind the node's back
    stats = service.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id="vol-" + "2" * 32,
                                                                      volume_path=staging), Context())
    assert stats.volume_condition.abnormal and "session is gone" in stats.volume_condition.message


def test_bad_chap_secrets_are_refused_before_any_login(node: Dict[str, Any]) -> None:
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]
    with pytest.raises(Aborted) as caught:
        service.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id="vol-" + "3" * 32, staging_target_path=str(tmp / "s"), volume_capability=CAP,
            publish_context=CONTEXT, secrets={"node.session.auth.username": "u",
                                              "node.session.auth.password": "has space"}), Context())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "has space" not in str(caught.value)
    assert initiator.calls == []


def test_the_storage_host_stages_its_own_volume_without_a_login(node: Dict[str, Any]) -> None:
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]
    local = dict(CONTEXT, **{"basalt.dev/storage-node": "node-a"})
    with pytest.raises(Aborted) as caught:  # not in this node's pool: NOT_FOUND, and no loopback login
        service.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id="vol-" + "4" * 32, staging_target_path=str(tmp / "s"), volume_capability=CAP,
            publish_context=local, secrets=SECRETS), Context())
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and initiator.calls == []


@pytest.mark.parametrize(("rc", "code"), [(iscsiadm.ERR_LOGIN_AUTH_FAILED, grpc.StatusCode.UNAUTHENTICATED),
                                          (iscsiadm.ERR_FATAL_LOGIN, grpc.StatusCode.FAILED_PRECONDITION),
                                          (iscsiadm.ERR_TRANS_TIMEOUT, grpc.StatusCode.UNAVAILABLE)])
def test_a_refused_login_maps_to_its_code_and_leaves_no_node_record(
        node: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, rc: int, code: grpc.StatusCode) -> None:
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]

    def refused(target: str, portals: List[str], chap: Any, serial: str, **_: Any) -> Any:
        initiator.calls.append(("attach", target, list(portals)))
        # the text iscsiadm 2.1.8 printed in the VM tier for a wrong CHAP secret (LIO target)
        raise iscsiadm.LoginFailed(CommandFailed(["iscsiadm", "--login"], rc, "iscsiadm: Could not login to "
                                                 f"[iface: default, target: {target}, portal: 192.0.2.10,3260]."))

    monkeypatch.setattr(iscsi_attach, "ensure_attached", refused)
    with pytest.raises(Aborted) as caught:
        service.NodeStageVolume(csi.NodeStageVolumeRequest(
            volume_id="vol-" + "5" * 32, staging_target_path=str(tmp / "s"), volume_capability=CAP,
            publish_context=CONTEXT, secrets=SECRETS), Context())
    assert caught.value.code == code
    # the node record that ensure_node wrote before the refused login is removed again
    assert initiator.calls == [("attach", TARGET, ["192.0.2.10:3260", "192.0.2.11:3260"]),
                               ("detach", TARGET, ["192.0.2.10:3260", "192.0.2.11:3260"])]
    assert service.state.load("vol-" + "5" * 32) is None


def test_unstage_flushes_the_recorded_multipath_map_when_every_path_is_lost(
        node: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The map's name and uuid go into the node record at stage; with every path gone no disk leads to the
    map any more, and NodeUnstage hands the recorded one to ensure_detached (which flushes it by name)."""
    service, initiator, tmp = node["service"], node["initiator"], node["tmp"]
    staged = multipath.Map("mpatha", "dm-3", "mpath-36001405a1b2c3d4e5f6071800000000", ("sdb", "sdc"))
    monkeypatch.setattr(multipath, "map_at", lambda device: staged if device == node["disk"] else None)
    volume_id, staging = "vol-" + "2" * 32, str(tmp / "staging")
    service.NodeStageVolume(csi.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=staging,
                                                       volume_capability=CAP, publish_context=CONTEXT,
                                                       secrets=SECRETS), Context())
    record = service.state.load(volume_id)
    assert record is not None and (record.multipath_map, record.multipath_uuid) == (staged.name, staged.uuid)
    initiator.logged_in = False  # every path lost: no disk with the serial
    service.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
                              Context())
    passed = initiator.detached_with["staged_map"]
    assert (passed.name, passed.uuid) == (staged.name, staged.uuid)
    assert service.state.load(volume_id) is None
