"""A node's side of an iSCSI volume: node records, a login per portal, the disk found by its serial.

Shared by the agent's NodeStage/NodeUnstage and the ``iscsi_attach``
module.  Each step is idempotent, so a retried stage finds its session and
disk and goes on.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Set, Tuple, overload

from . import iscsiadm
from .errors import InvalidRequest
from .iscsi_target import Chap, check_iqn
from .runner import run

DEVICE_TIMEOUT = 60.0
DEFAULT_PORT = "3260"


def session_portal(portal: str) -> str:
    """*portal* as ``iscsiadm -m session`` shows it, with its port (3260 when not given)."""
    has_port = "]:" in portal if portal.startswith("[") else ":" in portal
    return portal if has_port else f"{portal}:{DEFAULT_PORT}"


def logged_in_portals(target_iqn: str) -> Set[str]:
    """The portals (``ADDRESS:PORT``) with a live session to *target_iqn*."""
    return {session_portal(s.portal) for s in iscsiadm.sessions() if s.target_iqn == target_iqn}


@overload
def ensure_attached(target_iqn: str, portals: Sequence[str], chap: Optional[Chap], serial: str, *,
                    timeout: float = ..., check_mode: Literal[False] = ...) -> Tuple[str, bool]: ...


@overload
def ensure_attached(target_iqn: str, portals: Sequence[str], chap: Optional[Chap], serial: str, *,
                    timeout: float = ..., check_mode: bool) -> Tuple[Optional[str], bool]: ...


def ensure_attached(target_iqn: str, portals: Sequence[str], chap: Optional[Chap], serial: str,
                    *, timeout: float = DEVICE_TIMEOUT, check_mode: bool = False) -> Tuple[Optional[str], bool]:
    """Log in to *target_iqn* on every portal and return the disk whose unit serial is *serial*.

    With *check_mode* nothing changes and nothing waits: the result is the disk
    that is there now (None when there is none yet) and whether a node record
    or a login is missing.
    """
    check_iqn(target_iqn, "target IQN")
    if not portals:
        raise InvalidRequest(f"no portal to log in to {target_iqn}")
    if check_mode:
        live = logged_in_portals(target_iqn)
        portals = [iscsiadm.check_portal(p) for p in portals]
        changed = any(session_portal(p) not in live or iscsiadm.ensure_node(target_iqn, p, chap, check_mode=True)
                      for p in portals)
        return iscsiadm.find_device(serial), changed
    changed = False
    for portal in portals:
        changed = iscsiadm.ensure_node(target_iqn, portal, chap) or changed
        changed = iscsiadm.login(target_iqn, portal) or changed
    return iscsiadm.wait_for_device(serial, timeout), changed


def ensure_detached(target_iqn: str, portals: Sequence[str], *, check_mode: bool = False) -> bool:
    """Log out of every portal's session and forget the node records.

    With *check_mode* nothing changes: True when a session or a node record is there.
    """
    if check_mode:
        live = logged_in_portals(check_iqn(target_iqn, "target IQN"))
        portals = [iscsiadm.check_portal(p) for p in portals]
        return any(session_portal(p) in live or iscsiadm.node_settings(target_iqn, p) is not None for p in portals)
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
