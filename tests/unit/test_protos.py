"""Drift and protocol-fact tests for the generated CSI / kubelet registration code.

(a) Regenerating with agent/gen_protos.py must reproduce the checked-in files
    byte for byte (skipped only when grpcio-tools is not the pinned version).
(b) The compiled schema must carry facts of the wire protocol, taken from the
    CSI spec v1.12.0 and the kubelet pluginregistration API, so that a
    transcription error in the .proto files is caught here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor as _descriptor

from basalt_agent.proto import (
    csi_pb2,
    csi_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = REPO_ROOT / "agent"
GEN_SCRIPT = AGENT_DIR / "gen_protos.py"


def _load_gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", GEN_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_protos = _load_gen_protos()


def _grpcio_tools_version() -> str | None:
    try:
        return importlib.metadata.version("grpcio-tools")
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------
# (a) drift
# ---------------------------------------------------------------------------


def test_generated_code_matches_checked_in(tmp_path: Path) -> None:
    pin: str = gen_protos.GRPCIO_TOOLS_PIN
    found = _grpcio_tools_version()
    if found != pin:
        pytest.skip(f"grpcio-tools=={pin} is required to regenerate (found {found or 'none'})")

    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    rel_paths: list[str] = gen_protos.generated_files()
    assert len(rel_paths) == 6
    stale = [
        rel
        for rel in rel_paths
        if not (AGENT_DIR / rel).is_file() or (AGENT_DIR / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"checked-in generated code is stale; run `python agent/gen_protos.py`: {stale}"

    produced = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert produced == sorted(rel_paths)


def test_gen_protos_refuses_other_grpcio_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen_protos, "installed_grpcio_tools", lambda: "1.0.0")
    assert gen_protos.main(["--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# (b) protocol facts: services and method paths
# ---------------------------------------------------------------------------

EXPECTED_CSI_METHODS: dict[str, set[str]] = {
    "Identity": {"GetPluginInfo", "GetPluginCapabilities", "Probe"},
    "Controller": {
        "CreateVolume",
        "DeleteVolume",
        "ControllerPublishVolume",
        "ControllerUnpublishVolume",
        "ValidateVolumeCapabilities",
        "ListVolumes",
        "GetCapacity",
        "ControllerGetCapabilities",
        "CreateSnapshot",
        "DeleteSnapshot",
        "ListSnapshots",
        "GetSnapshot",
        "ControllerExpandVolume",
        "ControllerGetVolume",
        "ControllerModifyVolume",
    },
    "Node": {
        "NodeStageVolume",
        "NodeUnstageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeGetVolumeStats",
        "NodeExpandVolume",
        "NodeGetCapabilities",
        "NodeGetInfo",
    },
    "GroupController": {
        "GroupControllerGetCapabilities",
        "CreateVolumeGroupSnapshot",
        "DeleteVolumeGroupSnapshot",
        "GetVolumeGroupSnapshot",
    },
    "SnapshotMetadata": {"GetMetadataAllocated", "GetMetadataDelta"},
}


def _method_paths(service: _descriptor.ServiceDescriptor) -> set[str]:
    return {f"/{service.full_name}/{m.name}" for m in service.methods}


def test_csi_package_and_services() -> None:
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    assert set(csi_pb2.DESCRIPTOR.services_by_name) == set(EXPECTED_CSI_METHODS)


@pytest.mark.parametrize("service_name", sorted(EXPECTED_CSI_METHODS))
def test_csi_full_method_names(service_name: str) -> None:
    service = csi_pb2.DESCRIPTOR.services_by_name[service_name]
    expected = {f"/csi.v1.{service_name}/{name}" for name in EXPECTED_CSI_METHODS[service_name]}
    assert _method_paths(service) == expected


def test_csi_spot_method_paths_and_types() -> None:
    node = csi_pb2.DESCRIPTOR.services_by_name["Node"]
    stage = node.methods_by_name["NodeStageVolume"]
    assert f"/{node.full_name}/{stage.name}" == "/csi.v1.Node/NodeStageVolume"
    assert stage.input_type.full_name == "csi.v1.NodeStageVolumeRequest"
    assert stage.output_type.full_name == "csi.v1.NodeStageVolumeResponse"
    probe = csi_pb2.DESCRIPTOR.services_by_name["Identity"].methods_by_name["Probe"]
    assert probe.output_type.fields_by_name["ready"].message_type.full_name == "google.protobuf.BoolValue"


def test_csi_streaming_shape() -> None:
    for service in csi_pb2.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert not method.client_streaming, method.full_name
            assert method.server_streaming == (service.name == "SnapshotMetadata"), method.full_name


class _RecordingChannel:
    """Stands in for grpc.Channel: records the method paths a stub binds."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _record(self, method: str, *args: object, **kwargs: object) -> object:
        self.paths.append(method)
        return None

    unary_unary = _record
    unary_stream = _record
    stream_unary = _record
    stream_stream = _record


@pytest.mark.parametrize("service_name", sorted(EXPECTED_CSI_METHODS))
def test_csi_grpc_stub_paths(service_name: str) -> None:
    channel = _RecordingChannel()
    getattr(csi_pb2_grpc, f"{service_name}Stub")(channel)
    assert set(channel.paths) == {f"/csi.v1.{service_name}/{name}" for name in EXPECTED_CSI_METHODS[service_name]}


# ---------------------------------------------------------------------------
# (b) protocol facts: field numbers (spec text of csi.proto)
# ---------------------------------------------------------------------------

FIELD_NUMBERS: dict[str, dict[str, int]] = {
    "GetPluginInfoResponse": {"name": 1, "vendor_version": 2, "manifest": 3},
    "ProbeResponse": {"ready": 1},
    "CreateVolumeRequest": {
        "name": 1,
        "capacity_range": 2,
        "volume_capabilities": 3,
        "parameters": 4,
        "secrets": 5,
        "volume_content_source": 6,
        "accessibility_requirements": 7,
    },
    "Volume": {"capacity_bytes": 1, "volume_id": 2, "volume_context": 3, "content_source": 4, "accessible_topology": 5},
    "VolumeCapability": {"block": 1, "mount": 2, "access_mode": 3},
    "VolumeCapability.MountVolume": {"fs_type": 1, "mount_flags": 2},
    "DeleteVolumeRequest": {"volume_id": 1, "secrets": 2},
    "ControllerPublishVolumeRequest": {
        "volume_id": 1,
        "node_id": 2,
        "volume_capability": 3,
        "readonly": 4,
        "secrets": 5,
        "volume_context": 6,
    },
    "ControllerPublishVolumeResponse": {"publish_context": 1},
    "ControllerUnpublishVolumeRequest": {"volume_id": 1, "node_id": 2, "secrets": 3},
    "ValidateVolumeCapabilitiesRequest": {
        "volume_id": 1,
        "volume_context": 2,
        "volume_capabilities": 3,
        "parameters": 4,
        "secrets": 5,
    },
    "ValidateVolumeCapabilitiesResponse": {"confirmed": 1, "message": 2},
    "ListVolumesRequest": {"max_entries": 1, "starting_token": 2},
    "CreateSnapshotRequest": {"source_volume_id": 1, "name": 2, "secrets": 3, "parameters": 4},
    "Snapshot": {"size_bytes": 1, "snapshot_id": 2, "source_volume_id": 3, "creation_time": 4, "ready_to_use": 5},
    "DeleteSnapshotRequest": {"snapshot_id": 1, "secrets": 2},
    "ListSnapshotsRequest": {"max_entries": 1, "starting_token": 2, "source_volume_id": 3, "snapshot_id": 4},
    "NodeStageVolumeRequest": {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "volume_capability": 4,
        "secrets": 5,
        "volume_context": 6,
    },
    "NodeUnstageVolumeRequest": {"volume_id": 1, "staging_target_path": 2},
    "NodePublishVolumeRequest": {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "target_path": 4,
        "volume_capability": 5,
        "readonly": 6,
        "secrets": 7,
        "volume_context": 8,
    },
    "NodeUnpublishVolumeRequest": {"volume_id": 1, "target_path": 2},
    "NodeGetVolumeStatsRequest": {"volume_id": 1, "volume_path": 2},
    "VolumeUsage": {"available": 1, "total": 2, "used": 3, "unit": 4},
    "NodeGetInfoResponse": {"node_id": 1, "max_volumes_per_node": 2, "accessible_topology": 3},
}


def _message(path: str) -> _descriptor.Descriptor:
    first, *nested = path.split(".")
    desc = csi_pb2.DESCRIPTOR.message_types_by_name[first]
    for name in nested:
        desc = desc.nested_types_by_name[name]
    return desc


@pytest.mark.parametrize("message_name", sorted(FIELD_NUMBERS))
def test_csi_field_numbers(message_name: str) -> None:
    fields = _message(message_name).fields_by_name
    got = {name: fields[name].number for name in FIELD_NUMBERS[message_name]}
    assert got == FIELD_NUMBERS[message_name]


def test_csi_wire_encoding_of_staging_target_path() -> None:
    # Field 3, wire type 2 (length-delimited) -> tag byte 0x1a.
    req = csi_pb2.NodeStageVolumeRequest(staging_target_path="/s")
    assert req.SerializeToString() == b"\x1a\x02/s"


# ---------------------------------------------------------------------------
# (b) protocol facts: enums
# ---------------------------------------------------------------------------


def _enum_values(enum: _descriptor.EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def test_access_modes() -> None:
    mode = csi_pb2.VolumeCapability.AccessMode.Mode.DESCRIPTOR
    assert _enum_values(mode) == {
        "UNKNOWN": 0,
        "SINGLE_NODE_WRITER": 1,
        "SINGLE_NODE_READER_ONLY": 2,
        "MULTI_NODE_READER_ONLY": 3,
        "MULTI_NODE_SINGLE_WRITER": 4,
        "MULTI_NODE_MULTI_WRITER": 5,
        "SINGLE_NODE_SINGLE_WRITER": 6,
        "SINGLE_NODE_MULTI_WRITER": 7,
    }


def test_controller_capabilities() -> None:
    rpc_type = csi_pb2.ControllerServiceCapability.RPC.Type.DESCRIPTOR
    assert _enum_values(rpc_type) == {
        "UNKNOWN": 0,
        "CREATE_DELETE_VOLUME": 1,
        "PUBLISH_UNPUBLISH_VOLUME": 2,
        "LIST_VOLUMES": 3,
        "GET_CAPACITY": 4,
        "CREATE_DELETE_SNAPSHOT": 5,
        "LIST_SNAPSHOTS": 6,
        "CLONE_VOLUME": 7,
        "PUBLISH_READONLY": 8,
        "EXPAND_VOLUME": 9,
        "LIST_VOLUMES_PUBLISHED_NODES": 10,
        "VOLUME_CONDITION": 11,
        "GET_VOLUME": 12,
        "SINGLE_NODE_MULTI_WRITER": 13,
        "MODIFY_VOLUME": 14,
        "GET_SNAPSHOT": 15,
    }


def test_node_capabilities() -> None:
    rpc_type = csi_pb2.NodeServiceCapability.RPC.Type.DESCRIPTOR
    assert _enum_values(rpc_type) == {
        "UNKNOWN": 0,
        "STAGE_UNSTAGE_VOLUME": 1,
        "GET_VOLUME_STATS": 2,
        "EXPAND_VOLUME": 3,
        "VOLUME_CONDITION": 4,
        "SINGLE_NODE_MULTI_WRITER": 5,
        "VOLUME_MOUNT_GROUP": 6,
    }


def test_plugin_capabilities() -> None:
    assert _enum_values(csi_pb2.PluginCapability.Service.Type.DESCRIPTOR) == {
        "UNKNOWN": 0,
        "CONTROLLER_SERVICE": 1,
        "VOLUME_ACCESSIBILITY_CONSTRAINTS": 2,
        "GROUP_CONTROLLER_SERVICE": 3,
        "SNAPSHOT_METADATA_SERVICE": 4,
    }
    assert _enum_values(csi_pb2.PluginCapability.VolumeExpansion.Type.DESCRIPTOR) == {
        "UNKNOWN": 0,
        "ONLINE": 1,
        "OFFLINE": 2,
    }
    assert _enum_values(csi_pb2.GroupControllerServiceCapability.RPC.Type.DESCRIPTOR) == {
        "UNKNOWN": 0,
        "CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT": 1,
    }


# ---------------------------------------------------------------------------
# (b) protocol facts: option extensions (secrets and alpha markers)
# ---------------------------------------------------------------------------


def test_extension_numbers() -> None:
    assert csi_pb2.csi_secret.number == 1059
    assert csi_pb2.csi_secret.containing_type.full_name == "google.protobuf.FieldOptions"
    for ext, options in [
        (csi_pb2.alpha_enum, "EnumOptions"),
        (csi_pb2.alpha_enum_value, "EnumValueOptions"),
        (csi_pb2.alpha_field, "FieldOptions"),
        (csi_pb2.alpha_message, "MessageOptions"),
        (csi_pb2.alpha_method, "MethodOptions"),
        (csi_pb2.alpha_service, "ServiceOptions"),
    ]:
        assert ext.number == 1060, ext.name
        assert ext.containing_type.full_name == f"google.protobuf.{options}", ext.name


def test_create_volume_secrets_is_marked_secret() -> None:
    secrets = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert secrets.GetOptions().Extensions[csi_pb2.csi_secret] is True
    name = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name["name"]
    assert name.GetOptions().Extensions[csi_pb2.csi_secret] is False


def _all_messages(messages: list[_descriptor.Descriptor]) -> list[_descriptor.Descriptor]:
    out: list[_descriptor.Descriptor] = []
    for msg in messages:
        out.append(msg)
        out.extend(_all_messages(list(msg.nested_types)))
    return out


def test_csi_secret_marks_exactly_the_secrets_maps() -> None:
    marked: set[str] = set()
    secrets_fields: set[str] = set()
    for msg in _all_messages(list(csi_pb2.DESCRIPTOR.message_types_by_name.values())):
        for field in msg.fields:
            if field.GetOptions().Extensions[csi_pb2.csi_secret]:
                marked.add(field.full_name)
            if field.name == "secrets":
                secrets_fields.add(field.full_name)
    assert marked == secrets_fields
    # Every secret-bearing request in the spec, Node and Controller alike.
    for expected in (
        "csi.v1.CreateVolumeRequest.secrets",
        "csi.v1.DeleteVolumeRequest.secrets",
        "csi.v1.ControllerPublishVolumeRequest.secrets",
        "csi.v1.ControllerUnpublishVolumeRequest.secrets",
        "csi.v1.ValidateVolumeCapabilitiesRequest.secrets",
        "csi.v1.ControllerExpandVolumeRequest.secrets",
        "csi.v1.ControllerModifyVolumeRequest.secrets",
        "csi.v1.CreateSnapshotRequest.secrets",
        "csi.v1.DeleteSnapshotRequest.secrets",
        "csi.v1.ListSnapshotsRequest.secrets",
        "csi.v1.GetSnapshotRequest.secrets",
        "csi.v1.NodeStageVolumeRequest.secrets",
        "csi.v1.NodePublishVolumeRequest.secrets",
        "csi.v1.NodeExpandVolumeRequest.secrets",
    ):
        assert expected in marked


def test_alpha_markers_of_v1_12() -> None:
    controller = csi_pb2.DESCRIPTOR.services_by_name["Controller"]
    methods = controller.methods_by_name
    assert methods["GetSnapshot"].GetOptions().Extensions[csi_pb2.alpha_method] is True
    assert methods["ControllerGetVolume"].GetOptions().Extensions[csi_pb2.alpha_method] is True
    # ControllerModifyVolume is GA in v1.12.
    assert methods["ControllerModifyVolume"].GetOptions().Extensions[csi_pb2.alpha_method] is False
    assert csi_pb2.ControllerModifyVolumeRequest.DESCRIPTOR.GetOptions().Extensions[csi_pb2.alpha_message] is False
    assert csi_pb2.GetSnapshotRequest.DESCRIPTOR.GetOptions().Extensions[csi_pb2.alpha_message] is True

    rpc_type = csi_pb2.ControllerServiceCapability.RPC.Type.DESCRIPTOR.values_by_name
    assert rpc_type["GET_SNAPSHOT"].GetOptions().Extensions[csi_pb2.alpha_enum_value] is True
    assert rpc_type["MODIFY_VOLUME"].GetOptions().Extensions[csi_pb2.alpha_enum_value] is False

    snapshot_metadata = csi_pb2.DESCRIPTOR.services_by_name["SnapshotMetadata"]
    assert snapshot_metadata.GetOptions().Extensions[csi_pb2.alpha_service] is True


# ---------------------------------------------------------------------------
# kubelet plugin registration
# ---------------------------------------------------------------------------


def test_pluginregistration_schema() -> None:
    assert pluginregistration_pb2.DESCRIPTOR.package == "pluginregistration"
    service = pluginregistration_pb2.DESCRIPTOR.services_by_name["Registration"]
    assert _method_paths(service) == {
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    }
    get_info = service.methods_by_name["GetInfo"]
    assert get_info.input_type.full_name == "pluginregistration.InfoRequest"
    assert get_info.output_type.full_name == "pluginregistration.PluginInfo"
    notify = service.methods_by_name["NotifyRegistrationStatus"]
    assert notify.input_type.full_name == "pluginregistration.RegistrationStatus"
    assert notify.output_type.full_name == "pluginregistration.RegistrationStatusResponse"

    info = pluginregistration_pb2.PluginInfo.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in info.items()} == {
        "type": 1,
        "name": 2,
        "endpoint": 3,
        "supported_versions": 4,
    }
    assert info["supported_versions"].is_repeated
    status = pluginregistration_pb2.RegistrationStatus.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in status.items()} == {"plugin_registered": 1, "error": 2}
    assert status["plugin_registered"].type == _descriptor.FieldDescriptor.TYPE_BOOL
    assert not pluginregistration_pb2.InfoRequest.DESCRIPTOR.fields
    assert not pluginregistration_pb2.RegistrationStatusResponse.DESCRIPTOR.fields

    channel = _RecordingChannel()
    stub_factory: Any = pluginregistration_pb2_grpc.RegistrationStub  # generated code is untyped
    stub_factory(channel)
    assert set(channel.paths) == _method_paths(service)
