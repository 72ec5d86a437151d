"""Validation tables: malformed requests and hostile identifiers.

Every case is (service, method, request builder, accepted codes).  The spec
(Error Scheme) wants INVALID_ARGUMENT for a missing or invalid field; bad
input must never surface as UNKNOWN or INTERNAL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    AM,
    SC,
    SECRETS,
    Agent,
    MiB,
    code_of,
    crange,
    csi,
    exact,
    expect_code,
    mount_cap,
    snapshot_source,
    unique,
    volume_source,
)

LONG = "x" * 129  # over the 128-byte limit
LONG_UTF8 = "é" * 65  # 130 bytes, 65 characters


@dataclass
class Ctx:
    agent: Agent
    volume: Any
    snapshot: Any
    staging: str
    target: str


@pytest.fixture(scope="module")
def ctx(agent: Agent) -> Ctx:
    vol = agent.create_volume(8 * MiB)
    snap = agent.ctl.CreateSnapshot(
        csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=unique("snap"))
    ).snapshot
    return Ctx(agent, vol, snap, agent.staging_dir(), agent.path("mount"))


Builder = Callable[[Ctx], Any]


@dataclass
class Case:
    id: str
    service: str
    method: str
    build: Builder
    codes: tuple[grpc.StatusCode, ...] = (SC.INVALID_ARGUMENT,)


def cv(**kw: Any) -> Builder:
    def build(c: Ctx) -> Any:
        fields: dict[str, Any] = {
            "name": unique(),
            "volume_capabilities": [mount_cap()],
            "capacity_range": exact(4 * MiB),
            "secrets": SECRETS,
        }
        fields.update(kw)
        return csi.CreateVolumeRequest(**{k: v for k, v in fields.items() if v is not None})

    return build


def no_access_type() -> Any:
    return csi.VolumeCapability(access_mode=csi.VolumeCapability.AccessMode(mode=AM.SINGLE_NODE_WRITER))


def no_access_mode() -> Any:
    return csi.VolumeCapability(mount=csi.VolumeCapability.MountVolume(fs_type="ext4"))


def unknown_access_mode() -> Any:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
        access_mode=csi.VolumeCapability.AccessMode(mode=AM.UNKNOWN),
    )


CASES: list[Case] = [
    # ---- CreateVolume
    Case("create-no-name", "ctl", "CreateVolume", cv(name="")),
    Case("create-no-caps", "ctl", "CreateVolume", cv(volume_capabilities=[])),
    Case("create-cap-no-access-type", "ctl", "CreateVolume", cv(volume_capabilities=[no_access_type()])),
    Case("create-cap-no-access-mode", "ctl", "CreateVolume", cv(volume_capabilities=[no_access_mode()])),
    Case("create-cap-unknown-mode", "ctl", "CreateVolume", cv(volume_capabilities=[unknown_access_mode()])),
    Case("create-name-129B", "ctl", "CreateVolume", cv(name=LONG)),
    Case("create-name-130B-utf8", "ctl", "CreateVolume", cv(name=LONG_UTF8)),
    Case("create-name-control-char", "ctl", "CreateVolume", cv(name="bad\x01name")),
    Case("create-bad-fstype", "ctl", "CreateVolume", cv(volume_capabilities=[mount_cap("zfs")])),
    Case("create-unknown-param", "ctl", "CreateVolume", cv(parameters={"nope": "1"})),
    Case("create-multi-node", "ctl", "CreateVolume",
         cv(volume_capabilities=[mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)])),
    Case("create-empty-snapshot-source", "ctl", "CreateVolume",
         cv(volume_content_source=snapshot_source("")), (SC.INVALID_ARGUMENT, SC.NOT_FOUND)),
    Case("create-empty-volume-source", "ctl", "CreateVolume",
         cv(volume_content_source=volume_source("")), (SC.INVALID_ARGUMENT, SC.NOT_FOUND)),
    Case("create-negative-capacity", "ctl", "CreateVolume", cv(capacity_range=crange(-MiB)),
         (SC.INVALID_ARGUMENT, SC.OUT_OF_RANGE)),
    # ---- DeleteVolume
    Case("delete-no-id", "ctl", "DeleteVolume", lambda c: csi.DeleteVolumeRequest(secrets=SECRETS)),
    Case("delete-id-129B", "ctl", "DeleteVolume", lambda c: csi.DeleteVolumeRequest(volume_id=LONG)),
    # ---- ControllerPublish / Unpublish
    Case("cpub-no-volume", "ctl", "ControllerPublishVolume",
         lambda c: csi.ControllerPublishVolumeRequest(node_id=c.agent.node_id,
                                                      volume_capability=mount_cap())),
    Case("cpub-no-node", "ctl", "ControllerPublishVolume",
         lambda c: csi.ControllerPublishVolumeRequest(volume_id=c.volume.volume_id,
                                                      volume_capability=mount_cap())),
    Case("cpub-no-cap", "ctl", "ControllerPublishVolume",
         lambda c: csi.ControllerPublishVolumeRequest(volume_id=c.volume.volume_id,
                                                      node_id=c.agent.node_id)),
    Case("cpub-id-129B", "ctl", "ControllerPublishVolume",
         lambda c: csi.ControllerPublishVolumeRequest(volume_id=LONG, node_id=c.agent.node_id,
                                                      volume_capability=mount_cap())),
    Case("cpub-node-257B", "ctl", "ControllerPublishVolume",
         lambda c: csi.ControllerPublishVolumeRequest(volume_id=c.volume.volume_id, node_id="n" * 257,
                                                      volume_capability=mount_cap()),
         (SC.INVALID_ARGUMENT, SC.NOT_FOUND)),
    Case("cunpub-no-volume", "ctl", "ControllerUnpublishVolume",
         lambda c: csi.ControllerUnpublishVolumeRequest(node_id=c.agent.node_id)),
    # ---- ValidateVolumeCapabilities
    Case("validate-no-volume", "ctl", "ValidateVolumeCapabilities",
         lambda c: csi.ValidateVolumeCapabilitiesRequest(volume_capabilities=[mount_cap()])),
    Case("validate-no-caps", "ctl", "ValidateVolumeCapabilities",
         lambda c: csi.ValidateVolumeCapabilitiesRequest(volume_id=c.volume.volume_id)),
    # ---- List*
    Case("listvol-negative", "ctl", "ListVolumes", lambda c: csi.ListVolumesRequest(max_entries=-5)),
    Case("listsnap-negative", "ctl", "ListSnapshots", lambda c: csi.ListSnapshotsRequest(max_entries=-5)),
    Case("listvol-bad-token", "ctl", "ListVolumes",
         lambda c: csi.ListVolumesRequest(starting_token="zzz-not-a-token"), (SC.ABORTED,)),
    Case("listsnap-bad-token", "ctl", "ListSnapshots",
         lambda c: csi.ListSnapshotsRequest(starting_token="zzz-not-a-token"), (SC.ABORTED,)),
    # ---- ControllerExpand / GetVolume
    Case("cexpand-no-volume", "ctl", "ControllerExpandVolume",
         lambda c: csi.ControllerExpandVolumeRequest(capacity_range=crange(16 * MiB))),
    Case("cexpand-no-range", "ctl", "ControllerExpandVolume",
         lambda c: csi.ControllerExpandVolumeRequest(volume_id=c.volume.volume_id)),
    Case("cexpand-id-129B", "ctl", "ControllerExpandVolume",
         lambda c: csi.ControllerExpandVolumeRequest(volume_id=LONG, capacity_range=crange(16 * MiB))),
    Case("cgetvol-no-volume", "ctl", "ControllerGetVolume", lambda c: csi.ControllerGetVolumeRequest()),
    Case("cgetvol-id-129B", "ctl", "ControllerGetVolume",
         lambda c: csi.ControllerGetVolumeRequest(volume_id=LONG)),
    # ---- snapshots
    Case("snap-no-name", "ctl", "CreateSnapshot",
         lambda c: csi.CreateSnapshotRequest(source_volume_id=c.volume.volume_id, secrets=SECRETS)),
    Case("snap-no-source", "ctl", "CreateSnapshot", lambda c: csi.CreateSnapshotRequest(name=unique("s"))),
    Case("snap-name-129B", "ctl", "CreateSnapshot",
         lambda c: csi.CreateSnapshotRequest(source_volume_id=c.volume.volume_id, name=LONG)),
    Case("delsnap-no-id", "ctl", "DeleteSnapshot", lambda c: csi.DeleteSnapshotRequest()),
    Case("delsnap-id-129B", "ctl", "DeleteSnapshot", lambda c: csi.DeleteSnapshotRequest(snapshot_id=LONG)),
    Case("getsnap-no-id", "ctl", "GetSnapshot", lambda c: csi.GetSnapshotRequest()),
    # ---- NodeStage / Unstage
    Case("stage-no-volume", "node", "NodeStageVolume",
         lambda c: csi.NodeStageVolumeRequest(staging_target_path=c.staging, volume_capability=mount_cap())),
    Case("stage-no-staging", "node", "NodeStageVolume",
         lambda c: csi.NodeStageVolumeRequest(volume_id=c.volume.volume_id, volume_capability=mount_cap())),
    Case("stage-no-cap", "node", "NodeStageVolume",
         lambda c: csi.NodeStageVolumeRequest(volume_id=c.volume.volume_id, staging_target_path=c.staging)),
    Case("stage-cap-no-access-type", "node", "NodeStageVolume",
         lambda c: csi.NodeStageVolumeRequest(volume_id=c.volume.volume_id, staging_target_path=c.staging,
                                              volume_capability=no_access_type())),
    Case("stage-id-129B", "node", "NodeStageVolume",
         lambda c: csi.NodeStageVolumeRequest(volume_id=LONG, staging_target_path=c.staging,
                                              volume_capability=mount_cap())),
    Case("unstage-no-volume", "node", "NodeUnstageVolume",
         lambda c: csi.NodeUnstageVolumeRequest(staging_target_path=c.staging)),
    Case("unstage-no-staging", "node", "NodeUnstageVolume",
         lambda c: csi.NodeUnstageVolumeRequest(volume_id=c.volume.volume_id)),
    # ---- NodePublish / Unpublish
    Case("publish-no-volume", "node", "NodePublishVolume",
         lambda c: csi.NodePublishVolumeRequest(staging_target_path=c.staging, target_path=c.target,
                                                volume_capability=mount_cap())),
    Case("publish-no-target", "node", "NodePublishVolume",
         lambda c: csi.NodePublishVolumeRequest(volume_id=c.volume.volume_id, staging_target_path=c.staging,
                                                volume_capability=mount_cap())),
    Case("publish-no-cap", "node", "NodePublishVolume",
         lambda c: csi.NodePublishVolumeRequest(volume_id=c.volume.volume_id, staging_target_path=c.staging,
                                                target_path=c.target)),
    Case("publish-id-129B", "node", "NodePublishVolume",
         lambda c: csi.NodePublishVolumeRequest(volume_id=LONG, staging_target_path=c.staging,
                                                target_path=c.target, volume_capability=mount_cap())),
    Case("unpublish-no-volume", "node", "NodeUnpublishVolume",
         lambda c: csi.NodeUnpublishVolumeRequest(target_path=c.target)),
    Case("unpublish-no-target", "node", "NodeUnpublishVolume",
         lambda c: csi.NodeUnpublishVolumeRequest(volume_id=c.volume.volume_id)),
    # ---- NodeGetVolumeStats / NodeExpand
    Case("stats-no-volume", "node", "NodeGetVolumeStats",
         lambda c: csi.NodeGetVolumeStatsRequest(volume_path=c.target)),
    Case("stats-no-path", "node", "NodeGetVolumeStats",
         lambda c: csi.NodeGetVolumeStatsRequest(volume_id=c.volume.volume_id)),
    Case("nexpand-no-volume", "node", "NodeExpandVolume",
         lambda c: csi.NodeExpandVolumeRequest(volume_path=c.target, capacity_range=crange(16 * MiB))),
    Case("nexpand-no-path", "node", "NodeExpandVolume",
         lambda c: csi.NodeExpandVolumeRequest(volume_id=c.volume.volume_id, capacity_range=crange(16 * MiB))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_requests(ctx: Ctx, case: Case) -> None:
    service = ctx.agent.ctl if case.service == "ctl" else ctx.agent.node
    err = expect_code(getattr(service, case.method), case.build(ctx), *case.codes)
    assert err.details(), "errors need a human-readable message"


# --------------------------------------------------------------------------
# hostile identifiers: never UNKNOWN/INTERNAL, never touch anything outside the pool
# --------------------------------------------------------------------------

HOSTILE_IDS = [
    "--help",
    "-rf",
    "../../etc",
    "../../../../../../etc/passwd",
    "/etc/passwd",
    "a/b",
    ".",
    "..",
    "vol;rm -rf /",
    "$(touch /tmp/basalt-pwned)",
    "pvc-ünïcødé-✓",
    " ",
    "x\ny",
]

LOOKUPS: list[tuple[str, str, Callable[[Ctx, str], Any]]] = [
    ("ctl", "ControllerGetVolume", lambda c, i: csi.ControllerGetVolumeRequest(volume_id=i)),
    ("ctl", "ControllerPublishVolume",
     lambda c, i: csi.ControllerPublishVolumeRequest(volume_id=i, node_id=c.agent.node_id,
                                                     volume_capability=mount_cap())),
    ("ctl", "ValidateVolumeCapabilities",
     lambda c, i: csi.ValidateVolumeCapabilitiesRequest(volume_id=i, volume_capabilities=[mount_cap()])),
    ("ctl", "ControllerExpandVolume",
     lambda c, i: csi.ControllerExpandVolumeRequest(volume_id=i, capacity_range=crange(16 * MiB))),
    ("ctl", "CreateSnapshot",
     lambda c, i: csi.CreateSnapshotRequest(source_volume_id=i, name=unique("s"))),
    ("ctl", "GetSnapshot", lambda c, i: csi.GetSnapshotRequest(snapshot_id=i)),
    ("ctl", "CreateVolume",
     lambda c, i: csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap()],
                                          capacity_range=exact(4 * MiB),
                                          volume_content_source=volume_source(i))),
    ("ctl", "CreateVolume",
     lambda c, i: csi.CreateVolumeRequest(name=unique(), volume_capabilities=[mount_cap()],
                                          capacity_range=exact(4 * MiB),
                                          volume_content_source=snapshot_source(i))),
    ("node", "NodeStageVolume",
     lambda c, i: csi.NodeStageVolumeRequest(volume_id=i, staging_target_path=c.staging,
                                             volume_capability=mount_cap())),
    ("node", "NodePublishVolume",
     lambda c, i: csi.NodePublishVolumeRequest(volume_id=i, staging_target_path=c.staging,
                                               target_path=c.target, volume_capability=mount_cap())),
    ("node", "NodeGetVolumeStats",
     lambda c, i: csi.NodeGetVolumeStatsRequest(volume_id=i, volume_path=c.staging)),
    ("node", "NodeExpandVolume",
     lambda c, i: csi.NodeExpandVolumeRequest(volume_id=i, volume_path=c.staging)),
]


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda x: x[1])
def test_hostile_ids_in_lookups(ctx: Ctx, lookup: tuple[str, str, Callable[[Ctx, str], Any]]) -> None:
    service_name, method, build = lookup
    service = ctx.agent.ctl if service_name == "ctl" else ctx.agent.node
    failures = []
    for hostile in HOSTILE_IDS:
        code, res = code_of(getattr(service, method), build(ctx, hostile))
        if code not in (SC.NOT_FOUND, SC.INVALID_ARGUMENT):
            failures.append((hostile, code.name, res.details() if code != SC.OK else str(res)))
    assert not failures, f"{method}: hostile ids gave {failures}"
    assert not os.path.exists("/tmp/basalt-pwned")
    assert os.path.isfile("/etc/passwd")


@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("DeleteVolume", lambda i: csi.DeleteVolumeRequest(volume_id=i)),
        ("DeleteSnapshot", lambda i: csi.DeleteSnapshotRequest(snapshot_id=i)),
        ("ControllerUnpublishVolume",
         lambda i: csi.ControllerUnpublishVolumeRequest(volume_id=i, node_id="n")),
    ],
    ids=["DeleteVolume", "DeleteSnapshot", "ControllerUnpublishVolume"],
)
def test_hostile_ids_in_deletes(ctx: Ctx, method: str, build: Callable[[str], Any]) -> None:
    """Idempotent clean-up calls: the spec's OK for an object that does not exist, and no damage."""
    pool_before = ctx.agent.pool_objects()
    failures = []
    for hostile in HOSTILE_IDS:
        code, res = code_of(getattr(ctx.agent.ctl, method), build(hostile))
        if code != SC.OK:
            failures.append((hostile, code.name, res.details()))
    assert not failures, f"{method}: hostile ids gave {failures}"
    assert ctx.agent.pool_objects() == pool_before
    assert os.path.isfile("/etc/passwd")
    # the real volume and snapshot are untouched
    ctx.agent.ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=ctx.volume.volume_id))
    ctx.agent.ctl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=ctx.snapshot.snapshot_id))


@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("NodeUnstageVolume", lambda c, i: csi.NodeUnstageVolumeRequest(volume_id=i, staging_target_path=c.staging)),
        ("NodeUnpublishVolume", lambda c, i: csi.NodeUnpublishVolumeRequest(volume_id=i, target_path=c.target)),
    ],
    ids=["NodeUnstageVolume", "NodeUnpublishVolume"],
)
def test_hostile_ids_in_node_cleanup(ctx: Ctx, method: str, build: Callable[[Ctx, str], Any]) -> None:
    """README: an id neither recorded on the node nor in the pool is NOT_FOUND, whatever the path."""
    failures = []
    for hostile in HOSTILE_IDS:
        code, res = code_of(getattr(ctx.agent.node, method), build(ctx, hostile))
        if code != SC.NOT_FOUND:
            failures.append((hostile, code.name, res.details() if code != SC.OK else "OK"))
    assert not failures, f"{method}: hostile ids gave {failures}"
    assert os.path.isdir(ctx.staging), "a clean-up call removed the CO's staging directory"


def test_oversized_maps_rejected(ctx: Ctx) -> None:
    """Maps are limited to 4 KiB by the spec: the agent refuses more, naming the field."""
    params = {f"csi.storage.k8s.io/k{i}": "v" * 100 for i in range(64)}
    code, res = code_of(ctx.agent.ctl.CreateVolume, cv(parameters=params)(ctx))
    assert code == SC.INVALID_ARGUMENT, (code, getattr(res, "details", lambda: "")())
    assert "parameters is larger than 4096 bytes" in res.details()
