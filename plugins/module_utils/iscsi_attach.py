"""A node's side of an iSCSI volume: node records, a login per portal, the disk found by its serial.

Shared by the agent's NodeStage/NodeUnstage and the ``iscsi_attach``
module.  Each step is idempotent, so a retried stage finds its session and
disk and goes on.
"""

from __future__ import annotations

import os
from typing import Literal, Optional, Sequence, Set, Tuple, overload

from . import iscsiadm, multipath
from .errors import InvalidRequest, NotFound
from .iscsi_target import Chap, check_iqn

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
    return _device_after_login(serial, len(portals), timeout), changed


def _device_after_login(serial: str, paths: int, timeout: float) -> str:
    """The disk, or the multipath map over one disk per portal when there are several and multipathd runs."""
    if paths > 1 and multipath.daemon_running():
        disks = iscsiadm.wait_for_disks(serial, paths, timeout)
        return multipath.wait_for_map([os.path.basename(d) for d in disks], timeout).device
    return attached_device(serial) or iscsiadm.wait_for_device(serial, timeout)


def attached_device(serial: str) -> Optional[str]:
    """Where the volume with unit serial *serial* is now: its multipath map if one holds its disks, else
    its disk; None when no disk is there."""
    disks = iscsiadm.find_disks(serial)
    held = multipath.map_for(os.path.basename(d) for d in disks)
    if held is not None:
        return held.device
    return disks[0] if disks else None


def ensure_detached(target_iqn: str, portals: Sequence[str], *, serial: str = "",
                    staged_map: Optional[multipath.Map] = None, check_mode: bool = False) -> bool:
    """Log out of every portal's session and forget the node records; the multipath map over the disks
    with unit serial *serial* (when given) is flushed first.

    *staged_map*: the map the volume was staged on, as the caller recorded it (name and uuid).  With
    every path lost the disks are gone and no map can be found through them, but the map stays (and
    with ``queue_if_no_path`` holds I/O for ever): it is flushed by that name, if it still has that uuid.

    With *check_mode* nothing changes: True when a session or a node record is there.
    """
    if check_mode:
        live = logged_in_portals(check_iqn(target_iqn, "target IQN"))
        portals = [iscsiadm.check_portal(p) for p in portals]
        return any(session_portal(p) in live or iscsiadm.node_settings(target_iqn, p) is not None for p in portals)
    changed = False
    held = multipath.map_for(os.path.basename(d) for d in iscsiadm.find_disks(serial)) if serial else None
    if held is not None:
        changed = multipath.flush(held.name)  # before logout: a map without paths would queue I/O forever
    elif staged_map is not None and staged_map.name:
        changed = multipath.flush(staged_map.name, uuid=staged_map.uuid)
    for portal in portals:
        changed = iscsiadm.logout(target_iqn, portal) or changed
        changed = iscsiadm.delete_node(target_iqn, portal) or changed
    return changed


def rescan(target_iqn: str, portals: Sequence[str], *, serial: str = "") -> None:
    """Make the kernel re-read the LUN's size after the volume grew on the storage host, on every portal
    with a session, then the multipath map over the disks with unit serial *serial* (when given)."""
    rescanned = [iscsiadm.rescan(target_iqn, portal) for portal in portals]  # every portal: no short-circuit
    if not any(rescanned):
        raise NotFound(f"no session to {target_iqn} on {', '.join(portals)} to rescan")
    held = multipath.map_for(os.path.basename(d) for d in iscsiadm.find_disks(serial)) if serial else None
    if held is not None:
        multipath.resize(held.name)
