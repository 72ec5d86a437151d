"""CSI Node service: stage (attach, format-if-blank, mount), publish (bind), stats, expand.

Also serves inline ephemeral volumes: created, staged and published in one
NodePublishVolume, removed again by NodeUnpublishVolume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Mapping, Optional, Tuple, Union

import grpc

from basalt_core import devices, filesystem, multipath, staging, volumes
from basalt_core import mount as mounts
from basalt_core.pool import Pool
from basalt_core.sizes import fit_capacity, parse_size

from . import TOPOLOGY_NODE_KEY
from .attachments import Attachment, IscsiAttachment, PoolAttachment, remote_target
from .errors import RpcFailure, invalid, rpc_method
from .initiator import InitiatorName
from .locks import ObjectLocks
from .nodestate import NodeRecord, NodeState, Target, volume_instance
from .proto import csi_pb2, csi_pb2_grpc
from .publish_keys import chap_from_secrets
from .validation import (
    EPHEMERAL_KEY,
    K8S_PREFIX,
    MAX_PATH_BYTES,
    SHARED,
    Capability,
    Mode,
    bounded_map,
    capability,
    non_negative_range,
    required_capability,
    required_path,
    required_string,
    without_symlinks,
)

log = logging.getLogger(__name__)
NodeRPC = csi_pb2.NodeServiceCapability.RPC
ADVERTISED = (NodeRPC.STAGE_UNSTAGE_VOLUME, NodeRPC.GET_VOLUME_STATS, NodeRPC.EXPAND_VOLUME,
              NodeRPC.VOLUME_CONDITION, NodeRPC.SINGLE_NODE_MULTI_WRITER)
EPHEMERAL_SIZE_KEY = "size"
# Flags a bind mount can take on remount; filesystem options only apply at stage.
BIND_FLAGS = {"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
              "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime"}


def _failed(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, message)


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, pool: Pool, node_id: str, locks: ObjectLocks, state: NodeState,
                 ephemeral_dir: str, default_size: int, initiator: Optional[InitiatorName] = None) -> None:
        self.pool = pool
        self.initiator = initiator
        self.node_id = node_id
        self.locks = locks
        self.state = state
        self.ephemeral_dir = ephemeral_dir
        self.default_size = default_size

    # -- staging -------------------------------------------------------------
    def _stage(self, attachment: Attachment, path: str, cap: Capability, record: NodeRecord) -> str:
        """Attach the volume and, for a filesystem, format-if-blank and mount at *path*.

        *record* (saved by the caller afterwards) carries the mark of a
        filesystem being made, saved before mkfs: a filesystem that we were
        making when we died is ours to make again.
        """
        was_attached = attachment.device() is not None
        try:
            device = attachment.attach()
            if not cap.block:
                if record.formatting and not _mounted_at(device, path):
                    devices.zero_ends(device)  # half made by an interrupted NodeStage: blank, to make again
                staging.ensure_mounted(device, path, cap.fs_type, cap.mount_flags,
                                       before_format=lambda: self._mark_formatting(record),
                                       grow_mark=self.state.grow_mark(record.volume_id, _instance(attachment)))
                record.formatting = False
        except BaseException:
            # A refused login leaves a node record (and maybe sessions on other portals): undo it all.
            if not was_attached:
                attachment.detach()
            raise
        return device

    def _mark_formatting(self, record: NodeRecord) -> None:
        record.formatting = True
        self.state.save(record)

    def _attachment(self, record: NodeRecord) -> Optional[Attachment]:
        """How a staged volume reached this node (None: a local volume that no longer exists)."""
        if record.iscsi_target:
            staged_map = multipath.Map(record.multipath_map, "", record.multipath_uuid, ()) \
                if record.multipath_map else None
            return IscsiAttachment(record.iscsi_target, record.iscsi_portals, record.serial, staged_map=staged_map)
        volume = self.pool.load_volume(record.ephemeral_volume_id or record.volume_id)
        return PoolAttachment(self.pool, volume) if volume is not None else None

    @rpc_method
    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest, context: grpc.ServicerContext
                        ) -> csi_pb2.NodeStageVolumeResponse:
        volume_id, cap = _volume_and_capability(request)
        path = required_path(request.staging_target_path, "staging_target_path")
        remote = remote_target(request.publish_context, self.node_id)
        if remote is not None:
            remote.chap = chap_from_secrets(request.secrets)
        with self.locks.hold(volume_id):
            attachment: Attachment = remote or PoolAttachment(self.pool, volumes.get_volume(self.pool, volume_id))
            record = self.state.load(volume_id) or NodeRecord(volume_id)
            if record.staging_path:
                if record.staging_path != path:
                    raise _failed(f"volume {volume_id} is already staged at {record.staging_path}")
                if not cap.same_use(_staged_capability(record)):
                    raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                                     f"volume {volume_id} is already staged at {path} with another capability")
            without_symlinks(path, "staging_target_path")
            device = self._stage(attachment, path, cap, record)
            record.staging_path, record.block, record.fs_type, record.mode = path, cap.block, cap.fs_type, cap.mode
            record.device_number = staging.device_number(device)
            if remote is not None:
                record.iscsi_target, record.iscsi_portals, record.serial = remote.target_iqn, remote.portals, \
                    remote.serial
                if remote.staged_map is not None:
                    record.multipath_map, record.multipath_uuid = remote.staged_map.name, remote.staged_map.uuid
            self.state.save(record)
        return csi_pb2.NodeStageVolumeResponse()

    def _known(self, volume_id: str) -> Tuple[Optional[NodeRecord], Optional[Attachment]]:
        """The node's record of a volume and how it reaches this node; NOT_FOUND for a volume unknown here."""
        record = self.state.load(volume_id)
        if record is not None:
            return record, self._attachment(record)
        return None, PoolAttachment(self.pool, volumes.get_volume(self.pool, volume_id))

    @staticmethod
    def _owner(record: Optional[NodeRecord], attachment: Optional[Attachment]) -> staging.Owner:
        """What marks this volume's mounts: its device now, and the device it was staged from."""
        return staging.owner_of(attachment.device() if attachment else None,
                                [record.device_number] if record else [])

    @rpc_method
    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
                          ) -> csi_pb2.NodeUnstageVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        required_string(request.staging_target_path, "staging_target_path", MAX_PATH_BYTES)
        with self.locks.hold(volume_id):
            record, attachment = self._known(volume_id)
            path = without_symlinks(required_path(request.staging_target_path, "staging_target_path"),
                                    "staging_target_path")
            owner = self._owner(record, attachment)
            if record is None:
                # Not staged here: only what a stage interrupted before its record may be left to undo.
                staging.release(path, owner, strict=False)
                if attachment is not None and owner.nodes and not any(map(owner.owns, mounts.mounts())):
                    staging.drop_unused_views(owner.nodes[0])
                    attachment.detach()
            elif record.staging_path == path and not record.ephemeral_volume_id:
                busy = [t for t in record.targets if _holds(t, owner)]
                if busy:
                    raise _failed(f"volume {volume_id} is still published at {', '.join(busy)}")
                staging.release(path, owner)
                if owner.nodes:
                    staging.drop_unused_views(owner.nodes[0])
                if attachment is not None:
                    attachment.detach()
                self.state.drop(volume_id)
            # else staged elsewhere (or an inline ephemeral volume): nothing of it is at this path.
        return csi_pb2.NodeUnstageVolumeResponse()

    # -- publishing ----------------------------------------------------------
    @rpc_method
    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
                          ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id, cap = _volume_and_capability(request)
        target = required_path(request.target_path, "target_path")
        read_only = request.readonly or cap.read_only_mode  # a reader-only mode is read-only (README)
        if request.volume_context.get(EPHEMERAL_KEY) == "true":
            self._publish_ephemeral(volume_id, target, cap, read_only, request.volume_context)
            return csi_pb2.NodePublishVolumeResponse()
        if not request.staging_target_path:
            raise _failed("staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME)")
        path = required_path(request.staging_target_path, "staging_target_path")
        with self.locks.hold(volume_id):
            record = self.state.load(volume_id)
            if record is None and remote_target(request.publish_context, self.node_id) is None:
                volumes.get_volume(self.pool, volume_id)  # NOT_FOUND for a volume that does not exist at all
            if record is None or record.staging_path != path:
                raise _failed(f"volume {volume_id} is not staged at {path}")
            without_symlinks(path, "staging_target_path")
            without_symlinks(target, "target_path")
            if record.block != cap.block:
                raise _failed(f"volume {volume_id} was staged as {'block' if record.block else 'filesystem'}")
            self._check_target(record, target, cap, read_only)
            if cap.block:
                attachment = self._attachment(record)
                device = attachment.device() if attachment else None
                if device is None:
                    raise _failed(f"volume {volume_id} is staged but its device is gone; stage it again")
                source = staging.read_only_view(device) if read_only else device
                staging.ensure_bind(source, target, read_only=read_only, block=True)
            else:
                staging.ensure_bind(path, target, read_only=read_only, options=_bind_flags(cap))
            record.targets[target] = Target(read_only, cap.block, cap.mode)
            self.state.save(record)
        return csi_pb2.NodePublishVolumeResponse()

    @staticmethod
    def _check_target(record: NodeRecord, target: str, cap: Capability, read_only: bool) -> None:
        existing = record.targets.get(target)
        if existing is not None:
            if (existing.readonly, existing.block, existing.mode) != (read_only, cap.block, cap.mode):
                raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                                 f"volume {record.volume_id} is already published at {target} differently")
            return
        others = [t for t in record.targets if t != target]
        single = Mode.SINGLE_NODE_SINGLE_WRITER
        if others and (cap.mode == single or any(record.targets[t].mode == single for t in others)):
            raise _failed(f"volume {record.volume_id} is SINGLE_NODE_SINGLE_WRITER and already published at "
                          f"{', '.join(others)}")

    @rpc_method
    def NodeUnpublishVolume(self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
                            ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        required_string(request.target_path, "target_path", MAX_PATH_BYTES)
        with self.locks.hold(volume_id):
            record, attachment = self._known(volume_id)
            target = without_symlinks(required_path(request.target_path, "target_path"), "target_path")
            listed = record is not None and target in record.targets
            owner = self._owner(record, attachment)
            # A mount of this volume that no record lists is what a publish interrupted before its record left.
            if staging.release(target, owner, strict=listed) or listed:
                staging.remove_mount_point(target)
                if owner.nodes:
                    staging.drop_unused_views(owner.nodes[0])
            if record is not None and listed:
                del record.targets[target]
                if record.ephemeral_volume_id and not record.targets:
                    self._remove_ephemeral(record)
                else:
                    self.state.save(record)
        return csi_pb2.NodeUnpublishVolumeResponse()

    # -- inline ephemeral volumes -------------------------------------------
    def _publish_ephemeral(self, volume_id: str, target: str, cap: Capability, read_only: bool,
                           context: Mapping[str, str]) -> None:
        ctx = dict(context)
        unknown = [k for k in ctx if k != EPHEMERAL_SIZE_KEY and not k.startswith(K8S_PREFIX)]
        if unknown:
            raise invalid(f"unknown volume attribute(s) {', '.join(sorted(unknown))} (known: {EPHEMERAL_SIZE_KEY})")
        if cap.block:
            raise invalid("inline ephemeral volumes must be filesystems")
        requested = parse_size(ctx[EPHEMERAL_SIZE_KEY]) if EPHEMERAL_SIZE_KEY in ctx else 0
        size = fit_capacity(requested, 0, unit=self.pool.unit, default=self.default_size,
                            minimum=filesystem.MINIMUM_SIZE[cap.fs_type])
        path = os.path.join(self.ephemeral_dir, hashlib.sha256(volume_id.encode()).hexdigest())
        with self.locks.hold(volume_id):
            record = self.state.load(volume_id)
            if record is not None and not record.ephemeral_volume_id:
                raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                                 f"volume {volume_id} exists and is not an inline ephemeral volume")
            without_symlinks(target, "target_path")
            volume, _changed = volumes.ensure_volume(self.pool, volume_id, size, min_size=requested, ephemeral=True)
            fresh = record is None
            if record is None:
                # Recorded before any attach or mount, so a crash here is cleaned up by an unpublish.
                record = NodeRecord(volume_id, path, False, cap.fs_type, cap.mode, ephemeral_volume_id=volume.id)
                self.state.save(record)
            try:
                self._check_target(record, target, cap, read_only)
                device = self._stage(PoolAttachment(self.pool, volume), path, cap, record)
                record.device_number = staging.device_number(device)
                staging.ensure_bind(path, target, read_only=read_only, options=_bind_flags(cap))
            except BaseException:
                if fresh:  # a refused first publish leaves nothing behind: no mount, device or volume
                    self._undo_ephemeral(record)
                raise
            record.targets[target] = Target(read_only, False, cap.mode)
            self.state.save(record)

    def _undo_ephemeral(self, record: NodeRecord) -> None:
        try:
            self._remove_ephemeral(record)
        except Exception:  # the refusal is what the caller needs to see; the record lets an unpublish retry
            log.exception("could not remove the refused inline ephemeral volume %s", record.volume_id)

    def _remove_ephemeral(self, record: NodeRecord) -> None:
        staging.ensure_unmounted(record.staging_path, remove=True)
        volume = self.pool.load_volume(record.ephemeral_volume_id)
        if volume is not None:
            PoolAttachment(self.pool, volume).detach()
            volumes.delete_volume(self.pool, volume.id)
        self.state.drop(record.volume_id)

    # -- stats and expansion ------------------------------------------------
    def _published(self, volume_id: str, raw_path: str) -> Tuple[NodeRecord, Attachment, str]:
        """The volume's record and attachment, and the path (as recorded) where it is staged or published.

        The volume is found first (NOT_FOUND whatever the path); then a path
        where it is not mounted, malformed ones included, is NOT_FOUND too.
        """
        record, attachment = self._known(volume_id)
        try:
            path = required_path(raw_path, "volume_path")
        except RpcFailure:
            path = ""
        if record is None or not path or (path not in record.targets and path != record.staging_path):
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} is not staged or published at "
                                                        f"{raw_path!r}")
        if attachment is None:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} does not exist")
        return record, attachment, path

    @rpc_method
    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
                           ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        required_string(request.volume_path, "volume_path", MAX_PATH_BYTES)
        record, attachment, path = self._published(volume_id, request.volume_path)
        if request.staging_target_path:
            required_path(request.staging_target_path, "staging_target_path")
        problem = attachment.problem()
        if not mounts.is_mounted(path):
            problem = problem or f"volume {volume_id} is no longer mounted at {path}"
        condition = csi_pb2.VolumeCondition(abnormal=bool(problem), message=problem or "healthy")
        if problem:
            return csi_pb2.NodeGetVolumeStatsResponse(volume_condition=condition)
        Usage = csi_pb2.VolumeUsage
        if record.block:
            device = attachment.device()
            usage = [Usage(unit=Usage.BYTES, total=devices.size_bytes(device) if device else 0)]
        else:
            st = os.statvfs(path)
            usage = [
                Usage(unit=Usage.BYTES, total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize,
                      used=(st.f_blocks - st.f_bfree) * st.f_frsize),
                Usage(unit=Usage.INODES, total=st.f_files, available=st.f_favail, used=st.f_files - st.f_ffree),
            ]
        return csi_pb2.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    @rpc_method
    def NodeExpandVolume(self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
                         ) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id = required_string(request.volume_id, "volume_id")
        required_string(request.volume_path, "volume_path", MAX_PATH_BYTES)
        _required, limit = non_negative_range(request.capacity_range)
        if request.HasField("volume_capability"):
            capability(request.volume_capability, access=SHARED)
        with self.locks.hold(volume_id):
            record, attachment, _path = self._published(volume_id, request.volume_path)
            attachment.refresh()
            device = attachment.device()
            if device is None:
                raise _failed(f"volume {volume_id} is not attached on this node")
            size = devices.size_bytes(device)
            if limit and size > limit:
                raise RpcFailure(grpc.StatusCode.OUT_OF_RANGE, f"volume {volume_id} is {size} bytes, over {limit}")
            if not record.block and filesystem.size(device, record.fs_type, record.staging_path) < size:
                filesystem.grow_online(device, record.fs_type, record.staging_path)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    # -- node facts ----------------------------------------------------------
    @rpc_method
    def NodeGetCapabilities(self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
                            ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=NodeRPC(type=t)) for t in ADVERTISED
        ])

    @rpc_method
    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
                    ) -> csi_pb2.NodeGetInfoResponse:
        if self.initiator is not None:
            self.initiator.check()  # a node the storage hosts would refuse must not register silently
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.node_id,
            accessible_topology=csi_pb2.Topology(segments={TOPOLOGY_NODE_KEY: self.node_id}),
        )


def _volume_and_capability(
    request: Union[csi_pb2.NodeStageVolumeRequest, csi_pb2.NodePublishVolumeRequest],
) -> Tuple[str, Capability]:
    volume_id = required_string(request.volume_id, "volume_id")
    cap = required_capability(request, SHARED)  # the controller decided what this volume may do
    bounded_map(request.publish_context, "publish_context")
    bounded_map(request.volume_context, "volume_context")
    return volume_id, cap


def _instance(attachment: Attachment) -> str:
    return volume_instance(attachment.volume) if isinstance(attachment, PoolAttachment) else ""


def _mounted_at(device: str, path: str) -> bool:
    current = mounts.find_mount(path)
    return current is not None and current.major_minor == devices.device_number(device)


def _staged_capability(record: NodeRecord) -> Capability:
    return Capability(record.block, record.fs_type, (), record.mode)


def _holds(path: str, owner: staging.Owner) -> bool:
    """Whether a mount of the volume *owner* marks is at *path*."""
    current = mounts.find_mount(path)
    return current is not None and owner.owns(current)


def _bind_flags(cap: Capability) -> Tuple[str, ...]:
    return tuple(f for f in cap.mount_flags if f in BIND_FLAGS)
