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
* tgtd never shows passwords, so ``persist`` could not write ``incominguser``
  lines from the live state alone.  The backend keeps a grant record: which
  targets are ours, each one's LUN and, per initiator, its CHAP credentials.
  It lives *in* the config file (one comment line, see :mod:`.tgt_config`;
  mode 0600): one durable write, made only when the text changes, once per
  publish or unpublish.  A grant's secret is written before any command uses
  it; removals after the commands (a crash in between leaves a record entry
  that reconciliation removes).  The file is rendered from the record, not
  from tgtd (a grant written before its commands is in it, and so is a target
  tgtd lost until reconciliation restores it).  An older Basalt's JSON record
  at ``record_path`` is read while the config file carries none, then removed.
* One writer: targets, accounts, the record and the config file are shared
  by every volume, so every call holds :meth:`TgtBackend.transaction` (a
  :class:`~.hostlock.HostLock` on the record's ``.lock`` file: threads and
  processes).  Inside it, tgtd is listed once and the backend keeps that
  listing up to date with its own changes (no ``show`` after a change);
  accounts are never listed: ``--op new`` answering "already exists" tells.
* Read-only: ``--params readonly=1`` on the LUN; a WRITE then fails with
  CHECK CONDITION, sense key DATA PROTECT (7), ASC/ASCQ 0x27/0x00 WRITE
  PROTECTED, reads work.  ``--params`` is refused on ``--op new`` ("option
  '-P' is not allowed/supported"), so it is a second ``--op update`` call.
* Unit serial: ``--params scsi_sn=...`` (VPD page 0x80); LUN 0 of every
  target is tgt's own controller LUN, so the volume is LUN 1.
* Requests go over tgtd's own management socket (:mod:`.tgt_socket`), or through ``tgtadm`` when that
  socket's layout is not the known one.  Errors: tgtd's code with tgtadm's text for it ("this target
  already exists", "can't find the target", ...; tgtadm: rc 22, the text on stderr), see
  tests/unit/plugins/module_utils/iscsi_recorded/tgtadm_errors.tsv.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
from dataclasses import dataclass, replace
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from .atomicfile import sweep_temp_files, write_atomic
from .errors import CommandFailed, Conflict, InUse, InvalidRequest, NotFound, Precondition
from .hostlock import HostLock
from .iscsi_target import Chap, Export, Grant, TargetBackend, check_iqn, check_serial
from .runner import operand, run
from .tgt_config import (
    DATA_LUN,
    NO_ADDRESS,
    Record,
    chap_from_json,
    chap_to_json,
    passwords_of,
    record_doc,
    record_in,
    record_of,
    recorded_exports,
    render_config,
)
from .tgt_paths import DEFAULT_CONF, DEFAULT_RECORD
from .tgt_show import TgtLun, TgtTarget, is_name_acl, parse_targets
from .tgt_socket import LLD, TgtdRefused, TgtdSocket, socket_client
from .tgt_socket import TgtRequest as Req

TIMEOUT = 30.0


_ALREADY = ("already exists",)
_MISSING = ("can't find", "does not exist")


# -- the grant record --------------------------------------------------------


@dataclass
class _Session:
    """What one transaction knows: the record as read once, and tgtd as listed once then kept current."""

    record: Record
    on_disk: str  # the config file's text as read or last written ("": none)
    record_dirty: bool = False
    live: Optional[Dict[str, TgtTarget]] = None  # by IQN; None: not listed yet


# -- the backend -------------------------------------------------------------


class TgtBackend(TargetBackend):
    """:class:`TargetBackend` over tgtd.

    *control_port*: tgtd's ``-C`` (``None``: the system daemon, port 0).
    *conf_path*: the config file, which also carries the grant record (tgt's
    targets.conf includes /etc/tgt/conf.d/*.conf).  *record_path*: where an
    older Basalt kept the grant record (read if the config file carries none,
    then removed); the lock is ``record_path + ".lock"``.
    *base_iqn*: targets whose IQN starts with it count as ours even when
    missing from the record (a crash between the command and the record).
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
        self._lock = HostLock(record_path + ".lock")
        self._session: Optional[_Session] = None
        self._client: Optional[TgtdSocket] = None
        self._decided = False
        self._deciding = threading.Lock()

    # -- the transaction --

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._session is not None:  # re-entered by the holder
                yield
                return
            self._session = _Session(*self._read_record())
            try:
                yield
                self._flush()
            finally:
                self._session = None

    def _current(self) -> _Session:
        if self._session is None:  # a programming error: every caller holds the transaction
            raise RuntimeError("TgtBackend state is used outside its transaction")
        return self._session

    # -- commands --

    def _send(self, request: Req, what: str) -> str:
        """Send *request* to tgtd: over its socket, decided at first use (undecided while tgtd is unreachable:
        that call's tgtadm reports it), else with a tgtadm process.  tgtd's text, or CommandFailed."""
        with self._deciding:
            if not self._decided:
                with contextlib.suppress(CommandFailed):
                    self._client, self._decided = socket_client(self.control_port, self.timeout), True
        client = self._client
        if client is not None:
            return client.request(request, what)
        port = ["-C", str(self.control_port)] if self.control_port is not None else []
        return run(["tgtadm", *port, "--lld", LLD, *request.argv()], timeout=self.timeout, what=what,
                   secrets=request.secrets()).stdout

    def _tolerant(self, request: Req, what: str, ok: Tuple[str, ...]) -> bool:
        """Send; True if it changed something, False if tgtd said the wanted state already holds."""
        try:
            self._send(request, what)
        except CommandFailed as exc:
            if (isinstance(exc, TgtdRefused) or exc.rc == 22) and any(text in exc.stderr for text in ok):
                return False
            raise
        return True

    def targets(self) -> List[TgtTarget]:
        """tgtd's targets, listed now (every target, ours or not)."""
        return parse_targets(self._send(Req("target", "show"), "list tgt targets"))

    def ping(self) -> None:
        self._send(Req("system", "show"), "ask tgtd")

    def _live(self) -> Dict[str, TgtTarget]:
        session = self._current()
        if session.live is None:
            session.live = {t.iqn: t for t in self.targets()}
        return session.live

    def _put(self, target: TgtTarget) -> None:
        self._live()[target.iqn] = target

    def _bound_anywhere(self, user: str) -> bool:
        return any(user in t.incoming or user in t.outgoing for t in self._live().values())

    # -- record --

    def _read_record(self) -> Tuple[Record, str]:
        """The grant record and the config file's text (the record from the older JSON file if it has none)."""
        try:
            with open(self.conf_path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = ""
        try:
            doc = record_in(text)
        except ValueError as error:
            raise Precondition(f"{self.conf_path}: {error}") from None
        if doc is None:
            try:
                with open(self.record_path, encoding="utf-8") as handle:
                    doc = json.load(handle)
            except FileNotFoundError:
                doc = {}
        return record_of(doc), text

    def _record(self) -> Record:
        return self._current().record

    def _write_record(self) -> None:
        """Write the config file with the record now, if its text changed (a secret must be on disk before a
        command uses it); then drop the JSON record an older Basalt kept."""
        session = self._current()
        live = session.live or {}
        text = render_config(recorded_exports(session.record, lambda iqn: live[iqn].lun(DATA_LUN) if iqn in live
                                              else None), record_doc(session.record))
        if text != session.on_disk:
            os.makedirs(os.path.dirname(self.conf_path) or ".", exist_ok=True)
            write_atomic(self.conf_path, text.encode(), mode=0o600)
            session.on_disk = text
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path)  # superseded (a crash before this: the config file's record wins)
        session.record_dirty = False

    def sweep_interrupted_writes(self) -> List[str]:  # their temp files hold CHAP secrets
        with self.transaction():
            return sweep_temp_files(os.path.dirname(self.conf_path) or ".", of=os.path.basename(self.conf_path))

    def _write_later(self) -> None:
        """The record changed in a way no command depends on (a grant gone, a LUN noted): written at the end of
        the transaction, after the commands, or with the next write that must come first."""
        self._current().record_dirty = True

    def _flush(self) -> None:
        if self._current().record_dirty:
            self._write_record()

    def _owned(self, iqn: str, record: Record) -> bool:
        return iqn in record or bool(self.base_iqn and iqn.startswith(self.base_iqn + ":"))

    # -- TargetBackend --

    def ensure_export(self, target_iqn: str, device: str, serial: str, read_only: bool) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_serial(serial)
        operand(device, "device")
        with self.transaction():
            record = self._record()
            lun_doc = {"device": device, "serial": serial, "read_only": read_only}
            owned, recorded = self._owned(target_iqn, record), target_iqn in record
            entry = record.setdefault(target_iqn, {"grants": {}})
            if entry.get("lun") != lun_doc:
                if not recorded or "lun" in entry:  # else a record of version 1: noted with the next write
                    self._write_later()  # what the config file restores: written with the grant, or at the end
                entry["lun"] = lun_doc
            if not owned:
                self._write_record()  # ours before it exists
            changed = False
            current = self._live().get(target_iqn)
            if current is None:
                current = self._new_target(target_iqn)
                changed = True
            changed |= self._close_addresses(current)
            current = self._live()[target_iqn]
            tid = current.tid
            lun = current.lun(DATA_LUN)
            if lun is None:
                self._send(Req("logicalunit", "new", tid=tid, lun=DATA_LUN, backing_store=device, bstype="rdwr"),
                           f"add {device} to {target_iqn}")
                self._send(Req("logicalunit", "update", tid=tid, lun=DATA_LUN,
                               params=f"scsi_sn={serial},readonly={int(read_only)}"),
                           f"set serial and mode of {target_iqn}")
                self._put(replace(current, luns=(*current.luns,
                                                 TgtLun(DATA_LUN, "disk", serial, read_only, device, "rdwr"))))
                changed = True
            else:
                wanted = (os.path.realpath(device), serial, read_only)
                have = (os.path.realpath(lun.backing_store), lun.serial, lun.read_only)
                if wanted != have:
                    raise Conflict(f"target {target_iqn} exports {lun.backing_store} (serial {lun.serial}, read-only "
                                   f"{lun.read_only}), not {device} (serial {serial}, read-only {read_only})")
            return changed

    def _close_addresses(self, current: TgtTarget) -> bool:
        """No address ACL but :data:`NO_ADDRESS`, which admits nobody (made before any LUN or grant)."""
        tid, changed = current.tid, False
        for stray in current.acls:
            if not is_name_acl(stray) and stray != NO_ADDRESS:  # e.g. "ALL": would admit every host
                self._send(Req("target", "unbind", tid=tid, initiator_address=stray),
                           f"remove address ACL {stray} of {current.iqn}")
                current = replace(current, acls=tuple(a for a in current.acls if a != stray))
                changed = True
        if NO_ADDRESS not in current.acls:
            changed |= self._tolerant(Req("target", "bind", tid=tid, initiator_address=NO_ADDRESS),
                                      f"close address ACL of {current.iqn}", _ALREADY)
            current = replace(current, acls=(NO_ADDRESS, *current.acls))
        self._put(current)
        return changed

    def _new_target(self, target_iqn: str) -> TgtTarget:
        for _attempt in range(5):
            tid = max((t.tid for t in self._live().values()), default=0) + 1
            try:
                self._send(Req("target", "new", tid=tid, targetname=target_iqn), f"create target {target_iqn}")
            except CommandFailed as exc:
                if "already exists" not in exc.stderr:
                    raise
                self._current().live = None  # someone outside basalt took the tid (or made the target): list again
                existing = self._live().get(target_iqn)
                if existing is not None:
                    return existing
                continue
            made = TgtTarget(tid, target_iqn, "ready")
            self._put(made)
            return made
        raise Conflict(f"no free tid for {target_iqn} after 5 attempts")

    def ensure_grant(self, target_iqn: str, initiator_iqn: str, chap: Optional[Chap]) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        with self.transaction():
            current = self._live().get(target_iqn)
            if current is None:
                raise NotFound(f"target {target_iqn} does not exist")
            record = self._record()
            before = copy.deepcopy(record)
            entry = record.setdefault(target_iqn, {"grants": {}})
            for other, other_doc in entry["grants"].items():
                other_chap = chap_from_json(other_doc)
                if other == initiator_iqn:
                    continue
                if (other_chap is None) != (chap is None):
                    raise Conflict(f"tgt applies CHAP per target: {initiator_iqn} and {other} on {target_iqn} "
                                   "must both use CHAP or both not")
                if chap and other_chap and chap.mutual and other_chap.mutual \
                        and chap.mutual_user != other_chap.mutual_user:
                    raise Conflict(f"tgt allows one mutual CHAP user per target; {other} uses {other_chap.mutual_user}")
            old = chap_from_json(entry["grants"].get(initiator_iqn))
            if initiator_iqn not in entry["grants"] or old != chap or target_iqn not in before:
                entry["grants"][initiator_iqn] = chap_to_json(chap)
                self._write_record()  # passwords first: persist() and reconciliation must be able to restore them
            tid = current.tid
            changed = False
            try:
                if chap is not None:
                    changed |= self._ensure_account(chap.user, chap.password, before, (target_iqn, initiator_iqn))
                    if chap.user not in current.incoming:
                        self._send(Req("account", "bind", tid=tid, user=chap.user), f"bind CHAP user to {target_iqn}")
                        current = replace(current, incoming=(*current.incoming, chap.user))
                        changed = True
                    if chap.mutual_user is not None and chap.mutual_password is not None:
                        changed |= self._ensure_account(chap.mutual_user, chap.mutual_password, before,
                                                        (target_iqn, initiator_iqn))
                        if chap.mutual_user not in current.outgoing:
                            for stale in current.outgoing:
                                self._send(Req("account", "unbind", tid=tid, user=stale, outgoing=True),
                                           f"unbind old mutual CHAP user of {target_iqn}")
                            self._send(Req("account", "bind", tid=tid, user=chap.mutual_user, outgoing=True),
                                       f"bind mutual CHAP user to {target_iqn}")
                            current = replace(current, outgoing=(chap.mutual_user,))
                            changed = True
            except (Conflict, InvalidRequest):
                self._current().record = before  # the grant did not happen
                self._write_record()
                raise
            finally:
                self._put(current)
            changed |= self._drop_unused_accounts(target_iqn, old)
            current = self._live()[target_iqn]
            if initiator_iqn not in current.acls:
                self._send(Req("target", "bind", tid=tid, initiator_name=initiator_iqn),
                           f"allow {initiator_iqn} on {target_iqn}")
                self._put(replace(current, acls=(*current.acls, initiator_iqn)))
                changed = True
            return changed

    def _ensure_account(self, user: str, password: str, record: Record, owner: Tuple[str, str]) -> bool:
        """Create tgt account *user* with *password*; recreate it when the record says its password changed.

        *record* is the record before this grant.  No listing: an account bound to a target shows in the
        target listing, and ``--op new`` answers "already exists" for the others.
        """
        operand(user, "CHAP user")
        users = passwords_of(record, user)
        differing = [(t, i) for t, i, p in users if p != password]
        if users and not differing and self._bound_anywhere(user):
            return False
        try:
            self._new_account(user, password)
            return True
        except CommandFailed as exc:
            if "already exists" not in exc.stderr:
                raise
        if not users:
            raise Conflict(f"tgt account {user!r} exists but was not created by basalt")
        if not differing:
            return False
        if any((t, i) != owner for t, i in differing):
            raise Conflict(f"CHAP user {user!r} is in use on {differing[0][0]} with another secret")
        bound = [t for t in self._live().values() if user in t.incoming or user in t.outgoing]
        self._send(Req("account", "delete", user=user), f"replace CHAP user {user}")
        self._new_account(user, password)
        for target in bound:
            self._send(Req("account", "bind", tid=target.tid, user=user, outgoing=user in target.outgoing),
                       f"rebind CHAP user {user}")
        return True

    def _new_account(self, user: str, password: str) -> None:
        # The secret is in the request (tgtd has no other way; with tgtadm, on its command line): both
        # transports redact it from logs and errors.
        self._send(Req("account", "new", user=user, password=password), f"create CHAP user {user}")

    def _drop_unused_accounts(self, target_iqn: str, old: Optional[Chap]) -> bool:
        """Unbind *old*'s accounts from the target when no grant there uses them; delete orphaned accounts."""
        if old is None:
            return False
        record = self._record()
        in_use_here = set()
        for chap_doc in record.get(target_iqn, {"grants": {}})["grants"].values():
            chap = chap_from_json(chap_doc)
            if chap is not None:
                in_use_here.add(("in", chap.user))
                if chap.mutual_user:
                    in_use_here.add(("out", chap.mutual_user))
        changed = False
        candidates = [("in", old.user)] + ([("out", old.mutual_user)] if old.mutual_user else [])
        target = self._live().get(target_iqn)
        for kind, user in candidates:
            if target is None or (kind, user) in in_use_here:
                continue
            bound = target.incoming if kind == "in" else target.outgoing
            if user in bound:
                changed |= self._tolerant(Req("account", "unbind", tid=target.tid, user=user, outgoing=kind == "out"),
                                          f"unbind CHAP user {user}", _MISSING)
                target = replace(target, incoming=tuple(u for u in target.incoming if (kind, u) != ("in", user)),
                                 outgoing=tuple(u for u in target.outgoing if (kind, u) != ("out", user)))
                self._put(target)
        return self._delete_orphans(user for _kind, user in candidates) or changed

    def _delete_orphans(self, users: Iterable[str]) -> bool:
        """Delete the accounts among *users* that no grant in the record uses and no target binds."""
        changed = False
        for user in dict.fromkeys(users):
            if not passwords_of(self._record(), user) and not self._bound_anywhere(user):
                changed |= self._tolerant(Req("account", "delete", user=user), f"delete CHAP user {user}", _MISSING)
        return changed

    def revoke_grant(self, target_iqn: str, initiator_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        with self.transaction():
            had, old = self._forget_grant(target_iqn, initiator_iqn)
            current = self._live().get(target_iqn)
            if current is None:
                return self._delete_orphans(old.users() if old else ()) or had
            changed = had
            if initiator_iqn in current.acls:
                changed |= self._tolerant(Req("target", "unbind", tid=current.tid, initiator_name=initiator_iqn),
                                          f"disallow {initiator_iqn} on {target_iqn}", _MISSING)
                self._put(replace(current, acls=tuple(a for a in current.acls if a != initiator_iqn)))
            changed |= self._drop_unused_accounts(target_iqn, old)
            return self._close_sessions(target_iqn, initiator_iqn) or changed

    def _forget_grant(self, target_iqn: str, initiator_iqn: str) -> Tuple[bool, Optional[Chap]]:
        entry = self._record().get(target_iqn, {"grants": {}})
        had = initiator_iqn in entry["grants"]
        old = chap_from_json(entry["grants"].pop(initiator_iqn, None))
        if had:
            self._write_later()
        return had, old

    def _close_sessions(self, target_iqn: str, initiator_iqn: str) -> bool:
        """Drop the connections of *initiator_iqn*: a revoked node must not keep writing."""
        target = self._live()[target_iqn]
        changed = False
        for session in target.sessions:
            if session.initiator != initiator_iqn:
                continue
            for cid in session.connections:
                changed |= self._tolerant(Req("conn", "delete", tid=target.tid, sid=session.sid, cid=cid),
                                          f"close session of {session.initiator}", _MISSING)
        self._put(replace(target, sessions=tuple(s for s in target.sessions if s.initiator != initiator_iqn)))
        return changed

    def withdraw(self, target_iqn: str, initiator_iqn: str) -> Tuple[bool, bool]:
        """Revoke; when it was the target's last grant, delete the target outright (its ACLs, account
        bindings and sessions go with it) instead of unbinding each first."""
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        with self.transaction():
            current = self._live().get(target_iqn)
            others = set(current.initiator_acls if current else ()) | \
                set(self._record().get(target_iqn, {"grants": {}})["grants"])
            if others - {initiator_iqn}:
                return self.revoke_grant(target_iqn, initiator_iqn), False
            had, old = self._forget_grant(target_iqn, initiator_iqn)
            removed = self._remove(target_iqn)
            return self._delete_orphans(old.users() if old else ()) or removed or had, True

    def remove_export(self, target_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        with self.transaction():
            current = self._live().get(target_iqn)
            grants = (list(current.initiator_acls) if current else []) or \
                list(self._record().get(target_iqn, {"grants": {}})["grants"])
            if current is not None and grants:
                raise InUse(f"target {target_iqn} still grants access to {', '.join(sorted(grants))}")
            return self._remove(target_iqn)

    def _remove(self, target_iqn: str) -> bool:
        """Delete the target (``--force``: a node that was never unstaged may still have a session; its grant
        is gone already) and forget it; the accounts it bound stay (deleted when no grant uses them)."""
        current = self._live().pop(target_iqn, None)
        forgotten = self._record().pop(target_iqn, None) is not None
        if forgotten:
            self._write_later()
        if current is None:
            return forgotten
        self._tolerant(Req("target", "delete", force=True, tid=current.tid), f"delete target {target_iqn}", _MISSING)
        return True

    def exports(self) -> List[Export]:
        with self.transaction():
            return [self._export_of(t) for t in self._live().values() if self._owned(t.iqn, self._record())]

    def export(self, target_iqn: str) -> Optional[Export]:
        with self.transaction():
            target = self._live().get(target_iqn)
            return self._export_of(target) if target and self._owned(target_iqn, self._record()) else None

    def _export_of(self, target: TgtTarget) -> Export:
        lun = target.lun(DATA_LUN)
        grants_doc = self._record().get(target.iqn, {"grants": {}})["grants"]
        grants = tuple(Grant(i, chap_from_json(grants_doc.get(i))) for i in target.initiator_acls)
        return Export(target_iqn=target.iqn, lun=DATA_LUN, serial=lun.serial if lun else "",
                      device=lun.backing_store if lun else "", read_only=lun.read_only if lun else False,
                      grants=grants)

    def saved_grants(self) -> Dict[str, Dict[str, Optional[Chap]]]:
        """The grant record (it outlives tgtd, which forgets everything when it stops)."""
        with self.transaction():
            return {iqn: {initiator: chap_from_json(doc) for initiator, doc in entry["grants"].items()}
                    for iqn, entry in self._record().items()}

    def persist(self) -> None:
        """Make :attr:`conf_path` (mode 0600: it holds CHAP secrets) hold the record and what it exports.

        Refuses (Precondition) when a live target of ours has a CHAP account
        whose secret the record does not hold: the file would restore the
        target without it, i.e. weaker than it runs now.
        """
        with self.transaction():
            record = self._record()
            for target in self._live().values():
                if not self._owned(target.iqn, record):
                    continue
                for user in (*target.incoming, *target.outgoing):
                    if not passwords_of(record, user):
                        raise Precondition(f"cannot persist {target.iqn}: the secret of CHAP user {user!r} is not "
                                           f"in {self.conf_path}")
            self._write_record()  # a no-op when this call's record write already holds everything
