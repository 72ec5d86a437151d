"""The iSCSI initiator side (NodeStageVolume) through open-iscsi's ``iscsiadm`` (2.1.8), and finding the disk.

Why it looks the way it does:

* ``-o new`` on an existing node record silently resets it to the defaults
  (authmethod back to None: measured), so ``ensure_node`` creates the record
  only when ``-o show`` says "No records found" (rc 21) and then updates
  the settings that differ.
* ``-o show -S`` prints the secrets (without -S they show as ``********``);
  that is the only way to compare a stored CHAP password.  Passwords go to
  iscsiadm on its command line (``-v``): ``run(secrets=...)`` keeps them out
  of logs and errors.  open-iscsi stores them in /etc/iscsi/nodes/... mode 0600.
* Logins need iscsid and the kernel's NETLINK_ISCSI.  Exit codes
  (open-iscsi include/iscsi_err.h) and texts, from real runs: 15 "session
  exists" / "1 session requested, but 1 already present." (already logged
  in: success for us), 24 "iSCSI login failed due to authorization failure"
  (CHAP), 19 "encountered non-retryable iSCSI login failure" (target
  refuses: ACL, unknown target), 8 "connection timed out", 20 "could not
  connect to iscsid", 21 "No records found" / "No matching sessions found" /
  "No active sessions.".  See tests/unit/plugins/module_utils/iscsi_recorded/README.md for where
  each recording comes from.
* ``wait_for_device`` matches the SCSI unit serial (VPD page 0x80) the target
  was given (``iscsi_target.serial_for``), not a by-path name: it is unique
  per volume whatever the portal, LUN number or backend.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from . import device_wait
from .errors import CommandFailed, InvalidRequest, NotFound
from .iscsi_target import Chap, check_iqn
from .runner import run

TIMEOUT = 60.0
ERR_TRANS_TIMEOUT = 8
ERR_SESS_EXISTS = 15
ERR_FATAL_LOGIN = 19
ERR_ISCSID_NOTCONN = 20
ERR_NO_OBJS_FOUND = 21
ERR_LOGIN_AUTH_FAILED = 24
EMPTY = "<empty>"
_PORTAL = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:\d{1,5})?$")
_SESSION = re.compile(r"^(\S+): \[(\d+)\] (\S+),(-?\d+) (\S+)(?: \((non-flash|flash)\))?$")
_LOGIN_REASONS = {
    ERR_LOGIN_AUTH_FAILED: "auth",
    ERR_FATAL_LOGIN: "refused",
    ERR_TRANS_TIMEOUT: "timeout",
    ERR_ISCSID_NOTCONN: "no-iscsid",
}


class LoginFailed(CommandFailed):
    """``iscsiadm --login`` failed; ``reason`` is auth, refused, timeout, no-iscsid or other."""

    def __init__(self, failed: CommandFailed) -> None:
        super().__init__(failed.argv, failed.rc, failed.stderr, failed.what)
        self.reason = _LOGIN_REASONS.get(failed.rc, "other")


@dataclass(frozen=True)
class Session:
    """One line of ``iscsiadm -m session``: ``tcp: [SID] PORTAL,TPGT IQN (non-flash)``."""

    transport: str
    sid: int
    portal: str
    tpgt: int
    target_iqn: str
    flash: bool = False


def check_portal(portal: str) -> str:
    """``ADDRESS[:PORT]`` (IPv6 in brackets): what ``-p`` accepts; nothing that looks like an option."""
    if not isinstance(portal, str) or not _PORTAL.match(portal):
        raise InvalidRequest(f"portal {portal!r} is not ADDRESS[:PORT]")
    return portal


def _node(target_iqn: str, portal: str, iface: Optional[str]) -> List[str]:
    argv = ["iscsiadm", "-m", "node", "-T", check_iqn(target_iqn, "target IQN"), "-p", check_portal(portal)]
    if iface is not None:
        if not re.match(r"^[A-Za-z0-9_.-]+$", iface) or iface.startswith("-"):
            raise InvalidRequest(f"iface {iface!r} is not a valid iface name")
        argv += ["-I", iface]
    return argv


def parse_node(text: str) -> Dict[str, str]:
    """Parse ``iscsiadm -m node -T .. -p .. -o show``: ``name = value`` lines; ``<empty>`` becomes ''."""
    settings = {}
    for line in text.splitlines():
        if line.startswith("#") or " = " not in line:
            continue
        key, value = line.split(" = ", 1)
        settings[key.strip()] = "" if value.strip() == EMPTY else value.strip()
    return settings


def parse_sessions(text: str) -> List[Session]:
    found = []
    for line in text.splitlines():
        match = _SESSION.match(line.strip())
        if match:
            found.append(Session(match.group(1), int(match.group(2)), match.group(3), int(match.group(4)),
                                 match.group(5), match.group(6) == "flash"))
    return found


def node_settings(target_iqn: str, portal: str, *, iface: Optional[str] = None,
                  secrets: Iterable[str] = ()) -> Optional[Dict[str, str]]:
    """The node record's settings (secrets in clear: ``-S``), or None when there is no record."""
    result = run([*_node(target_iqn, portal, iface), "-o", "show", "-S"], check=False, timeout=TIMEOUT,
                 secrets=secrets, what=f"show node {target_iqn}")
    if result.rc == ERR_NO_OBJS_FOUND:
        return None
    if result.rc != 0:
        raise CommandFailed(result.argv, result.rc, result.stderr, f"show node {target_iqn}")
    return parse_node(result.stdout)


def ensure_node(target_iqn: str, portal: str, chap: Optional[Chap], *, iface: Optional[str] = None,
                startup: str = "automatic", check_mode: bool = False) -> bool:
    """Make the node record for *target_iqn* at *portal* hold *chap* and ``node.startup``; True if it changed.

    With *check_mode* nothing is written: True when the record is missing or any setting differs.

    ``node.startup=automatic``: iscsid logs in again at boot (open-iscsi's
    iscsi.service runs ``iscsiadm -m node --loginall=automatic``), so a
    rebooted node has its disks before kubelet stages them again.
    """
    if startup not in ("automatic", "manual", "onboot"):
        raise InvalidRequest(f"node.startup {startup!r} is not automatic, manual or onboot")
    secrets = chap.secrets() if chap else ()
    base = _node(target_iqn, portal, iface)
    current = node_settings(target_iqn, portal, iface=iface, secrets=secrets)
    changed = False
    if current is None:
        if check_mode:
            return True
        run([*base, "-o", "new"], timeout=TIMEOUT, what=f"add node {target_iqn}")
        current = {}
        changed = True
    wanted = {"node.startup": startup}
    if chap is None:
        wanted.update({"node.session.auth.authmethod": "None", "node.session.auth.username": "",
                       "node.session.auth.password": "", "node.session.auth.username_in": "",
                       "node.session.auth.password_in": ""})
    else:
        wanted.update({"node.session.auth.authmethod": "CHAP", "node.session.auth.username": chap.user,
                       "node.session.auth.password": chap.password,
                       "node.session.auth.username_in": chap.mutual_user or "",
                       "node.session.auth.password_in": chap.mutual_password or ""})
    for name, value in wanted.items():
        if current.get(name) == value:
            continue
        if check_mode:
            return True
        run([*base, "-o", "update", "-n", name, "-v", value], timeout=TIMEOUT, secrets=secrets,
            what=f"set {name} of node {target_iqn}")
        changed = True
    return changed


def login(target_iqn: str, portal: str, *, iface: Optional[str] = None) -> bool:
    """Log in to the node; False when a session already exists (rc 15 / "already present")."""
    argv = [*_node(target_iqn, portal, iface), "--login"]
    try:
        run(argv, timeout=TIMEOUT, what=f"log in to {target_iqn}")
    except CommandFailed as exc:
        if exc.rc == ERR_SESS_EXISTS or "already present" in exc.stderr or "session exists" in exc.stderr:
            return False
        if exc.rc == ERR_NO_OBJS_FOUND:
            raise NotFound(f"no node record for {target_iqn} at {portal}: call ensure_node first") from exc
        raise LoginFailed(exc) from None
    return True


def logout(target_iqn: str, portal: str, *, iface: Optional[str] = None) -> bool:
    """Log out of the node's session; False when there was none (rc 21 "No matching sessions found")."""
    return _node_operation(target_iqn, portal, iface, ["--logout"], f"log out of {target_iqn}")


def delete_node(target_iqn: str, portal: str, *, iface: Optional[str] = None) -> bool:
    """Delete the node record (log out first); False when there was none (rc 21 "No records found")."""
    return _node_operation(target_iqn, portal, iface, ["-o", "delete"], f"delete node {target_iqn}")


def rescan(target_iqn: str, portal: str, *, iface: Optional[str] = None) -> bool:
    """Re-read the size of the session's LUNs; False when there is no session on that portal (rc 21)."""
    return _node_operation(target_iqn, portal, iface, ["--rescan"], f"rescan {target_iqn}")


def _node_operation(target_iqn: str, portal: str, iface: Optional[str], operation: List[str], what: str) -> bool:
    """Run *operation* on the node record; False when rc 21 says there was nothing to act on."""
    try:
        run([*_node(target_iqn, portal, iface), *operation], timeout=TIMEOUT, what=what)
    except CommandFailed as exc:
        if exc.rc == ERR_NO_OBJS_FOUND:
            return False
        raise
    return True


def _listing(mode: str, what: str) -> str:
    """``iscsiadm -m MODE``'s output; rc 21 (nothing of that kind) is empty."""
    result = run(["iscsiadm", "-m", mode], check=False, timeout=TIMEOUT, what=what)
    if result.rc == ERR_NO_OBJS_FOUND:
        return ""
    if result.rc != 0:
        raise CommandFailed(result.argv, result.rc, result.stderr, what)
    return result.stdout


def installed() -> bool:
    """Whether open-iscsi's iscsiadm is here (a host without it has no sessions and no node records)."""
    return shutil.which("iscsiadm") is not None


def sessions() -> List[Session]:
    """Active sessions; rc 21 "No active sessions." is an empty list."""
    return parse_sessions(_listing("session", "list iSCSI sessions"))


def parse_nodes(text: str) -> List[Tuple[str, str]]:
    """``iscsiadm -m node`` lines ``PORTAL,TPGT IQN`` -> (target IQN, portal) pairs."""
    found = []
    for line in text.splitlines():
        portal_tpgt, _sep, iqn = line.strip().partition(" ")
        if iqn and "," in portal_tpgt:
            found.append((iqn.strip(), portal_tpgt.rpartition(",")[0]))
    return found


def nodes() -> List[Tuple[str, str]]:
    """Every node record as (target IQN, portal); rc 21 "No records found" is an empty list."""
    return parse_nodes(_listing("node", "list iSCSI node records"))


def initiator_name(path: str = "/etc/iscsi/initiatorname.iscsi") -> str:
    """This node's initiator IQN (``InitiatorName=`` in open-iscsi's file), for the grant on the controller."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("InitiatorName="):
                    return check_iqn(line.split("=", 1)[1].strip(), "initiator name")
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist (is open-iscsi installed?)") from None
    raise NotFound(f"{path} has no InitiatorName= line")


# -- finding the disk ----------------------------------------------------------


def read_vpd_serial(raw: bytes) -> str:
    """The unit serial number in a VPD page 0x80 as the kernel exposes it (``vpd_pg80``: 4-byte header, then ASCII)."""
    if len(raw) < 4 or raw[1] != 0x80:
        return ""
    length = int.from_bytes(raw[2:4], "big")
    return raw[4 : 4 + length].decode("ascii", errors="replace").strip(" \0")


def find_disks(serial: str, *, sys_root: str = "/sys", dev_root: str = "/dev") -> List[str]:
    """Every /dev/sdX whose SCSI unit serial is *serial*: one per portal when logged in on several.

    First ``/sys/block/sd*/device/vpd_pg80`` (the kernel's copy, no udev
    needed); then ``/dev/disk/by-id/scsi-S*_<serial>`` (udev's scsi_id links,
    one disk only).
    """
    block = os.path.join(sys_root, "block")
    try:
        names = sorted(os.listdir(block))
    except FileNotFoundError:
        names = []
    found = []
    for name in names:
        if not name.startswith("sd"):
            continue
        try:
            with open(os.path.join(block, name, "device", "vpd_pg80"), "rb") as handle:
                if read_vpd_serial(handle.read()) == serial:
                    found.append(os.path.join(dev_root, name))
        except OSError:
            continue
    if found:
        return found
    by_id = os.path.join(dev_root, "disk", "by-id")
    try:
        links = sorted(os.listdir(by_id))
    except FileNotFoundError:
        links = []
    for link in links:
        if link.startswith("scsi-S") and link.endswith("_" + serial) and "-part" not in link:
            return [os.path.realpath(os.path.join(by_id, link))]
    return []


def session_disks(sid: int, *, sys_root: str = "/sys") -> List[str]:
    """The kernel names of the SCSI disks a session brought (``sdX``): its sysfs session device holds them,
    ``class/iscsi_session/sessionSID/device/targetH:C:T/H:C:T:L/block/sdX`` (open-iscsi walks the same)."""
    pattern = os.path.join(glob.escape(sys_root), "class", "iscsi_session", f"session{int(sid)}", "device",
                           "target*", "*:*", "block", "*")
    return sorted(os.path.basename(path) for path in glob.glob(pattern))


def find_device(serial: str, *, sys_root: str = "/sys", dev_root: str = "/dev") -> Optional[str]:
    """The (first) /dev/sdX whose SCSI unit serial is *serial*, or None."""
    disks = find_disks(serial, sys_root=sys_root, dev_root=dev_root)
    return disks[0] if disks else None


def wait_for_device(serial: str, timeout: float = 30.0, *, sys_root: str = "/sys", dev_root: str = "/dev",
                    use_udev: Optional[bool] = None, poll_interval: float = 0.25) -> str:
    """Wait until the disk with unit serial *serial* appears after a login; return its /dev path."""
    return wait_for_disks(serial, 1, timeout, sys_root=sys_root, dev_root=dev_root, use_udev=use_udev,
                          poll_interval=poll_interval)[0]


def wait_for_disks(serial: str, count: int, timeout: float = 30.0, *, sys_root: str = "/sys",
                   dev_root: str = "/dev", use_udev: Optional[bool] = None,
                   poll_interval: float = 0.25) -> List[str]:
    """Wait until *count* disks with unit serial *serial* exist (one per portal logged in); return them.

    Block-device events wake the scan (device_wait: pyudev where it can listen,
    polling every *poll_interval* seconds otherwise).  Raises NotFound after *timeout*.
    """
    if not serial:
        raise InvalidRequest("serial is empty")
    seen: List[str] = []

    def enough() -> Optional[List[str]]:
        seen[:] = find_disks(serial, sys_root=sys_root, dev_root=dev_root)
        return list(seen) if len(seen) >= count else None

    found = device_wait.wait_for(enough, timeout, use_udev=use_udev, poll_interval=poll_interval)
    if found is None:
        raise NotFound(f"{len(seen)} of {count} SCSI disk(s) with serial {serial!r} appeared within {timeout:g}s")
    return found
