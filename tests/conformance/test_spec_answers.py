"""Answers the spec gives: undecodable bytes, secrets kept out of logs and errors, reader-only modes."""

from __future__ import annotations

import errno
import os
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    AM,
    EPHEMERAL_KEY,
    SC,
    Agent,
    MiB,
    assert_erofs,
    block_cap,
    bring_up,
    code_of,
    csi,
    expect_code,
    iter_log_records,
    loop_table,
    mount_cap,
    read_block,
    tear_down,
    top_mount,
    unique,
    write_block,
)

# Bytes no message decodes from, whatever its fields: a length-delimited field longer than the data, a
# tag without its value, wire type 7 (none exists), a group never closed.
UNDECODABLE = (b"\x0a\x05ab", b"\x08", b"\x0f\x00", b"\x0b")


def all_methods() -> list[str]:
    return [f"/{service.full_name}/{method.name}"
            for service in csi.DESCRIPTOR.services_by_name.values() for method in service.methods]


def raw_call(agent: Agent, method: str, payload: bytes) -> grpc.RpcError:
    assert agent.channel is not None
    call = agent.channel.unary_unary(method)  # no (de)serializers: bytes as they are
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=30)
    error = info.value
    assert isinstance(error, grpc.RpcError)
    return error


def test_undecodable_requests_are_invalid_argument(agent: Agent) -> None:
    methods = [m for m in all_methods() if "GroupController" not in m and "SnapshotMetadata" not in m]
    assert len(methods) > 20
    for method in methods:
        for payload in UNDECODABLE:
            error = raw_call(agent, method, payload)
            assert error.code() == SC.INVALID_ARGUMENT, (method, payload, error.code(), error.details())
            assert "not a valid" in (error.details() or "")
    agent.identity.Probe(csi.ProbeRequest())  # still serving
    lines = [r for r in iter_log_records(agent.log()) if r.get("code") == "INVALID_ARGUMENT"
             and "not a valid" in str(r.get("error"))]
    assert len(lines) >= len(methods) * len(UNDECODABLE), "every undecodable request gets its log line"


SENTINELS = {
    "secret": "Secret-SENTINEL-4711",
    "flag_value": "FlagValue-SENTINEL-0815",
    "flag_rejected": "Rejected-SENTINEL-2342",
    "context": "Context-SENTINEL-1337",
}


def test_secrets_flags_and_context_values_never_logged_or_echoed(agent: Agent) -> None:
    secrets = {"password": SENTINELS["secret"], "node.session.auth.password": SENTINELS["secret"]}
    accepted_flag = f"sentinelopt={SENTINELS['flag_value']}"  # well-formed: the mount itself refuses it
    rejected_flag = f"pass word={SENTINELS['flag_rejected']}"  # refused by the agent's own check
    context = {"vault-token": SENTINELS["context"], "csi.storage.k8s.io/pod.name": "p"}
    details: list[str] = []

    def call(method: Any, request: Any) -> None:
        code, result = code_of(method, request)
        # ValidateVolumeCapabilities says why in its answer's message (its `confirmed` echoes the request)
        details.append(result.details() or "" if code != SC.OK else getattr(result, "message", ""))

    cap_ok = mount_cap()
    vol = agent.create_volume(8 * MiB, cap=cap_ok)
    for flags in ([accepted_flag], [rejected_flag], ["ro", accepted_flag, rejected_flag]):
        cap = mount_cap("ext4", flags=flags)
        call(agent.ctl.CreateVolume, csi.CreateVolumeRequest(name=unique(), volume_capabilities=[cap],
                                                             secrets=secrets))
        call(agent.ctl.ValidateVolumeCapabilities, csi.ValidateVolumeCapabilitiesRequest(
            volume_id=vol.volume_id, volume_capabilities=[cap], volume_context=context, secrets=secrets))
        call(agent.node.NodeStageVolume, csi.NodeStageVolumeRequest(
            volume_id=vol.volume_id, staging_target_path=agent.staging_dir(), volume_capability=cap,
            volume_context=context, secrets=secrets))
        call(agent.node.NodePublishVolume, csi.NodePublishVolumeRequest(
            volume_id=unique("csi-eph"), target_path=agent.path("mount"), volume_capability=cap,
            volume_context={EPHEMERAL_KEY: "true", "size": "16Mi"}, secrets=secrets))
    # unknown attributes of an inline volume are refused by name, never by value
    call(agent.node.NodePublishVolume, csi.NodePublishVolumeRequest(
        volume_id=unique("csi-eph"), target_path=agent.path("mount"), volume_capability=cap_ok,
        volume_context={**context, EPHEMERAL_KEY: "true"}, secrets=secrets))
    att = bring_up(agent, vol, cap_ok, publish=False)
    target = agent.publish(vol.volume_id, cap_ok, att.staging, volume_context=context, secrets=secrets)
    att.target = target
    tear_down(agent, att)

    assert len(details) == 13, details
    assert any("mount option #1 is not allowed" in d for d in details), details
    assert any("(rc=" in d for d in details), f"no mount failure among the answers: {details}"
    log = agent.log()
    for what, sentinel in SENTINELS.items():
        assert sentinel not in log, f"the {what} sentinel reached the agent's log"
        leaked = [d for d in details if sentinel in d]
        assert not leaked, f"the {what} sentinel was echoed in an error message: {leaked}"
    assert "vault-token" in log, "the context key is logged, its value withheld"


def read_only_views(device: str) -> list[str]:
    return [lo.device for lo in loop_table() if lo.back_file == os.path.realpath(device)]


def assert_block_read_only(target: str) -> None:
    read_block(target, 512)
    with pytest.raises(OSError) as info:
        write_block(target, b"x" * 512)
    assert info.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES), info.value


def test_read_only_block_publish_refuses_writes(agent: Agent) -> None:
    """A device node bound read-only stays writable; a read-only publish binds a read-only loop device."""
    cap = block_cap()
    vol = agent.create_volume(8 * MiB, cap=cap)
    att = bring_up(agent, vol, cap, publish=False)
    ro_a = agent.publish(vol.volume_id, cap, att.staging, readonly=True)
    ro_b = agent.publish(vol.volume_id, cap, att.staging, readonly=True)
    rw = agent.publish(vol.volume_id, cap, att.staging, readonly=False)
    for target in (ro_a, ro_b):
        assert_block_read_only(target)
    write_block(rw, b"w" * 512)  # the read-write target of the same volume stays writable
    assert read_block(ro_a, 512) == b"w" * 512
    assert att.device
    device = att.device
    assert len(read_only_views(device)) == 1, "one read-only view shared by the read-only targets"
    agent.unpublish(vol.volume_id, ro_a)
    assert len(read_only_views(device)) == 1, "the view stays while ro_b binds it"
    agent.unpublish(vol.volume_id, ro_b)
    assert read_only_views(device) == [], "the last read-only unpublish detaches the view"
    att.target = rw
    tear_down(agent, att)


@pytest.mark.parametrize("readonly", [False, True], ids=["readonly-false", "readonly-true"])
@pytest.mark.parametrize("mode", [AM.SINGLE_NODE_READER_ONLY, AM.MULTI_NODE_READER_ONLY],
                         ids=["single-node-reader", "multi-node-reader"])
def test_reader_only_modes_publish_read_only(agent: Agent, mode: Any, readonly: bool) -> None:
    """NodePublish: a reader-only access mode is read-only whatever `readonly` says (README: access modes).

    The node side only: a local pool's ControllerPublish refuses multi-node
    modes, a storage host's is tested in tests/iscsi.
    """
    cap = mount_cap(mode=mode)
    vol = agent.create_volume(8 * MiB)
    staging = agent.stage(vol.volume_id, cap)
    target = agent.publish(vol.volume_id, cap, staging, readonly=readonly)
    assert "ro" in top_mount(target).options
    assert_erofs(target)
    # the other readonly value names the same publication: compatible
    agent.publish(vol.volume_id, cap, staging, target=target, readonly=not readonly)
    agent.unpublish(vol.volume_id, target)
    agent.unstage(vol.volume_id, staging)

    bcap = block_cap(mode)
    bvol = agent.create_volume(8 * MiB, cap=block_cap())
    bstaging = agent.stage(bvol.volume_id, bcap)
    btarget = agent.publish(bvol.volume_id, bcap, bstaging, readonly=readonly)
    assert_block_read_only(btarget)
    agent.unpublish(bvol.volume_id, btarget)
    agent.unstage(bvol.volume_id, bstaging)


@pytest.mark.parametrize("readonly", [False, True], ids=["readonly-false", "readonly-true"])
def test_reader_only_controller_publish_is_read_only(agent: Agent, readonly: bool) -> None:
    """ControllerPublish records a reader-only publication as read-only: the other readonly value is the same one."""
    cap = mount_cap(mode=AM.SINGLE_NODE_READER_ONLY)
    vol = agent.create_volume(8 * MiB, cap=cap)
    for value in (readonly, not readonly, readonly):
        agent.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=cap, readonly=value))
    # a writer's publication to the same node is another one
    expect_code(agent.ctl.ControllerPublishVolume, csi.ControllerPublishVolumeRequest(
        volume_id=vol.volume_id, node_id=agent.node_id, volume_capability=mount_cap(), readonly=False),
        SC.ALREADY_EXISTS)
    agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
        volume_id=vol.volume_id, node_id=agent.node_id))


def test_reader_only_publish_keeps_the_data_unchanged(agent: Agent) -> None:
    writer, reader = mount_cap(), mount_cap(mode=AM.SINGLE_NODE_READER_ONLY)
    vol = agent.create_volume(8 * MiB, cap=writer)
    att = bring_up(agent, vol, writer)
    assert att.target
    with open(os.path.join(att.target, "kept"), "wb") as handle:
        handle.write(b"written by the writer")
    tear_down(agent, att)
    ratt = bring_up(agent, vol, reader, readonly=False)
    assert ratt.target
    with open(os.path.join(ratt.target, "kept"), "rb") as handle:
        assert handle.read() == b"written by the writer"
    assert_erofs(ratt.target)
    tear_down(agent, ratt)
