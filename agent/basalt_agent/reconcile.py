"""A storage host's iSCSI exports made to agree with the volumes' publication records, at start.

The records (ControllerPublish writes one per node into the volume's record,
after the export) say what should be exported; the target backend says what
is.  They disagree after tgtd restarted without loading its config (exports
missing), after a crash between an export and its record, or after an
interrupted unpublish (exports nobody wants).  :func:`plan` turns both sides
into actions, as data; :func:`reconcile` applies them one target at a time,
under the volume's lock, re-planning each target from its volume's record as
it is then, so RPCs served meanwhile are never undone.  The target service is
listed once and the pool once: linear in the number of exports.

Only targets under the configured base IQN are considered: anything else on
the target service is not ours and is never touched.  CHAP secrets are never
in the records: a missing grant is re-created with the credentials the
backend saved (:meth:`~basalt_core.iscsi_target.TargetBackend.saved_grants`),
or left out and logged when it has none.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from basalt_core.iscsi_target import Chap, Export, serial_for, target_iqn_for
from basalt_core.model import Volume

from .locks import ObjectLocks
from .proto import csi_pb2
from .publishing import IscsiPublishing
from .validation import READ_ONLY_MODES

log = logging.getLogger("basalt.reconcile")

EXPORT = "export"
GRANT = "grant"
REVOKE = "revoke"
REMOVE = "remove"
SKIP = "skip"

SavedGrants = Mapping[str, Mapping[str, Optional[Chap]]]


@dataclass(frozen=True)
class Wanted:
    """One publication to another node, as a volume's record holds it."""

    volume_id: str
    target_iqn: str
    node_id: str
    initiator_iqn: Optional[str]  # None: the node has no known initiator IQN (any more)
    read_only: bool


@dataclass(frozen=True)
class Action:
    kind: str
    target_iqn: str
    volume_id: str = ""
    initiator_iqn: str = ""
    chap: Optional[Chap] = None
    read_only: bool = False
    initiators: Tuple[str, ...] = ()  # REMOVE: the grants to revoke first
    reason: str = ""


def plan(base_iqn: str, live: Sequence[Export], saved: SavedGrants, wanted: Sequence[Wanted],
         devices: Optional[Mapping[str, Optional[str]]] = None) -> List[Action]:
    """The actions that make *live* (and the backend's *saved* grants) match *wanted*, target by target.

    *devices*: per live target, the device its volume is at now (None: not attached), compared with
    the LUN's backing store (both resolved); targets not in it are not checked.
    """
    prefix = base_iqn + ":"
    live_by = {e.target_iqn: e for e in live if e.target_iqn.startswith(prefix)}
    saved_by = {t: dict(g) for t, g in saved.items() if t.startswith(prefix)}
    wanted_by: Dict[str, List[Wanted]] = {}
    for item in wanted:
        wanted_by.setdefault(item.target_iqn, []).append(item)
    actions: List[Action] = []
    for target in sorted(set(live_by) | set(saved_by) | set(wanted_by)):
        current, remembered = live_by.get(target), saved_by.get(target, {})
        have = {g.initiator_iqn for g in current.grants} if current else set()
        want = wanted_by.get(target, [])
        if not want:
            initiators = tuple(sorted(have | set(remembered)))
            actions.append(Action(REMOVE, target, initiators=initiators, reason="no publication record wants it"))
            continue
        volume_id = want[0].volume_id
        if current is not None and current.device and devices is not None and target in devices \
                and devices[target] != current.device:
            # E.g. a reboot renumbered the loop devices and tgt.service restored the old paths: the
            # LUN would serve another volume's data under this volume's serial. Start over.
            actions.append(Action(REMOVE, target, volume_id, initiators=tuple(sorted(have | set(remembered))),
                                  reason=f"its LUN is {current.device}, but the volume is at "
                                  f"{devices[target] or 'no device'}"))
            current, have = None, set()
        grants: List[Action] = []
        known = set()
        for item in want:
            if item.initiator_iqn is None:
                grants.append(Action(SKIP, target, volume_id, reason=f"node {item.node_id} has no known initiator IQN"))
                continue
            known.add(item.initiator_iqn)
            if item.initiator_iqn in have:
                continue
            if item.initiator_iqn not in remembered:
                grants.append(Action(SKIP, target, volume_id, item.initiator_iqn,
                                     reason=f"no saved credentials for node {item.node_id}: publish it again"))
                continue
            grants.append(Action(GRANT, target, volume_id, item.initiator_iqn, remembered[item.initiator_iqn],
                                 reason=f"recorded publication to node {item.node_id}, grant missing"))
        # A target nobody could log in to is not worth making (nor persisting over a saved config
        # that the target service may not have restored yet).
        usable = have or any(a.kind == GRANT for a in grants)
        if (current is None or not current.device) and usable:
            actions.append(Action(EXPORT, target, volume_id, read_only=any(w.read_only for w in want),
                                  reason="recorded publication, target missing"))
        actions += grants
        for stale in sorted((have | set(remembered)) - known):
            actions.append(Action(REVOKE, target, volume_id, stale, reason="no publication record wants it"))
    return actions


def wanted_of(publishing: IscsiPublishing, volumes: Iterable[Volume]) -> List[Wanted]:
    """The recorded publications that are exports (the storage host uses its own volumes in place)."""
    base = publishing.settings.base_iqn
    found = []
    for volume in volumes:
        for node_id, publication in sorted(volume.publications.items()):
            if node_id == publishing.node_id:
                continue
            read_only = publication.readonly or \
                csi_pb2.VolumeCapability.AccessMode.Mode.Value(publication.access_mode) in READ_ONLY_MODES
            found.append(Wanted(volume.id, target_iqn_for(base, volume.id), node_id,
                                publishing.initiator_for(node_id), read_only))
    return found


@dataclass
class Summary:
    applied: int = 0
    skipped: int = 0
    failed: int = 0
    busy: int = 0


def reconcile(publishing: IscsiPublishing, locks: ObjectLocks) -> Summary:
    """Bring the backend in line with the records; one target's failure never stops the others.

    The whole pass holds the backend's transaction: the target service is listed once and stays
    as listed (plus this pass's own changes), since every RPC that changes it waits for the
    transaction. An RPC already at work on a volume holds that volume's lock, which the pass only
    tries: such a target is left to the RPC (lock order volume -> target service, never reversed).
    """
    backend, base = publishing.backend, publishing.settings.base_iqn
    summary = Summary()
    with backend.transaction():
        for leftover in backend.sweep_interrupted_writes():
            log.info("reconcile: removed %s, an interrupted write", leftover)
        live, saved = _resolved(backend.exports()), backend.saved_grants()
        # Listed after reading the backend: a target seen there was made after its volume (publish looks the
        # volume up first), so its volume is found below and locked by its id, as ControllerPublish locks it.
        volumes = publishing.pool.all_volumes()
        by_target = {target_iqn_for(base, v.id): v for v in volumes}
        live_by = {e.target_iqn: e for e in live}
        devices = _devices(publishing, live, by_target)
        first = plan(base, live, saved, wanted_of(publishing, volumes), devices)
        for target in dict.fromkeys(a.target_iqn for a in first):  # in plan order, once each
            volume = by_target.get(target)
            with locks.try_hold(volume.id if volume else target) as granted:
                if not granted:  # an RPC is at work on it and settles it itself
                    summary.busy += 1
                    log.info("reconcile: %s is busy, left to the RPC in progress", target)
                    continue
                try:
                    _settle(publishing, target, volume.id if volume else None, live_by.get(target),
                            saved.get(target, {}), devices, summary)
                except Exception as error:  # keep going: the other volumes and the agent matter more
                    summary.failed += 1
                    log.error("reconcile: %s failed: %s", target, error,
                              extra={"fields": {"target": target, "error": type(error).__name__}})
        if summary.applied:
            try:
                backend.persist()
            except Exception as error:
                summary.failed += 1
                log.error("reconcile: persisting the target configuration failed: %s", error)
    log.info("iscsi reconciliation finished", extra={"fields": {
        "applied": summary.applied, "skipped": summary.skipped, "failed": summary.failed, "busy": summary.busy}})
    return summary


def _settle(publishing: IscsiPublishing, target: str, volume_id: Optional[str], current: Optional[Export],
            saved: Mapping[str, Optional[Chap]], devices: Mapping[str, Optional[str]], summary: Summary) -> None:
    """Re-plan *target* from its volume's record read now (under its lock) and apply the actions.

    *current*, *saved* and *devices* are as found at the start of the pass: nothing else has changed
    them since (the pass holds the backend's transaction, an RPC that attaches or detaches holds the
    volume's lock, and each target is settled once).
    """
    backend, pool = publishing.backend, publishing.pool
    volume = pool.load_volume(volume_id) if volume_id else None
    live = [current] if current else []
    actions = plan(publishing.settings.base_iqn, live, {target: saved},
                   wanted_of(publishing, [volume] if volume else []), devices)
    for action in actions:
        fields = {"action": action.kind, "target": target, "volume_id": action.volume_id or None,
                  "initiator": action.initiator_iqn or None, "reason": action.reason}
        if action.kind == SKIP:
            summary.skipped += 1
            log.warning("reconcile: cannot restore %s: %s", target, action.reason, extra={"fields": fields})
            continue
        if action.kind == EXPORT:
            assert volume is not None  # an export is only ever wanted by this volume's own record
            backend.ensure_export(target, pool.attach(volume), serial_for(volume.id), action.read_only)
        elif action.kind == GRANT:
            backend.ensure_grant(target, action.initiator_iqn, action.chap)
        elif action.kind == REVOKE:
            backend.revoke_grant(target, action.initiator_iqn)
        elif action.kind == REMOVE:
            for initiator in action.initiators:
                backend.revoke_grant(target, initiator)
            backend.remove_export(target)
            if volume is not None and not volume.publications:
                pool.detach(volume)  # as the last unpublish would have done
        summary.applied += 1
        log.info("reconcile: %s %s", action.kind, target, extra={"fields": fields})


def _resolved(exports: Sequence[Export]) -> List[Export]:
    return [replace(e, device=os.path.realpath(e.device)) if e.device else e for e in exports]


def _devices(publishing: IscsiPublishing, live: Sequence[Export], by_target: Mapping[str, Volume]
             ) -> Dict[str, Optional[str]]:
    """Where each exported volume that a record still wants exported is now (one pool lookup for all)."""
    wanted = {e.target_iqn: by_target[e.target_iqn] for e in live if e.device and e.target_iqn in by_target
              and set(by_target[e.target_iqn].publications) - {publishing.node_id}}
    attached = publishing.pool.attached_devices(list(wanted.values())) if wanted else {}
    return {target: os.path.realpath(device) if (device := attached[volume.id]) else None
            for target, volume in wanted.items()}
