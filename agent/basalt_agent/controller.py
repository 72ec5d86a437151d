"""CSI Controller service: validation, locking and status mapping over basalt_core.volumes."""

from __future__ import annotations

from typing import List, Optional

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from basalt_core import filesystem, volumes
from basalt_core.errors import NotFound
from basalt_core.facts import HEALTHY
from basalt_core.model import (
    SOURCE_SNAPSHOT,
    SOURCE_VOLUME,
    ContentSource,
    Publication,
    Snapshot,
    Volume,
    is_volume_id,
    snapshot_id_for,
    volume_id_for,
)
from basalt_core.pool import Pool
from basalt_core.sizes import fit_capacity

from . import TOPOLOGY_NODE_KEY
from .errors import RpcFailure, invalid, rpc_method
from .locks import ObjectLocks
from .paging import page
from .proto import csi_pb2, csi_pb2_grpc
from .publish_keys import POOL_KEY
from .publishing import Publishing
from .validation import MAX_NODE_ID_BYTES as NODE_ID_LIMIT
from .validation import (
    SINGLE_NODE_MODES,
    Capability,
    capabilities,
    capability,
    non_negative_range,
    required_capability,
    required_name,
    required_string,
    volume_parameters,
)

RPC = csi_pb2.ControllerServiceCapability.RPC
ADVERTISED = (
    RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES, RPC.LIST_VOLUMES_PUBLISHED_NODES,
    RPC.GET_CAPACITY, RPC.CREATE_DELETE_SNAPSHOT, RPC.LIST_SNAPSHOTS, RPC.GET_SNAPSHOT, RPC.CLONE_VOLUME,
    RPC.PUBLISH_READONLY, RPC.EXPAND_VOLUME, RPC.GET_VOLUME, RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER,
)
COPY_METHOD_KEY = "basalt.dev/copy-method"


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(self, pool: Pool, publishing: Publishing, locks: ObjectLocks, default_size: int) -> None:
        self.pool = pool
        self.publishing = publishing
        self.access = publishing.access
        self.locks = locks
        self.default_size = default_size

    # -- helpers -------------------------------------------------------------
    def _volume_message(self, volume: Volume) -> csi_pb2.Volume:
        context = {POOL_KEY: volume.pool}
        if volume.copy_method:
            context[COPY_METHOD_KEY] = volume.copy_method
        message = csi_pb2.Volume(
            volume_id=volume.id,
            capacity_bytes=volume.size,
            volume_context=context,
            accessible_topology=self.publishing.topologies(),
        )
        if volume.source is not None:
            if volume.source.kind == SOURCE_SNAPSHOT:
                message.content_source.snapshot.snapshot_id = volume.source.id
            else:
                message.content_source.volume.volume_id = volume.source.id
        return message

    def _snapshot_message(self, snapshot: Snapshot) -> csi_pb2.Snapshot:
        created = Timestamp()
        created.FromNanoseconds(int(snapshot.created_at * 1e9))
        return csi_pb2.Snapshot(
            size_bytes=snapshot.size,
            snapshot_id=snapshot.id,
            source_volume_id=snapshot.source_volume_id,
            creation_time=created,
            ready_to_use=True,
        )

    def _check_topology(self, requirement: csi_pb2.TopologyRequirement) -> None:
        requisite = list(requirement.requisite)
        if requisite and not any(self._reachable(t) for t in requisite):
            raise RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"volumes of this pool reach nodes {', '.join(self.publishing.nodes())}, "
                             "which no requisite topology allows")

    def _reachable(self, topology: csi_pb2.Topology) -> bool:
        return all(k == TOPOLOGY_NODE_KEY and self.publishing.reaches(v) for k, v in topology.segments.items())

    def _content_source(self, request: csi_pb2.CreateVolumeRequest) -> Optional[ContentSource]:
        if not request.HasField("volume_content_source"):
            return None
        source = request.volume_content_source
        kind = source.WhichOneof("type")
        if kind == "snapshot":
            return ContentSource(SOURCE_SNAPSHOT,
                                 required_string(source.snapshot.snapshot_id, "volume_content_source.snapshot_id"))
        if kind == "volume":
            return ContentSource(SOURCE_VOLUME,
                                 required_string(source.volume.volume_id, "volume_content_source.volume_id"))
        raise invalid("volume_content_source must name a snapshot or a volume")

    def _source_size(self, source: Optional[ContentSource]) -> int:
        if source is None:
            return 0
        try:
            if source.kind == SOURCE_SNAPSHOT:
                return volumes.get_snapshot(self.pool, source.id).size
            return volumes.get_volume(self.pool, source.id).size
        except NotFound:
            return 0  # reported as NOT_FOUND by ensure_volume, after the name's own check

    # -- volumes -------------------------------------------------------------
    @rpc_method
    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
                     ) -> csi_pb2.CreateVolumeResponse:
        name = required_name(request.name)
        caps = capabilities(request.volume_capabilities, access=self.access)
        required, limit = non_negative_range(request.capacity_range)
        parameters = volume_parameters(request.parameters)
        source = self._content_source(request)
        if request.mutable_parameters:
            raise invalid("mutable_parameters are not supported (no MODIFY_VOLUME capability)")
        self._check_topology(request.accessibility_requirements)
        minimum = max((filesystem.MINIMUM_SIZE[c.fs_type] for c in caps if not c.block), default=0)
        # A copy defaults to its source's size rather than the pool default.
        default = self._source_size(source) or self.default_size
        size = fit_capacity(required, limit, unit=self.pool.unit, default=default, minimum=minimum)
        keys = [volume_id_for(name)] + ([source.id] if source else [])
        with self.locks.hold(*keys):
            volume, _changed = volumes.ensure_volume(self.pool, name, size, min_size=required, max_size=limit,
                                                     parameters=parameters, source=source)
        return csi_pb2.CreateVolumeResponse(volume=self._volume_message(volume))

    @rpc_method
    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
                     ) -> csi_pb2.DeleteVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        with self.locks.hold(volume_id):
            volumes.delete_volume(self.pool, volume_id)
        return csi_pb2.DeleteVolumeResponse()

    @rpc_method
    def ControllerPublishVolume(self, request: csi_pb2.ControllerPublishVolumeRequest,
                                context: grpc.ServicerContext) -> csi_pb2.ControllerPublishVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        node_id = required_string(request.node_id, "node_id", NODE_ID_LIMIT)
        cap = required_capability(request, self.access)
        secrets = request.secrets
        with self.locks.hold(volume_id):
            volume = volumes.get_volume(self.pool, volume_id)
            if not self.publishing.reaches(node_id):
                raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"node {node_id!r} is unknown: volume {volume_id} "
                                 f"can be published to {', '.join(self.publishing.nodes())}")
            # A reader-only mode publishes read-only whatever `readonly` says (README: access modes).
            read_only = request.readonly or cap.read_only_mode
            wanted = Publication(readonly=read_only, access_mode=cap.mode_name)
            current = volume.publications.get(node_id)
            if current is not None and current != wanted:
                raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                                 f"volume {volume_id} is already published to {node_id} with "
                                 f"readonly={current.readonly}, mode {current.access_mode}")
            elsewhere = sorted(n for n in volume.publications if n != node_id)
            if elsewhere and cap.mode in SINGLE_NODE_MODES:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"volume {volume_id} is {cap.mode_name} and already published to node "
                                 f"{', '.join(elsewhere)}")
            context = self.publishing.publish(volume, node_id, read_only, secrets)
            volumes.set_publication(self.pool, volume_id, node_id, wanted)
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=context)

    @rpc_method
    def ControllerUnpublishVolume(self, request: csi_pb2.ControllerUnpublishVolumeRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerUnpublishVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        node_id = request.node_id
        if node_id:
            required_string(node_id, "node_id", NODE_ID_LIMIT)
        with self.locks.hold(volume_id):
            volume = self.pool.load_volume(volume_id) if is_volume_id(volume_id) else None
            for published in ([node_id] if node_id else sorted(volume.publications) if volume else []):
                # Record first: if the unexport is interrupted, the agent's reconciliation at start
                # removes an export that no record wants (the CO retries the call meanwhile).
                volumes.clear_publication(self.pool, volume_id, published)
                self.publishing.unpublish(volume_id, published)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    @rpc_method
    def ValidateVolumeCapabilities(self, request: csi_pb2.ValidateVolumeCapabilitiesRequest,
                                   context: grpc.ServicerContext) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise invalid("volume_capabilities is required")
        for index, cap in enumerate(request.volume_capabilities):
            if cap.WhichOneof("access_type") is None or cap.access_mode.mode == 0:
                raise invalid(f"volume_capabilities[{index}] needs an access type and an access mode")
        volume = volumes.get_volume(self.pool, volume_id)
        try:
            volume_parameters(request.parameters)
            capabilities(request.volume_capabilities, access=self.access)
        except RpcFailure as refusal:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=refusal.message)
        if dict(request.parameters) and volume_parameters(request.parameters) != volume.parameters:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message="parameters differ from the volume's")
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    @rpc_method
    def ListVolumes(self, request: csi_pb2.ListVolumesRequest, context: grpc.ServicerContext
                    ) -> csi_pb2.ListVolumesResponse:
        listed, token = page(volumes.list_volumes(self.pool), lambda v: (v.created_at, v.id),
                             request.max_entries, request.starting_token)
        problems = self.pool.volume_problems(listed)
        entries = [
            csi_pb2.ListVolumesResponse.Entry(
                volume=self._volume_message(v),
                status=csi_pb2.ListVolumesResponse.VolumeStatus(
                    published_node_ids=sorted(v.publications),
                    volume_condition=_condition(problems[v.id]),
                ),
            )
            for v in listed
        ]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=token)

    @rpc_method
    def ControllerGetVolume(self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
                            ) -> csi_pb2.ControllerGetVolumeResponse:
        volume = volumes.get_volume(self.pool, required_string(request.volume_id, "volume_id"))
        return csi_pb2.ControllerGetVolumeResponse(
            volume=self._volume_message(volume),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=sorted(volume.publications),
                volume_condition=_condition(self.pool.volume_problem(volume)),
            ),
        )

    @rpc_method
    def GetCapacity(self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
                    ) -> csi_pb2.GetCapacityResponse:
        volume_parameters(request.parameters)
        try:
            caps: List[Capability] = (capabilities(request.volume_capabilities, access=self.access)
                                      if request.volume_capabilities else [])
        except RpcFailure:
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        if request.HasField("accessible_topology") and not self._reachable(request.accessible_topology):
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        available = self.pool.available_bytes() // self.pool.unit * self.pool.unit
        minimum = max((filesystem.MINIMUM_SIZE[c.fs_type] for c in caps if not c.block), default=0)
        response = csi_pb2.GetCapacityResponse(available_capacity=available)
        response.maximum_volume_size.value = available
        response.minimum_volume_size.value = max(minimum, self.pool.unit)
        return response

    @rpc_method
    def ControllerGetCapabilities(self, request: csi_pb2.ControllerGetCapabilitiesRequest,
                                  context: grpc.ServicerContext) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=RPC(type=t)) for t in ADVERTISED
        ])

    @rpc_method
    def ControllerExpandVolume(self, request: csi_pb2.ControllerExpandVolumeRequest,
                               context: grpc.ServicerContext) -> csi_pb2.ControllerExpandVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise invalid("capacity_range is required")
        required, limit = non_negative_range(request.capacity_range)
        if not required and not limit:
            raise invalid("capacity_range must set required_bytes or limit_bytes")
        if request.HasField("volume_capability"):
            capability(request.volume_capability, access=self.access)
        with self.locks.hold(volume_id):
            current = volumes.get_volume(self.pool, volume_id)
            if limit and current.size > limit:
                raise RpcFailure(grpc.StatusCode.OUT_OF_RANGE,
                                 f"volume {volume_id} is already {current.size} bytes, above limit_bytes {limit}")
            size = fit_capacity(required, limit, unit=self.pool.unit, default=current.size)
            volume, _changed = volumes.expand_volume(self.pool, volume_id, size)
        return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=volume.size, node_expansion_required=True)

    # -- snapshots -----------------------------------------------------------
    @rpc_method
    def CreateSnapshot(self, request: csi_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
                       ) -> csi_pb2.CreateSnapshotResponse:
        source_id = required_string(request.source_volume_id, "source_volume_id")
        name = required_name(request.name)
        parameters = volume_parameters(request.parameters, self.pool.snapshot_parameter_keys)
        with self.locks.hold(snapshot_id_for(name), source_id):
            snapshot, _changed = volumes.ensure_snapshot(self.pool, name, source_id, parameters=parameters)
        return csi_pb2.CreateSnapshotResponse(snapshot=self._snapshot_message(snapshot))

    @rpc_method
    def DeleteSnapshot(self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
                       ) -> csi_pb2.DeleteSnapshotResponse:
        snapshot_id = required_string(request.snapshot_id, "snapshot_id")
        with self.locks.hold(snapshot_id):
            volumes.delete_snapshot(self.pool, snapshot_id)
        return csi_pb2.DeleteSnapshotResponse()

    @rpc_method
    def ListSnapshots(self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
                      ) -> csi_pb2.ListSnapshotsResponse:
        snapshots = volumes.list_snapshots(self.pool)
        if request.snapshot_id:
            snapshots = [s for s in snapshots if s.id == request.snapshot_id]
        if request.source_volume_id:
            snapshots = [s for s in snapshots if s.source_volume_id == request.source_volume_id]
        listed, token = page(snapshots, lambda s: (s.created_at, s.id), request.max_entries, request.starting_token)
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._snapshot_message(s)) for s in listed]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=token)

    @rpc_method
    def GetSnapshot(self, request: csi_pb2.GetSnapshotRequest, context: grpc.ServicerContext
                    ) -> csi_pb2.GetSnapshotResponse:
        snapshot = volumes.get_snapshot(self.pool, required_string(request.snapshot_id, "snapshot_id"))
        return csi_pb2.GetSnapshotResponse(snapshot=self._snapshot_message(snapshot))


def _condition(problem: Optional[str]) -> csi_pb2.VolumeCondition:
    return csi_pb2.VolumeCondition(abnormal=bool(problem), message=problem or HEALTHY)
