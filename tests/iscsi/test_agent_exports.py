"""ControllerPublish/Unpublish over iSCSI, proven with a real tgtd and libiscsi's userspace initiator.

The agent serves a file pool on a "storage host" and exports every
publication to the publishing node's initiator IQN only, with CHAP.  The
initiator side here is libiscsi (the kernel initiator cannot log in on this
machine); the VM tier logs in with open-iscsi for real.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict, Iterator

import grpc
import pytest
from agent_iscsi_testlib import CHAP, NODE_A, NODE_B, create, image_of, login, mapped_nodes, publish, storage_host_args
from basalt_csi_testlib import AM, Agent, block_cap, cleanup_root, make_root, mount_cap
from libiscsi_client import IscsiError

from basalt_agent.proto import csi_pb2 as csi


@pytest.fixture
def storage_host(tgtd: Any) -> Iterator[Agent]:
    root = make_root("iscsi")
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1",
                  extra_args=storage_host_args(tgtd, root, *mapped_nodes()))
    try:
        yield agent.start()
    finally:
        agent.stop()
        cleanup_root(root)


def test_only_the_published_node_with_the_right_secret_reaches_the_data(storage_host: Agent) -> None:
    volume = create(storage_host, "shared-db", block_cap())
    context = publish(storage_host, volume.volume_id, "node-a", block_cap())
    assert context["basalt.dev/storage-node"] == "storage-1" and context["basalt.dev/serial"]
    with login(context, NODE_A) as session:
        assert session.write(8, b"B" * 512).good
        assert session.read(8, 512).data == b"B" * 512
    with open(image_of(storage_host, volume.volume_id), "rb") as image:  # the bytes landed in the volume
        image.seek(8 * 512)
        assert image.read(512) == b"B" * 512
    with pytest.raises(IscsiError):
        login(context, NODE_B)  # another node's IQN
    with pytest.raises(IscsiError):
        login(context, NODE_A, password="Wrong-Secret-999")
    storage_host.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id="node-a"))
    with pytest.raises(IscsiError):
        login(context, NODE_A)  # withdrawn
    storage_host.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume.volume_id))


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly-true", "reader-mode-readonly-false"])
def test_read_only_publication_refuses_writes_at_the_target(storage_host: Agent, readonly: bool) -> None:
    """MULTI_NODE_READER_ONLY exports read-only whatever `readonly` says (README: access modes)."""
    cap = block_cap(AM.MULTI_NODE_READER_ONLY)
    volume = create(storage_host, "readers", cap)
    contexts = [publish(storage_host, volume.volume_id, node, cap, readonly=readonly) for node in ("node-a", "node-b")]
    with login(contexts[0], NODE_A) as session:
        assert session.read(0, 512).good
        assert not session.write(0, b"X" * 512).good
    with login(contexts[1], NODE_B) as session:
        assert session.read(0, 512).good
    with open(image_of(storage_host, volume.volume_id), "rb") as image:
        assert image.read(512) == b"\0" * 512


def test_exports_are_persisted_with_secrets_out_of_reach(storage_host: Agent) -> None:
    volume = create(storage_host, "persisted", block_cap())
    context = publish(storage_host, volume.volume_id, "node-a", block_cap())
    conf = os.path.join(storage_host.root, "tgt-basalt.conf")
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    with open(conf) as handle:
        text = handle.read()
    assert context["basalt.dev/iscsi-target"] in text and NODE_A in text
    assert CHAP["node.session.auth.password"] not in storage_host.log()


@pytest.mark.parametrize(("node", "secrets", "code"), [
    ("node-z", CHAP, grpc.StatusCode.NOT_FOUND),
    ("node-a", {}, grpc.StatusCode.INVALID_ARGUMENT),
    ("node-a", {"node.session.auth.username": "u", "node.session.auth.password": "-bad"},
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_publish_refusals(storage_host: Agent, node: str, secrets: Dict[str, str], code: grpc.StatusCode) -> None:
    volume = create(storage_host, f"refused-{node}-{len(secrets)}", block_cap())
    with pytest.raises(grpc.RpcError) as caught:
        publish(storage_host, volume.volume_id, node, block_cap(), secrets=secrets)
    assert caught.value.code() == code
    assert "-bad" not in (caught.value.details() or "")


def test_single_node_volume_published_elsewhere_names_that_node(storage_host: Agent) -> None:
    volume = create(storage_host, "exclusive", mount_cap())
    publish(storage_host, volume.volume_id, "node-a", mount_cap())
    with pytest.raises(grpc.RpcError) as caught:
        publish(storage_host, volume.volume_id, "node-b", mount_cap())
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "node-a" in (caught.value.details() or "")


def test_multi_writer_filesystem_is_refused_with_the_reason(storage_host: Agent) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(storage_host, "mnmw-fs", mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw block volumes only" in (caught.value.details() or "")
