"""How a volume reaches the nodes that use it: in place (local pools) or exported over iSCSI.

The controller's publish logic (validation, locks, publication records,
single-node exclusivity) is the same for both; these classes are the part
that differs: which nodes exist, where volumes are accessible, and what a
publication does on the storage host.
"""

from __future__ import annotations

import abc
from typing import Dict, List, Mapping, Optional

import grpc

from basalt_core import exports
from basalt_core.errors import Conflict
from basalt_core.iscsi_target import TargetBackend, initiator_iqn_for
from basalt_core.model import Volume
from basalt_core.pool import Pool

from . import TOPOLOGY_NODE_KEY
from .errors import RpcFailure, invalid
from .proto import csi_pb2
from .publish_keys import (
    CHAP_PASSWORD,
    CHAP_USER,
    LUN_KEY,
    POOL_KEY,
    PORTALS_KEY,
    SERIAL_KEY,
    STORAGE_NODE_KEY,
    TARGET_KEY,
    chap_from_secrets,
)
from .validation import LOCAL, SHARED, AccessPolicy


def topology(node_id: str) -> csi_pb2.Topology:
    return csi_pb2.Topology(segments={TOPOLOGY_NODE_KEY: node_id})


class Publishing(abc.ABC):
    access: AccessPolicy = LOCAL

    def __init__(self, pool: Pool, node_id: str) -> None:
        self.pool = pool
        self.node_id = node_id

    @abc.abstractmethod
    def nodes(self) -> List[str]:
        """Every node a volume can be published to."""

    def reaches(self, node_id: str) -> bool:
        """Whether a volume can be published to *node_id* (NOT_FOUND otherwise)."""
        return node_id in self.nodes()

    def topologies(self) -> List[csi_pb2.Topology]:
        """A volume's accessible topology; empty when it reaches every node."""
        return [topology(node) for node in self.nodes()]

    @abc.abstractmethod
    def publish(self, volume: Volume, node_id: str, read_only: bool, secrets: Mapping[str, str]) -> Dict[str, str]:
        """Give *node_id* access to *volume*; return the publish_context."""

    @abc.abstractmethod
    def unpublish(self, volume_id: str, node_id: str) -> None:
        """Withdraw *node_id*'s access (idempotent); the caller forgets the publication record first."""


class LocalPublishing(Publishing):
    """Local pools: a volume is used where it lives; publishing records the grant only."""

    def nodes(self) -> List[str]:
        return [self.node_id]

    def publish(self, volume: Volume, node_id: str, read_only: bool, secrets: Mapping[str, str]) -> Dict[str, str]:
        return {POOL_KEY: volume.pool}

    def unpublish(self, volume_id: str, node_id: str) -> None:
        return None


class IscsiPublishing(Publishing):
    """A storage host: every publication is an iSCSI export to that node's initiator only, with CHAP."""

    access = SHARED

    def __init__(self, pool: Pool, node_id: str, backend: TargetBackend, settings: exports.ExportSettings,
                 initiators: Mapping[str, str], require_chap: bool = True, initiator_base: str = "") -> None:
        super().__init__(pool, node_id)
        self.backend = backend
        self.settings = settings
        self.initiators = dict(initiators)
        self.require_chap = require_chap
        self.initiator_base = initiator_base
        if initiator_base:
            initiator_iqn_for(initiator_base, node_id)  # a bad base fails at start, not at the first publish

    def initiator_for(self, node_id: str) -> Optional[str]:
        """*node_id*'s initiator IQN: the explicit map first, else derived under the initiator base."""
        if node_id in self.initiators:
            return self.initiators[node_id]
        return initiator_iqn_for(self.initiator_base, node_id) if self.initiator_base else None

    def nodes(self) -> List[str]:
        return sorted(set(self.initiators) | {self.node_id})

    def reaches(self, node_id: str) -> bool:
        return node_id == self.node_id or self.initiator_for(node_id) is not None

    def topologies(self) -> List[csi_pb2.Topology]:
        # With derived IQNs every node can attach: no constraint (CSI: accessible from all nodes).
        return [] if self.initiator_base else super().topologies()

    def publish(self, volume: Volume, node_id: str, read_only: bool, secrets: Mapping[str, str]) -> Dict[str, str]:
        context = {POOL_KEY: volume.pool, STORAGE_NODE_KEY: self.node_id}
        if node_id == self.node_id:
            return context  # the storage host stages its own volumes locally, without a loopback session
        initiator = self.initiator_for(node_id)
        if initiator is None:
            raise RpcFailure(grpc.StatusCode.NOT_FOUND, f"node {node_id!r} has no known initiator IQN")
        chap = chap_from_secrets(secrets)
        if chap is None and self.require_chap:
            raise invalid(f"publishing over iSCSI needs CHAP: set {CHAP_USER} and {CHAP_PASSWORD} in the "
                          "controller-publish secret")
        try:
            info, _changed = exports.ensure_exported(self.pool, self.backend, self.settings, volume, initiator,
                                                     chap, read_only)
        except Conflict as error:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        context.update({TARGET_KEY: info.target_iqn, PORTALS_KEY: ",".join(info.portals),
                        LUN_KEY: str(info.lun), SERIAL_KEY: info.serial})
        return context

    def unpublish(self, volume_id: str, node_id: str) -> None:
        initiator = self.initiator_for(node_id)
        if initiator is not None:
            exports.ensure_unexported(self.pool, self.backend, self.settings, volume_id, initiator)
