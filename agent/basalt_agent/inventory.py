"""What the ``basalt`` command lists: volumes, snapshots, pools, exports, sessions, as plain dicts.

Volumes and snapshots come from the running agent over its socket (ListVolumes,
ListSnapshots, GetCapacity) when one answers there; otherwise from the pool,
through the very same Controller servicer run in this process (read-only
calls), so both ways give the same fields. Exports (a storage host's target
service) and sessions (open-iscsi) are read directly: no CSI call reports them.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any, Dict, List, Optional

import grpc

from basalt_core import iscsiadm
from basalt_core.facts import timestamp
from basalt_core.facts import volume_id_of_target as volume_id_of
from basalt_core.iscsi_target import TargetBackend
from basalt_core.pool import Pool
from basalt_core.pool_factory import open_pool

from . import config
from .controller import ControllerService
from .locks import ObjectLocks
from .main import publishing
from .nodestate import NodeState
from .proto import csi_pb2, csi_pb2_grpc
from .publishing import IscsiPublishing

Record = Dict[str, Any]
AGENT_TIMEOUT = 30.0


class CallFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class _InProcess:
    """The part of a gRPC servicer context the servicers use, for calls made in this process."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise CallFailed(code, details)


def agent_listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Inventory:
    def __init__(self, settings: config.Config) -> None:
        self.settings = settings
        #: "agent" when the agent answers on its socket, "pool" when this process reads the pool itself
        self.via = "agent" if agent_listening(settings.socket_path) else "pool"

    @functools.cached_property
    def pool(self) -> Pool:
        return open_pool(self.settings.pool_spec, config.given_pool_settings(self.settings),
                         labels=config.pool_setting_labels(), create_layout=False)

    @functools.cached_property
    def node_state(self) -> NodeState:
        return NodeState(os.path.join(self.settings.state_dir, "node"))

    @functools.cached_property
    def exporting(self) -> Optional[IscsiPublishing]:
        """How a storage host exports (None without --iscsi-backend)."""
        published = publishing(self.settings, self.pool) if self.settings.iscsi_backend else None
        return published if isinstance(published, IscsiPublishing) else None

    @property
    def target_backend(self) -> Optional[TargetBackend]:
        """The storage host's target service (None without --iscsi-backend)."""
        return self.exporting.backend if self.exporting is not None else None

    @functools.cached_property
    def _servicer(self) -> ControllerService:
        return ControllerService(self.pool, publishing(self.settings, self.pool), ObjectLocks(),
                                 self.settings.default_volume_size)

    def _call(self, method: str, request: Any) -> Any:
        if self.via == "agent":
            channel = grpc.insecure_channel(self.settings.endpoint)
            try:
                return getattr(csi_pb2_grpc.ControllerStub(channel), method)(request, timeout=AGENT_TIMEOUT)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:  # a node-only agent: read the pool
                    raise CallFailed(error.code(), error.details() or "") from None
                self.via = "pool"
            finally:
                channel.close()
        return getattr(self._servicer, method)(request, _InProcess())

    # -- listings ----------------------------------------------------------
    def volumes(self) -> List[Record]:
        found, token = [], ""
        while True:
            answer = self._call("ListVolumes", csi_pb2.ListVolumesRequest(starting_token=token))
            found += [volume_record(entry.volume, entry.status.published_node_ids, entry.status.volume_condition)
                      for entry in answer.entries]
            token = answer.next_token
            if not token:
                return found

    def volume(self, volume_id: str) -> Record:
        answer = self._call("ControllerGetVolume", csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id))
        return volume_record(answer.volume, answer.status.published_node_ids, answer.status.volume_condition)

    def snapshots(self, snapshot_id: str = "") -> List[Record]:
        found, token = [], ""
        while True:
            request = csi_pb2.ListSnapshotsRequest(starting_token=token, snapshot_id=snapshot_id)
            answer = self._call("ListSnapshots", request)
            found += [snapshot_record(entry.snapshot) for entry in answer.entries]
            token = answer.next_token
            if not token:
                return found

    def pools(self) -> List[Record]:
        usage = self.pool.usage()
        available = self._call("GetCapacity", csi_pb2.GetCapacityRequest()).available_capacity
        return [{
            "pool": self.settings.pool_spec, "kind": self.pool.kind, "location": self.pool.location,
            "node": self.settings.node_id, "size_bytes": usage.storage.size,
            "allocated_bytes": usage.storage.allocated, "available_bytes": available,
            "provisioned_bytes": usage.provisioned, "capacity_limit_bytes": self.pool.capacity_limit or None,
            "volumes": usage.volumes, "snapshots": usage.snapshots,
            "thin_data_percent": usage.storage.data_percent, "thin_metadata_percent": usage.storage.metadata_percent,
        }]

    def exports(self) -> List[Record]:
        backend = self.target_backend
        if backend is None:
            return []
        known = {v.id for v in self.pool.all_volumes()}
        return [{
            "target_iqn": export.target_iqn, "volume_id": volume_id_of(export.target_iqn), "lun": export.lun,
            "serial": export.serial, "device": export.device, "read_only": export.read_only,
            "initiators": [grant.initiator_iqn for grant in export.grants],
            "owned": volume_id_of(export.target_iqn) in known,
        } for export in backend.exports()]

    def sessions(self) -> List[Record]:
        owned = self.node_state.iscsi_targets()
        return [{
            "sid": session.sid, "target_iqn": session.target_iqn, "portal": session.portal,
            "volume_id": volume_id_of(session.target_iqn), "owned": session.target_iqn in owned,
        } for session in (iscsiadm.sessions() if iscsiadm.installed() else [])]


def volume_record(volume: csi_pb2.Volume, published: Any, condition: csi_pb2.VolumeCondition) -> Record:
    source: Optional[Record] = None
    if volume.content_source.HasField("snapshot"):
        source = {"snapshot_id": volume.content_source.snapshot.snapshot_id}
    elif volume.content_source.HasField("volume"):
        source = {"volume_id": volume.content_source.volume.volume_id}
    return {
        "volume_id": volume.volume_id,
        "capacity_bytes": volume.capacity_bytes,
        "content_source": source,
        "volume_context": dict(volume.volume_context),
        "accessible_topology": [dict(t.segments) for t in volume.accessible_topology],
        "published_node_ids": list(published),
        "abnormal": condition.abnormal,
        "condition": condition.message,
    }


def snapshot_record(snapshot: csi_pb2.Snapshot) -> Record:
    return {
        "snapshot_id": snapshot.snapshot_id,
        "source_volume_id": snapshot.source_volume_id,
        "size_bytes": snapshot.size_bytes,
        "creation_time": timestamp(snapshot.creation_time.seconds),
        "ready_to_use": snapshot.ready_to_use,
    }
