"""The tgt config file Basalt writes (tgt-admin's syntax; tgt.service loads it at boot).

Each target carries the address ACL :data:`NO_ADDRESS` (``255.255.255.255/32``),
which no TCP peer can have: tgt-admin binds ``-I ALL`` to every target whose
config has no ``initiator-address`` line, and that would open every volume
to every host after a reboot.  See :mod:`.tgt` for why the rest looks as it does.

The file also carries Basalt's grant record (which targets are ours, each
one's LUN, and per initiator its CHAP credentials: tgtd never shows secrets)
on one comment line, so that a publish or unpublish makes one durable write
for both: the record and the configuration derived from it can never disagree.
The record is base64url-encoded JSON: tgt-admin's parser (Config::General)
reads ``/*`` and ``*/`` as C comments even inside a ``#`` line, and those may
occur in a CHAP secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import InvalidRequest
from .iscsi_target import Chap, Export, Grant
from .tgt_show import TgtLun

NO_ADDRESS = "255.255.255.255/32"


RECORD_MARK = "# basalt-record "
RECORD_VERSION = 2  # 1: a JSON file of its own, without LUNs
DATA_LUN = 1  # LUN 0 of every target is tgt's own controller LUN

#: target IQN -> {"grants": {initiator IQN: CHAP as JSON or None}, "lun": {"device", "serial", "read_only"}}
Record = Dict[str, Dict[str, Any]]


def chap_to_json(chap: Optional[Chap]) -> Optional[Dict[str, Optional[str]]]:
    if chap is None:
        return None
    return {"user": chap.user, "password": chap.password,
            "mutual_user": chap.mutual_user, "mutual_password": chap.mutual_password}


def chap_from_json(doc: Optional[Dict[str, Any]]) -> Optional[Chap]:
    if not doc:
        return None
    return Chap(doc["user"], doc["password"], doc.get("mutual_user"), doc.get("mutual_password"))


def record_of(doc: Any) -> Record:
    """The record a document holds (this file's line, or the JSON file of record version 1)."""
    targets = doc.get("targets", {}) if isinstance(doc, dict) else {}
    record: Record = {}
    for iqn, entry in targets.items():
        record[iqn] = {"grants": dict(entry.get("grants", {}))}
        if entry.get("lun"):
            record[iqn]["lun"] = dict(entry["lun"])
    return record


def passwords_of(record: Record, user: str) -> List[Tuple[str, str, str]]:
    """Every (target, initiator, password) *record* holds for CHAP user *user*."""
    found = []
    for iqn, entry in record.items():
        for initiator, chap in entry["grants"].items():
            if not chap:
                continue
            if chap.get("user") == user:
                found.append((iqn, initiator, chap["password"]))
            if chap.get("mutual_user") == user:
                found.append((iqn, initiator, chap["mutual_password"]))
    return found


def record_doc(record: Record) -> Dict[str, Any]:
    return {"version": RECORD_VERSION, "targets": record}


def recorded_exports(record: Record, live_lun: Callable[[str], Optional[TgtLun]]) -> List[Export]:
    """The exports *record* holds, for the config file.  A record of version 1 has no LUNs: taken from
    *live_lun* (tgtd as listed, or None) and noted in *record*, else left out until a call on it notes it."""
    found = []
    for iqn, entry in sorted(record.items()):
        lun = entry.get("lun")
        live = live_lun(iqn) if lun is None else None
        if live is not None:
            lun = entry["lun"] = {"device": live.backing_store, "serial": live.serial, "read_only": live.read_only}
        if lun is None:
            continue
        grants = tuple(Grant(i, chap_from_json(doc)) for i, doc in sorted(entry["grants"].items()))
        found.append(Export(target_iqn=iqn, lun=DATA_LUN, serial=lun["serial"], device=lun["device"],
                            read_only=lun["read_only"], grants=grants))
    return found


def record_line(record: Dict[str, Any]) -> str:
    """The comment line that carries *record* (the grant record document) in the config file."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return RECORD_MARK + base64.urlsafe_b64encode(text.encode()).decode()


def record_in(config: str) -> Optional[Dict[str, Any]]:
    """The grant record a config file carries; None when it carries none (written by an older Basalt)."""
    for line in config.splitlines():
        if line.startswith(RECORD_MARK):
            try:
                doc = json.loads(base64.urlsafe_b64decode(line[len(RECORD_MARK):].strip()))
            except (binascii.Error, ValueError) as error:
                raise ValueError(f"the grant record in the tgt config file is damaged: {error}") from None
            if not isinstance(doc, dict):
                raise ValueError("the grant record in the tgt config file is not a JSON object")
            return doc
    return None


def render_config(exports: Sequence[Export], record: Optional[Dict[str, Any]] = None) -> str:
    """tgt-admin's config syntax for *exports* (and the line carrying *record*, if given); see the module
    docstring for the NO_ADDRESS line."""
    lines = [
        "# Written by basalt (basalt_core.tgt.TgtBackend.persist); do not edit: it is rewritten.",
        "# Loaded at boot by tgt.service (tgt-admin -e -c /etc/tgt/targets.conf includes conf.d/*.conf).",
        f"# initiator-address {NO_ADDRESS} matches no host; it stops tgt-admin from binding ALL.",
        "",
    ]
    if record is not None:
        lines += [record_line(record), ""]
    for item in exports:
        if not item.device:
            continue  # a target left half-made by a crash: nothing to restore (reconciliation completes it)
        for value in (item.target_iqn, item.device, item.serial):
            if not value or any(c.isspace() or c in "<>#\"" for c in value):
                raise InvalidRequest(f"{value!r} cannot be written to a tgt config file")
        lines.append(f"<target {item.target_iqn}>")
        lines.append(f"    <backing-store {item.device}>")
        lines.append(f"        lun {item.lun}")
        lines.append(f"        scsi_sn {item.serial}")
        lines.append(f"        readonly {int(item.read_only)}")
        lines.append("    </backing-store>")
        lines.append(f"    initiator-address {NO_ADDRESS}")
        mutual: Optional[Chap] = None
        incoming: Dict[str, str] = {}
        for grant in item.grants:
            lines.append(f"    initiator-name {grant.initiator_iqn}")
            if grant.chap is not None:
                incoming[grant.chap.user] = grant.chap.password
                if grant.chap.mutual:
                    mutual = grant.chap
        for user, password in incoming.items():
            lines.append(f"    incominguser {user} {password}")
        if mutual is not None:
            lines.append(f"    outgoinguser {mutual.mutual_user} {mutual.mutual_password}")
        lines.append("</target>")
        lines.append("")
    return "\n".join(lines)
