"""The iSCSI target through the userspace daemon ``tgtd`` and ``tgtadm --lld iscsi`` (package tgt 1.0.85).

Why it looks the way it does (all measured against tgt 1:1.0.85-1+deb12u1):

* ACLs: a login passes when the *address* ACL **or** the *initiator-name*
  ACL matches, and a target without any ACL admits nobody.  We bind only
  initiator names.  But ``tgt-admin`` (which the tgt service runs at boot on
  /etc/tgt/targets.conf, including conf.d/*.conf) binds ``-I ALL`` to every
  target whose config has no ``initiator-address`` line — which would open
  every volume to every host after a reboot.  So each target, live and in the
  config file, carries the address ACL ``255.255.255.255/32`` (:data:`NO_ADDRESS`),
  which no TCP peer can have: it matches nothing and keeps tgt-admin from
  adding ALL.
* CHAP: tgt accounts are global (one password per user name) and bound to
  *targets*, not to initiators: any incoming account bound to a target works
  for any initiator its ACL admits, and a target has at most one outgoing
  (mutual) account.  Once an incoming account is bound, every login to that
  target needs CHAP.  So on one target all grants use CHAP or none does, and
  all mutual grants share one mutual user (:class:`~.errors.Conflict` otherwise).
* tgtd never shows passwords (``--mode account --op show`` lists names), so
  ``persist`` could not write ``incominguser`` lines from the live state
  alone.  The backend keeps a grant record (JSON, mode 0600, written
  atomically on each change): which targets are ours and, per initiator,
  its CHAP credentials.  It is the source of the passwords in the config
  file and of the initiator-to-account mapping used on revoke.
* Read-only: ``--params readonly=1`` on the LUN; a WRITE then fails with
  CHECK CONDITION, sense key DATA PROTECT (7), ASC/ASCQ 0x27/0x00 WRITE
  PROTECTED, reads work.  ``--params`` is refused on ``--op new`` ("option
  '-P' is not allowed/supported"), so it is a second ``--op update`` call.
* Unit serial: ``--params scsi_sn=...`` (VPD page 0x80); LUN 0 of every
  target is tgt's own controller LUN, so the volume is LUN 1.
* Errors are rc 22 with a text on stderr ("this target already exists",
  "can't find the target", "this target is still active", ...), see
  tests/unit/iscsi_recorded/tgtadm_errors.txt.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .atomicfile import write_atomic
from .errors import CommandFailed, Conflict, InUse, InvalidRequest, NotFound, Precondition
from .iscsi_target import Chap, Export, Grant, TargetBackend, check_iqn, check_serial
from .runner import operand, run

DEFAULT_CONF = "/etc/tgt/conf.d/basalt.conf"
DEFAULT_RECORD = "/var/lib/basalt/tgt-grants.json"
NO_ADDRESS = "255.255.255.255/32"
DATA_LUN = 1
TIMEOUT = 30.0

_ALREADY = ("already exists",)
_MISSING = ("can't find", "does not exist")


# -- the parsed state of tgtd ----------------------------------------------


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
        return tuple(a for a in self.acls if _is_name_acl(a))


def _is_name_acl(entry: str) -> bool:
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


# -- the grant record --------------------------------------------------------


def _chap_to_json(chap: Optional[Chap]) -> Optional[Dict[str, Optional[str]]]:
    if chap is None:
        return None
    return {"user": chap.user, "password": chap.password,
            "mutual_user": chap.mutual_user, "mutual_password": chap.mutual_password}


def _chap_from_json(doc: Optional[Dict[str, Any]]) -> Optional[Chap]:
    if not doc:
        return None
    return Chap(doc["user"], doc["password"], doc.get("mutual_user"), doc.get("mutual_password"))


# -- the backend -------------------------------------------------------------


class TgtBackend(TargetBackend):
    """:class:`TargetBackend` over tgtd.

    *control_port*: tgtd's ``-C`` (``None``: the system daemon, port 0).
    *conf_path*: the config file ``persist`` writes (tgt's targets.conf
    includes /etc/tgt/conf.d/*.conf).  *record_path*: the grant record (see
    the module docstring).  *base_iqn*: targets whose IQN starts with it
    count as ours even when missing from the record (crash between record and
    tgtadm).
    """

    lun = DATA_LUN

    def __init__(
        self,
        *,
        control_port: Optional[int] = None,
        conf_path: str = DEFAULT_CONF,
        record_path: str = DEFAULT_RECORD,
        base_iqn: Optional[str] = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.control_port = control_port
        self.conf_path = conf_path
        self.record_path = record_path
        self.base_iqn = base_iqn
        self.timeout = timeout

    # -- commands --

    def _argv(self, *args: str) -> List[str]:
        argv = ["tgtadm"]
        if self.control_port is not None:
            argv += ["-C", str(self.control_port)]
        return [*argv, "--lld", "iscsi", *args]

    def _run(self, *args: str, what: str, secrets: Iterable[str] = (), check: bool = True) -> Any:
        return run(self._argv(*args), timeout=self.timeout, what=what, secrets=secrets, check=check)

    def _tolerant(self, args: Sequence[str], what: str, ok: Tuple[str, ...], secrets: Iterable[str] = ()) -> bool:
        """Run; True if it changed something, False if tgtadm said the wanted state already holds."""
        try:
            self._run(*args, what=what, secrets=secrets)
        except CommandFailed as exc:
            if exc.rc == 22 and any(text in exc.stderr for text in ok):
                return False
            raise
        return True

    def targets(self) -> List[TgtTarget]:
        result = self._run("--mode", "target", "--op", "show", what="list tgt targets")
        return parse_targets(result.stdout)

    def target(self, target_iqn: str) -> Optional[TgtTarget]:
        for item in self.targets():
            if item.iqn == target_iqn:
                return item
        return None

    def accounts(self) -> List[str]:
        return parse_accounts(self._run("--mode", "account", "--op", "show", what="list tgt accounts").stdout)

    def portals(self) -> List[str]:
        return parse_portals(self._run("--mode", "portal", "--op", "show", what="list tgt portals").stdout)

    # -- record --

    def _load(self) -> Dict[str, Dict[str, Any]]:
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return {}
        targets = doc.get("targets", {}) if isinstance(doc, dict) else {}
        return {iqn: {"grants": dict(entry.get("grants", {}))} for iqn, entry in targets.items()}

    def _save(self, record: Dict[str, Dict[str, Any]]) -> None:
        os.makedirs(os.path.dirname(self.record_path) or ".", mode=0o700, exist_ok=True)
        doc = {"version": 1, "targets": record}
        write_atomic(self.record_path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)

    def _owned(self, iqn: str, record: Dict[str, Dict[str, Any]]) -> bool:
        return iqn in record or bool(self.base_iqn and iqn.startswith(self.base_iqn + ":"))

    @staticmethod
    def _password_of(record: Dict[str, Dict[str, Any]], user: str) -> "List[Tuple[str, str, str]]":
        """Every (target, initiator, password) the record holds for CHAP user *user*."""
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

    # -- TargetBackend --

    def ensure_export(self, target_iqn: str, device: str, serial: str, read_only: bool) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_serial(serial)
        operand(device, "device")
        record = self._load()
        if target_iqn not in record:
            record[target_iqn] = {"grants": {}}
            self._save(record)
        changed = False
        current = self.target(target_iqn)
        if current is None:
            tid = self._new_target(target_iqn)
            changed = True
        else:
            tid = current.tid
        lun = current.lun(DATA_LUN) if current else None
        if lun is None:
            self._run("--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", str(DATA_LUN),
                      "--backing-store", device, "--bstype", "rdwr", what=f"add {device} to {target_iqn}")
            self._run("--mode", "logicalunit", "--op", "update", "--tid", str(tid), "--lun", str(DATA_LUN),
                      "--params", f"scsi_sn={serial},readonly={int(read_only)}",
                      what=f"set serial and mode of {target_iqn}")
            changed = True
        else:
            wanted = (os.path.realpath(device), serial, read_only)
            have = (os.path.realpath(lun.backing_store), lun.serial, lun.read_only)
            if wanted != have:
                raise Conflict(f"target {target_iqn} exports {lun.backing_store} (serial {lun.serial}, "
                               f"read-only {lun.read_only}), not {device} (serial {serial}, read-only {read_only})")
        for stray in (current.acls if current else ()):
            if not _is_name_acl(stray) and stray != NO_ADDRESS:  # e.g. "ALL": would admit every host
                self._run("--mode", "target", "--op", "unbind", "--tid", str(tid), "--initiator-address", stray,
                          what=f"remove address ACL {stray} of {target_iqn}")
                changed = True
        if current is None or NO_ADDRESS not in current.acls:
            changed |= self._tolerant(["--mode", "target", "--op", "bind", "--tid", str(tid),
                                       "--initiator-address", NO_ADDRESS],
                                      f"close address ACL of {target_iqn}", _ALREADY)
        return changed

    def _new_target(self, target_iqn: str) -> int:
        for _attempt in range(5):
            tids = [t.tid for t in self.targets()]
            tid = max(tids, default=0) + 1
            try:
                self._run("--mode", "target", "--op", "new", "--tid", str(tid), "--targetname", target_iqn,
                          what=f"create target {target_iqn}")
                return tid
            except CommandFailed as exc:
                if "already exists" not in exc.stderr:
                    raise
                existing = self.target(target_iqn)
                if existing is not None:  # someone else created it meanwhile
                    return existing.tid
        raise Conflict(f"no free tid for {target_iqn} after 5 attempts")

    def ensure_grant(self, target_iqn: str, initiator_iqn: str, chap: Optional[Chap]) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        current = self.target(target_iqn)
        if current is None:
            raise NotFound(f"target {target_iqn} does not exist")
        record = self._load()
        entry = record.setdefault(target_iqn, {"grants": {}})
        others = {i: _chap_from_json(c) for i, c in entry["grants"].items() if i != initiator_iqn}
        for other, other_chap in others.items():
            if (other_chap is None) != (chap is None):
                raise Conflict(f"tgt applies CHAP per target: {initiator_iqn} and {other} on {target_iqn} "
                               "must both use CHAP or both not")
            if chap and other_chap and chap.mutual and other_chap.mutual and chap.mutual_user != other_chap.mutual_user:
                raise Conflict(f"tgt allows one mutual CHAP user per target; {other} uses {other_chap.mutual_user}")
        old = _chap_from_json(entry["grants"].get(initiator_iqn))
        before = copy.deepcopy(record)
        entry["grants"][initiator_iqn] = _chap_to_json(chap)
        self._save(record)  # passwords first: persist() must be able to write them
        try:
            changed = False
            tid = str(current.tid)
            if chap is not None:
                changed |= self._ensure_account(chap.user, chap.password, before, (target_iqn, initiator_iqn))
                if chap.user not in current.incoming:
                    self._run("--mode", "account", "--op", "bind", "--tid", tid, "--user", chap.user,
                              what=f"bind CHAP user to {target_iqn}")
                    changed = True
                if chap.mutual_user is not None and chap.mutual_password is not None:
                    changed |= self._ensure_account(chap.mutual_user, chap.mutual_password, before,
                                                    (target_iqn, initiator_iqn))
                    if chap.mutual_user not in current.outgoing:
                        for stale in current.outgoing:
                            self._run("--mode", "account", "--op", "unbind", "--tid", tid, "--user", stale,
                                      "--outgoing", what=f"unbind old mutual CHAP user of {target_iqn}")
                        self._run("--mode", "account", "--op", "bind", "--tid", tid, "--user", chap.mutual_user,
                                  "--outgoing", what=f"bind mutual CHAP user to {target_iqn}")
                        changed = True
        except (Conflict, InvalidRequest):
            self._save(before)  # the grant did not happen
            raise
        changed |= self._drop_unused_accounts(current, old, record, target_iqn)
        if initiator_iqn not in current.acls:
            self._run("--mode", "target", "--op", "bind", "--tid", tid, "--initiator-name", initiator_iqn,
                      what=f"allow {initiator_iqn} on {target_iqn}")
            changed = True
        return changed

    def _ensure_account(self, user: str, password: str, record: Dict[str, Dict[str, Any]],
                        owner: Tuple[str, str]) -> bool:
        """Create tgt account *user* with *password*; recreate it when the record says its password changed."""
        operand(user, "CHAP user")
        users = self._password_of(record, user)
        if user in self.accounts():
            differing = [(t, i) for t, i, p in users if p != password]
            if not differing:
                if users:
                    return False
                raise Conflict(f"tgt account {user!r} exists but was not created by basalt")
            if any((t, i) != owner for t, i in differing):
                raise Conflict(f"CHAP user {user!r} is in use on {differing[0][0]} with another secret")
            bound = [(t.tid, t.outgoing) for t in self.targets() if user in t.incoming or user in t.outgoing]
            self._run("--mode", "account", "--op", "delete", "--user", user, what=f"replace CHAP user {user}")
            self._new_account(user, password)
            for tid, outgoing in bound:
                extra = ["--outgoing"] if user in outgoing else []
                self._run("--mode", "account", "--op", "bind", "--tid", str(tid), "--user", user, *extra,
                          what=f"rebind CHAP user {user}")
            return True
        self._new_account(user, password)
        return True

    def _new_account(self, user: str, password: str) -> None:
        # The secret is on tgtadm's command line (tgtadm has no other way);
        # run() redacts it from logs and errors.
        self._run("--mode", "account", "--op", "new", "--user", user, "--password", password,
                  what=f"create CHAP user {user}", secrets=[password])

    def _drop_unused_accounts(self, target: TgtTarget, old: Optional[Chap], record: Dict[str, Dict[str, Any]],
                              target_iqn: str) -> bool:
        """Unbind *old*'s accounts from *target* when no grant in *record* uses them; delete orphaned accounts."""
        if old is None:
            return False
        in_use_here = set()
        for chap_doc in record.get(target_iqn, {"grants": {}})["grants"].values():
            chap = _chap_from_json(chap_doc)
            if chap is not None:
                in_use_here.add(("in", chap.user))
                if chap.mutual_user:
                    in_use_here.add(("out", chap.mutual_user))
        changed = False
        candidates = [("in", old.user)] + ([("out", old.mutual_user)] if old.mutual_user else [])
        for kind, user in candidates:
            if (kind, user) in in_use_here:
                continue
            bound = target.incoming if kind == "in" else target.outgoing
            if user in bound:
                extra = ["--outgoing"] if kind == "out" else []
                changed |= self._tolerant(["--mode", "account", "--op", "unbind", "--tid", str(target.tid),
                                           "--user", user, *extra], f"unbind CHAP user {user}", _MISSING)
        for _kind, user in candidates:
            if not self._password_of(record, user) and user in self.accounts():
                if not any(user in t.incoming or user in t.outgoing for t in self.targets()):
                    changed |= self._tolerant(["--mode", "account", "--op", "delete", "--user", user],
                                              f"delete CHAP user {user}", _MISSING)
        return changed

    def revoke_grant(self, target_iqn: str, initiator_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        record = self._load()
        entry = record.get(target_iqn, {"grants": {}})
        had = initiator_iqn in entry["grants"]
        old = _chap_from_json(entry["grants"].pop(initiator_iqn, None))
        if had:
            self._save(record)
        current = self.target(target_iqn)
        if current is None:
            return had
        changed = had
        if initiator_iqn in current.acls:
            changed |= self._tolerant(["--mode", "target", "--op", "unbind", "--tid", str(current.tid),
                                       "--initiator-name", initiator_iqn],
                                      f"disallow {initiator_iqn} on {target_iqn}", _MISSING)
        changed |= self._drop_unused_accounts(current, old, record, target_iqn)
        changed |= self._close_sessions(current, initiator_iqn)
        return changed

    def _close_sessions(self, target: TgtTarget, initiator_iqn: Optional[str]) -> bool:
        """Drop the connections of *initiator_iqn* (all when None): a revoked node must not keep writing."""
        changed = False
        for session in target.sessions:
            if initiator_iqn is not None and session.initiator != initiator_iqn:
                continue
            for cid in session.connections:
                changed |= self._tolerant(["--mode", "conn", "--op", "delete", "--tid", str(target.tid),
                                           "--sid", str(session.sid), "--cid", str(cid)],
                                          f"close session of {session.initiator}", _MISSING)
        return changed

    def remove_export(self, target_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        record = self._load()
        current = self.target(target_iqn)
        if current is None:
            if target_iqn in record:
                del record[target_iqn]
                self._save(record)
                return True
            return False
        grants = list(current.initiator_acls) or list(record.get(target_iqn, {"grants": {}})["grants"])
        if grants:
            raise InUse(f"target {target_iqn} still grants access to {', '.join(sorted(grants))}")
        for user in current.incoming:
            self._tolerant(["--mode", "account", "--op", "unbind", "--tid", str(current.tid), "--user", user],
                           f"unbind CHAP user {user}", _MISSING)
        for user in current.outgoing:
            self._tolerant(["--mode", "account", "--op", "unbind", "--tid", str(current.tid), "--user", user,
                            "--outgoing"], f"unbind CHAP user {user}", _MISSING)
        # --force: sessions may remain (a node that was never unstaged); its grant is gone already.
        self._tolerant(["--mode", "target", "--op", "delete", "--force", "--tid", str(current.tid)],
                       f"delete target {target_iqn}", _MISSING)
        record.pop(target_iqn, None)
        self._save(record)
        return True

    def exports(self) -> List[Export]:
        record = self._load()
        portals = tuple(self.portals())
        found = []
        for target in self.targets():
            if not self._owned(target.iqn, record):
                continue
            lun = target.lun(DATA_LUN)
            grants_doc = record.get(target.iqn, {"grants": {}})["grants"]
            grants = tuple(Grant(i, _chap_from_json(grants_doc.get(i))) for i in target.initiator_acls)
            found.append(Export(
                target_iqn=target.iqn,
                lun=DATA_LUN,
                serial=lun.serial if lun else "",
                device=lun.backing_store if lun else "",
                read_only=lun.read_only if lun else False,
                portals=portals,
                grants=grants,
            ))
        return found

    def saved_grants(self) -> Dict[str, Dict[str, Optional[Chap]]]:
        """The grant record (it outlives tgtd, which forgets everything when it stops)."""
        return {iqn: {initiator: _chap_from_json(doc) for initiator, doc in entry["grants"].items()}
                for iqn, entry in self._load().items()}

    def persist(self) -> None:
        """Write :attr:`conf_path` (mode 0600: it holds CHAP secrets) from the live state and the record.

        Refuses (Precondition) when a live target of ours has a CHAP account
        whose secret the record does not hold: the file would restore the
        target without it, i.e. weaker than it runs now.
        """
        record = self._load()
        for target in self.targets():
            if not self._owned(target.iqn, record):
                continue
            for user in (*target.incoming, *target.outgoing):
                if not self._password_of(record, user):
                    raise Precondition(f"cannot persist {target.iqn}: the secret of CHAP user {user!r} is not in "
                                       f"{self.record_path}")
        write_atomic(self.conf_path, render_config(self.exports()).encode(), mode=0o600)


# -- the config file -----------------------------------------------------------


def render_config(exports: Sequence[Export]) -> str:
    """tgt-admin's config syntax for *exports*; see the module docstring for the NO_ADDRESS line."""
    lines = [
        "# Written by basalt (basalt_core.tgt.TgtBackend.persist); do not edit: it is rewritten.",
        "# Loaded at boot by tgt.service (tgt-admin -e -c /etc/tgt/targets.conf includes conf.d/*.conf).",
        f"# initiator-address {NO_ADDRESS} matches no host; it stops tgt-admin from binding ALL.",
        "",
    ]
    for item in exports:
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


def load_config(path: str, *, control_port: Optional[int] = None, force: bool = False,
                secrets: Iterable[str] = (), timeout: float = 120.0) -> None:
    """Apply a config file to a running tgtd with ``tgt-admin -e`` (what tgt.service does at boot).

    *force* (``-f``) skips tgt-admin's "device in use" check (it runs ``lsof``
    on each backing store and skips the ones another process, e.g. another
    tgtd, holds open).  Not verbose: tgt-admin -v prints the tgtadm commands,
    passwords included.
    """
    argv = ["tgt-admin"]
    if control_port is not None:
        argv += ["-C", str(control_port)]
    argv += ["-c", operand(path, "config file"), "-e"]
    if force:
        argv.append("-f")
    result = run(argv, timeout=timeout, what=f"load {path}", secrets=secrets)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("# Skipping")]
    if skipped:
        raise CommandFailed(result.argv, 0, "; ".join(skipped), f"load {path}")


MAX_CONTROL_PORT = 32767  # tgtd: "-C argument value '32768' out of range"
SOCKET_DIR = "/var/run/tgtd"


def control_port_in_use(control_port: int) -> bool:
    """Whether a tgtd answers on control port *control_port*."""
    result = run(["tgtadm", "-C", str(control_port), "--mode", "system", "--op", "show"], check=False, timeout=5,
                 what="probe tgtd")
    return result.rc == 0


def start_private_tgtd(control_port: int, portal: str, *, wait: float = 5.0) -> "subprocess.Popen[bytes]":
    """Start ``tgtd -f -C control_port --iscsi portal=PORTAL`` in its own session; wait until it answers.

    For tests and for checking a config file in a throw-away daemon; stop it
    with :func:`stop_private_tgtd` (tgtd ignores SIGTERM).  *control_port*
    must be 1..32767 and not in use (see :func:`control_port_in_use`).
    """
    if not 0 < control_port <= MAX_CONTROL_PORT:
        raise InvalidRequest(f"tgtd control port {control_port} is not in 1..{MAX_CONTROL_PORT}")
    # stderr to a file, never a pipe: tgtd -f logs there for its whole life and would block on a full pipe.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control_port), "--iscsi", f"portal={portal}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    log.close()  # the child keeps its copy
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if control_port_in_use(control_port) and parse_portals(
                run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", "--mode", "portal", "--op", "show"],
                    check=False, timeout=5).stdout):
            return proc
        if proc.poll() is not None:
            _remove_socket(control_port)
            raise CommandFailed(["tgtd", "-C", str(control_port)], proc.returncode,
                                "exited at start (control port in use or out of range?)", "start tgtd")
        time.sleep(0.05)
    stop_private_tgtd(control_port, proc)
    raise CommandFailed(["tgtd", "-C", str(control_port)], -1, f"no answer within {wait:g}s", "start tgtd")


def _remove_socket(control_port: int) -> None:
    """tgtd leaves /var/run/tgtd/socket.N and socket.N.lock behind; remove ours once it has exited."""
    for name in (f"socket.{control_port}", f"socket.{control_port}.lock"):
        try:
            os.unlink(os.path.join(SOCKET_DIR, name))
        except FileNotFoundError:
            pass


def stop_private_tgtd(control_port: int, proc: "Optional[subprocess.Popen[bytes]]" = None) -> None:
    """Delete every target (``--force``) then the system (``--mode system --op delete``), as tgt.service does."""
    backend = TgtBackend(control_port=control_port)
    try:
        for target in backend.targets():
            run(backend._argv("--mode", "target", "--op", "delete", "--force", "--tid", str(target.tid)),
                check=False, timeout=10, what="delete target")
        run(["tgtadm", "-C", str(control_port), "--mode", "system", "--op", "delete"], check=False, timeout=10)
    except CommandFailed:
        pass
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        _remove_socket(control_port)
