"""Where this node gets a volume's block device from: its own pool, or an iSCSI login.

The node service stages, publishes, measures and grows through this one
interface, so the same code serves a local volume and one exported by a
storage host.
"""

from __future__ import annotations

import abc
from typing import List, Mapping, Optional

import grpc

from basalt_core import iscsi_attach, iscsiadm, multipath
from basalt_core.atomicfile import fsync_path
from basalt_core.iscsi_target import Chap
from basalt_core.model import Volume
from basalt_core.pool import Pool

from .errors import RpcFailure
from .publish_keys import PORTALS_KEY, SERIAL_KEY, STORAGE_NODE_KEY, TARGET_KEY


class Attachment(abc.ABC):
    @abc.abstractmethod
    def attach(self) -> str:
        """Make the volume a block device here (idempotent); return its path."""

    @abc.abstractmethod
    def device(self) -> Optional[str]:
        """The block device if the volume is attached here now."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Flush and undo attach (idempotent)."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Make the device show the volume's current size."""

    @abc.abstractmethod
    def problem(self) -> Optional[str]:
        """What is wrong with the volume's data path, or None."""


class PoolAttachment(Attachment):
    def __init__(self, pool: Pool, volume: Volume) -> None:
        self.pool = pool
        self.volume = volume

    def attach(self) -> str:
        return self.pool.attach(self.volume)

    def device(self) -> Optional[str]:
        return self.pool.attached_device(self.volume)

    def detach(self) -> None:
        device = self.device()
        if device is not None:
            fsync_path(device)  # push dirty pages down before the device goes
            self.pool.detach(self.volume)

    def refresh(self) -> None:
        self.pool.refresh(self.volume)

    def problem(self) -> Optional[str]:
        return self.pool.volume_problem(self.volume)


class IscsiAttachment(Attachment):
    """*staged_map*: the multipath map the volume is on (attach finds it; the node record keeps it)."""

    def __init__(self, target_iqn: str, portals: List[str], serial: str, chap: Optional[Chap] = None,
                 staged_map: Optional[multipath.Map] = None) -> None:
        self.target_iqn = target_iqn
        self.portals = portals
        self.serial = serial
        self.chap = chap
        self.staged_map = staged_map

    def attach(self) -> str:
        try:
            device, _changed = iscsi_attach.ensure_attached(self.target_iqn, self.portals, self.chap, self.serial)
        except iscsiadm.LoginFailed as failed:
            raise _login_failure(self.target_iqn, failed) from None
        self.staged_map = multipath.map_at(device)
        return device

    def device(self) -> Optional[str]:
        return iscsi_attach.attached_device(self.serial)

    def detach(self) -> None:
        device = self.device()
        if device is not None:
            fsync_path(device)
        # also when the disk is already gone; a multipath map is flushed before the logouts
        iscsi_attach.ensure_detached(self.target_iqn, self.portals, serial=self.serial, staged_map=self.staged_map)

    def refresh(self) -> None:
        iscsi_attach.rescan(self.target_iqn, self.portals, serial=self.serial)

    def problem(self) -> Optional[str]:
        if self.device() is None:
            return f"no disk with serial {self.serial} from {self.target_iqn}: the iSCSI session is gone"
        return None


def _login_failure(target_iqn: str, failed: iscsiadm.LoginFailed) -> RpcFailure:
    """The CSI code for a refused login: bad secrets are UNAUTHENTICATED (spec "Error Scheme")."""
    if failed.reason == "auth":
        # LIO answers the same for a wrong CHAP secret and for an initiator without an ACL.
        return RpcFailure(grpc.StatusCode.UNAUTHENTICATED,
                          f"{target_iqn} refused this node's login (authorization failure): check the CHAP "
                          "credentials of the node-stage secret, and that the volume is published to this node")
    code = grpc.StatusCode.UNAVAILABLE if failed.reason == "timeout" else grpc.StatusCode.FAILED_PRECONDITION
    return RpcFailure(code, f"cannot log in to {target_iqn} ({failed.reason}): {failed.stderr}")


def remote_target(publish_context: Mapping[str, str], node_id: str) -> Optional[IscsiAttachment]:
    """The iSCSI export a publish_context names, unless the volume lives on this very node."""
    target = publish_context.get(TARGET_KEY)
    if not target or publish_context.get(STORAGE_NODE_KEY) == node_id:
        return None
    portals = [p for p in publish_context.get(PORTALS_KEY, "").split(",") if p]
    return IscsiAttachment(target, portals, publish_context.get(SERIAL_KEY, ""))
