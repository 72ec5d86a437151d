"""What ``tgtadm --lld iscsi ... --op show`` prints (tgt 1.0.85), parsed into values.

Recordings of the real output are in tests/unit/plugins/module_utils/iscsi_recorded (tests/iscsi/record_tgt.py
makes them); :mod:`.tgt` drives tgtd with what these parsers read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class TgtLun:
    lun: int
    type: str
    serial: str
    read_only: bool
    backing_store: str
    backing_store_type: str


@dataclass(frozen=True)
class TgtSession:
    sid: int
    initiator: str
    connections: Tuple[int, ...]
    addresses: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TgtTarget:
    tid: int
    iqn: str
    state: str = ""
    luns: Tuple[TgtLun, ...] = ()
    incoming: Tuple[str, ...] = ()
    outgoing: Tuple[str, ...] = ()
    acls: Tuple[str, ...] = ()
    sessions: Tuple[TgtSession, ...] = ()

    def lun(self, number: int) -> Optional[TgtLun]:
        for item in self.luns:
            if item.lun == number:
                return item
        return None

    @property
    def initiator_acls(self) -> Tuple[str, ...]:
        """The ACL entries that are initiator names (address entries hold '/' or are 'ALL' or an address)."""
        return tuple(a for a in self.acls if is_name_acl(a))


def is_name_acl(entry: str) -> bool:
    return entry.startswith(("iqn.", "eui.", "naa."))


def parse_targets(text: str) -> List[TgtTarget]:
    """Parse ``tgtadm --lld iscsi --mode target --op show`` (tgt 1.0.85 layout, indent-structured)."""
    targets: List[TgtTarget] = []
    current: Optional[Dict[str, Any]] = None
    section = ""
    lun: Optional[Dict[str, str]] = None
    session: Optional[Dict[str, Any]] = None

    def close_lun() -> None:
        nonlocal lun
        if lun is not None and current is not None:
            current["luns"].append(
                TgtLun(
                    lun=int(lun["LUN"]),
                    type=lun.get("Type", ""),
                    serial=lun.get("SCSI SN", ""),
                    read_only=lun.get("Readonly", "No") == "Yes",
                    backing_store=lun.get("Backing store path", ""),
                    backing_store_type=lun.get("Backing store type", ""),
                )
            )
        lun = None

    def close_session() -> None:
        nonlocal session
        if session is not None and current is not None:
            current["sessions"].append(
                TgtSession(session["sid"], session["initiator"], tuple(session["cids"]), tuple(session["ips"]))
            )
        session = None

    def close_target() -> None:
        close_lun()
        close_session()
        if current is not None:
            targets.append(
                TgtTarget(
                    tid=current["tid"],
                    iqn=current["iqn"],
                    state=current["state"],
                    luns=tuple(current["luns"]),
                    incoming=tuple(current["incoming"]),
                    outgoing=tuple(current["outgoing"]),
                    acls=tuple(current["acls"]),
                    sessions=tuple(current["sessions"]),
                )
            )

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        match = re.match(r"^Target (\d+): (\S+)$", line)
        if match:
            close_target()
            current = {"tid": int(match.group(1)), "iqn": match.group(2), "state": "", "luns": [],
                       "incoming": [], "outgoing": [], "acls": [], "sessions": []}
            section = ""
            continue
        if current is None:
            continue
        if indent == 4:
            close_lun()
            close_session()
            section = body.rstrip(":")
            continue
        if section == "System information" and body.startswith("State:"):
            current["state"] = body.split(":", 1)[1].strip()
        elif section == "LUN information":
            if indent == 8 and body.startswith("LUN:"):
                close_lun()
                lun = {"LUN": body.split(":", 1)[1].strip()}
            elif lun is not None and ":" in body:
                key, value = body.split(":", 1)
                lun.setdefault(key.strip(), value.strip())
        elif section == "Account information" and indent == 8:
            if body.endswith(" (outgoing)"):
                current["outgoing"].append(body[: -len(" (outgoing)")])
            else:
                current["incoming"].append(body)
        elif section == "ACL information" and indent == 8:
            current["acls"].append(body)
        elif section == "I_T nexus information":
            if indent == 8 and body.startswith("I_T nexus:"):
                close_session()
                session = {"sid": int(body.split(":", 1)[1]), "initiator": "", "cids": [], "ips": []}
            elif session is not None and body.startswith("Initiator:"):
                session["initiator"] = body.split(":", 1)[1].strip().split(" ")[0]
            elif session is not None and body.startswith("Connection:"):
                session["cids"].append(int(body.split(":", 1)[1]))
            elif session is not None and body.startswith("IP Address:"):
                session["ips"].append(body.split(":", 1)[1].strip())
    close_target()
    return targets


def parse_accounts(text: str) -> List[str]:
    """Parse ``tgtadm --lld iscsi --mode account --op show`` ("Account list:" then one name per line)."""
    return [line.strip() for line in text.splitlines()[1:] if line.strip()] if text.startswith("Account list:") else []


def parse_portals(text: str) -> List[str]:
    """Parse ``tgtadm --lld iscsi --mode portal --op show`` ("Portal: 127.0.0.1:3260,1" per line)."""
    portals = []
    for line in text.splitlines():
        if line.startswith("Portal:"):
            portals.append(line.split(":", 1)[1].strip().rsplit(",", 1)[0])
    return portals
