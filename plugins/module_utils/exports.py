"""Volumes exported over iSCSI to the nodes that use them (the storage host's side of publishing).

Shared by the agent's ControllerPublish/Unpublish and the ``iscsi_export``
module: the pool makes the volume a block device here, the target backend
puts it behind one target per volume, and each node gets an ACL entry for its
initiator IQN only, with CHAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import Conflict
from .iscsi_target import Chap, Grant, TargetBackend, check_iqn, serial_for, target_iqn_for
from .model import Volume
from .pool import Pool


@dataclass(frozen=True)
class ExportSettings:
    base_iqn: str
    portals: Tuple[str, ...]


@dataclass(frozen=True)
class ExportInfo:
    """What a node needs to attach the volume."""

    target_iqn: str
    lun: int
    serial: str
    portals: Tuple[str, ...]


def info_for(backend: TargetBackend, settings: ExportSettings, volume_id: str) -> ExportInfo:
    return ExportInfo(target_iqn_for(settings.base_iqn, volume_id), backend.lun, serial_for(volume_id),
                      settings.portals)


def ensure_exported(
    pool: Pool,
    backend: TargetBackend,
    settings: ExportSettings,
    volume: Volume,
    initiator_iqn: str,
    chap: Optional[Chap],
    read_only: bool,
    *,
    check_mode: bool = False,
) -> Tuple[ExportInfo, bool]:
    """Export *volume* to *initiator_iqn* (and only it, with *chap*); return what a node needs."""
    check_iqn(initiator_iqn, "initiator IQN")
    info = info_for(backend, settings, volume.id)
    if check_mode:
        current = backend.export(info.target_iqn)
        if current is not None and current.read_only != read_only:  # what ensure_export would refuse
            raise Conflict(f"target {info.target_iqn} is exported with read-only {current.read_only}, "
                           f"not {read_only}")
        grant = current.grant_for(initiator_iqn) if current else None
        return info, grant != Grant(initiator_iqn, chap)
    # The device first, then the target: each step alone (helper threads beside tgtd's socket cost more than
    # they overlapped, bench/README.md), and a failed attach leaves nothing in the target service.
    device = pool.attach(volume)  # the volume's own: its lock covers it
    with backend.transaction():  # targets, accounts and the saved configuration are every volume's
        changed = backend.ensure_export(info.target_iqn, device, info.serial, read_only)
        changed = backend.ensure_grant(info.target_iqn, initiator_iqn, chap) or changed
        if changed:
            backend.persist()
    return info, changed


def ensure_unexported(
    pool: Pool,
    backend: TargetBackend,
    settings: ExportSettings,
    volume_id: str,
    initiator_iqn: str,
    *,
    check_mode: bool = False,
) -> bool:
    """Withdraw the node's access; the target goes with the last grant, and the device with it.

    The agent forgets the publication record before it calls this.  The device is released also
    when the target is already gone (the target service restarted empty), unless the volume's
    record still publishes it elsewhere.
    """
    target = target_iqn_for(settings.base_iqn, volume_id)
    with backend.transaction():
        if check_mode:
            current = backend.export(target)
            return current is not None and (current.grant_for(initiator_iqn) is not None or not current.grants)
        changed, gone = backend.withdraw(target, initiator_iqn)
        if changed:
            backend.persist()
    if gone:
        changed = _release(pool, volume_id) or changed
    return changed


def _release(pool: Pool, volume_id: str) -> bool:
    """Detach the volume's device once no export uses it, unless a recorded publication still wants it."""
    volume = pool.load_volume(volume_id)
    if volume is None or volume.publications:
        return False
    return pool.detach(volume)


def ensure_withdrawn(
    pool: Pool,
    backend: TargetBackend,
    settings: ExportSettings,
    volume_id: str,
    *,
    check_mode: bool = False,
) -> bool:
    """Withdraw every node's access, then the target and the device: the whole export goes."""
    target = target_iqn_for(settings.base_iqn, volume_id)
    with backend.transaction():
        current = backend.export(target)
        if current is None:
            return False
        if check_mode:
            return True
        for grant in current.grants:
            backend.revoke_grant(target, grant.initiator_iqn)
        backend.remove_export(target)
        backend.persist()
    volume = pool.load_volume(volume_id)
    if volume is not None:
        pool.detach(volume)
    return True
