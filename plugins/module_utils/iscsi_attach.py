"""A node's side of an iSCSI volume: node records, a login per portal, the disk found by its serial.

Shared by the agent's NodeStage/NodeUnstage and the ``iscsi_attach``
module.  Each step is idempotent, so a retried stage finds its session and
disk and goes on.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from . import iscsiadm
from .errors import InvalidRequest
from .iscsi_target import Chap, check_iqn
from .runner import run

DEVICE_TIMEOUT = 60.0


def ensure_attached(target_iqn: str, portals: Sequence[str], chap: Optional[Chap], serial: str,
                    *, timeout: float = DEVICE_TIMEOUT) -> Tuple[str, bool]:
    """Log in to *target_iqn* on every portal and return the disk whose unit serial is *serial*."""
    check_iqn(target_iqn, "target IQN")
    if not portals:
        raise InvalidRequest(f"no portal to log in to {target_iqn}")
    changed = False
    for portal in portals:
        changed = iscsiadm.ensure_node(target_iqn, portal, chap) or changed
        changed = iscsiadm.login(target_iqn, portal) or changed
    return iscsiadm.wait_for_device(serial, timeout), changed


def ensure_detached(target_iqn: str, portals: Sequence[str]) -> bool:
    """Log out of every portal's session and forget the node records."""
    changed = False
    for portal in portals:
        changed = iscsiadm.logout(target_iqn, portal) or changed
        changed = iscsiadm.delete_node(target_iqn, portal) or changed
    return changed


def rescan(target_iqn: str, portals: Sequence[str]) -> None:
    """Make the kernel re-read the LUN's size after the volume grew on the storage host."""
    for portal in portals:
        run(["iscsiadm", "-m", "node", "-T", check_iqn(target_iqn, "target IQN"), "-p",
             iscsiadm.check_portal(portal), "--rescan"], what=f"rescan {target_iqn} at {portal}")
