"""``basalt doctor`` and ``basalt gc``: what a node needs, what is wrong, and Basalt's own leftovers.

Every check yields findings: one line each, with the fix. A leftover is
something under Basalt's names that no record owns (an image or LV, a loop
device on one, a target under ``--iscsi-base-iqn`` whose volume is gone, with
tgt or LIO; an iSCSI session or open-iscsi node record to a target under it
that no node record names); only leftovers carry a removal, and ``gc`` runs
exactly those removals, consumers first. A leftover device in use (a
filesystem mounted from it or its partitions, swap, a multipath map or other
holder over it: basalt_core.device_use) is reported "in use" with what uses
it and never removed; nor is a session's node record while the session stays.
Stale mounts under the kubelet root are reported, never unmounted (a pod may use one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Union

from basalt_core import device_use, exports, iscsiadm, multipath, volumes
from basalt_core.errors import Conflict, InUse, StorageError
from basalt_core.facts import volume_id_of_target as volume_id_of
from basalt_core.losetup import list_devices
from basalt_core.lvm_pool import LvmPool
from basalt_core.model import Snapshot, Volume
from basalt_core.mount import mounts
from basalt_core.pool import Orphan
from basalt_core.runner import run

from . import DRIVER_NAME, identity, initiator, reconcile
from .inventory import Inventory, agent_listening
from .publishing import IscsiPublishing

log = logging.getLogger("basalt")

OK, WARN, FAIL, LEFTOVER, IN_USE = "ok", "warn", "fail", "leftover", "in use"
DEFAULT_KUBELET_ROOT = "/var/lib/kubelet"
LVM_UDEV_RULE = "/lib/udev/rules.d/69-lvm.rules"


@dataclass
class Finding:
    status: str
    check: str
    what: str
    fix: str = ""
    remove: Optional[Callable[[], None]] = field(default=None, repr=False, compare=False)

    def as_dict(self) -> Dict[str, object]:
        return {"status": self.status, "check": self.check, "what": self.what, "fix": self.fix,
                "safe_to_remove": self.remove is not None}


Check = Callable[[Inventory, str], Iterator[Finding]]


def examine(inventory: Inventory, kubelet_root: str = DEFAULT_KUBELET_ROOT) -> List[Finding]:
    findings: List[Finding] = []
    for check in CHECKS:
        name = check.__name__.replace("_", " ")
        try:
            findings += list(check(inventory, kubelet_root))
        except (StorageError, OSError) as error:
            findings.append(Finding(FAIL, name, f"could not check: {error}", "see the error"))
    return findings


def collect(inventory: Inventory, kubelet_root: str = DEFAULT_KUBELET_ROOT, apply: bool = False
            ) -> List[Finding]:
    """The leftovers doctor reports as safe to remove: removed with *apply*, else listed; those in use are
    listed as left in place."""
    done = []
    for finding in examine(inventory, kubelet_root):
        if finding.status == IN_USE:
            done.append(Finding(IN_USE, finding.check, finding.what, f"left in place: {finding.fix}"))
            continue
        if finding.remove is None:
            continue
        if not apply:
            done.append(Finding("would remove", finding.check, finding.what, "basalt gc --apply"))
            continue
        try:
            finding.remove()
        except InUse as error:  # taken into use since it was examined
            log.warning("gc: left %s in place: %s", finding.what, error)
            done.append(Finding(IN_USE, finding.check, finding.what, f"left in place: {error}"))
            continue
        except (StorageError, OSError) as error:
            log.error("gc: could not remove %s: %s", finding.what, error)
            done.append(Finding(FAIL, finding.check, finding.what, f"not removed: {error}"))
            continue
        log.info("gc: removed %s", finding.what)
        done.append(Finding("removed", finding.check, finding.what))
    return done


# -- checks ----------------------------------------------------------------------

def agent(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    path = inventory.settings.socket_path
    if not agent_listening(path):
        yield Finding(WARN, "agent", f"no agent answers on {path}",
                      "start basalt-agent, or point --endpoint (CSI_ENDPOINT) at its socket")
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        yield Finding(FAIL, "agent", f"{path} is mode {mode:04o}: others may talk to the driver",
                      f"chmod 0600 {path} (the agent makes it 0600 itself: check what changed it)")
    else:
        yield Finding(OK, "agent", f"the agent answers on {path} (mode {mode:04o})")


def kubelet(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    if not os.path.isdir(kubelet_root):
        yield Finding(OK, "kubelet", f"no kubelet directory at {kubelet_root}: not a Kubernetes node, skipped")
        return
    registry = os.path.join(kubelet_root, "plugins_registry")
    registration = inventory.settings.registration_socket or os.path.join(registry, f"{DRIVER_NAME}-reg.sock")
    plugin_dir = os.path.join(kubelet_root, "plugins", DRIVER_NAME)
    if not os.path.isdir(plugin_dir):
        yield Finding(FAIL, "kubelet", f"the plugin directory {plugin_dir} is missing",
                      f"mount it into the agent's pod and serve --endpoint unix://{plugin_dir}/csi.sock")
    if not agent_listening(registration):
        yield Finding(FAIL, "kubelet", f"node not registered: nothing answers on {registration}",
                      "run the agent with --registration-socket (or node-driver-registrar) on the plugin "
                      "registry directory")
    else:
        yield Finding(OK, "kubelet", f"registration answers on {registration}")


def pool(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    spec = inventory.settings.pool_spec
    try:
        inventory.pool.probe()
    except StorageError as error:
        yield Finding(FAIL, "pool", f"{spec}: {error}",
                      "create or repair the pool (file: its directory; lvm: the VG; lvmthin: the thin pool)")
        return
    usage = inventory.pool.usage()
    yield Finding(OK, "pool", f"{spec} answers: {usage.volumes} volume(s), {usage.snapshots} snapshot(s), "
                  f"{usage.available} bytes available")


def lvm_settings(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    lvm_pool = inventory.pool
    if not isinstance(lvm_pool, LvmPool):
        return
    options = lvm_pool.options  # what the pool stores, which the agent's flags must agree with
    missing = [tool for tool in ("lvs", "vgs", "lvcreate", "lvremove", "lvchange") if shutil.which(tool) is None]
    if missing:
        yield Finding(FAIL, "lvm settings", f"LVM tools missing: {', '.join(missing)}", "install lvm2")
    if options.activation == "loop" and options.alloc != "contiguous":
        yield Finding(FAIL, "lvm settings", "--lvm-activation loop needs single-segment LVs",
                      "run the agent with --lvm-alloc contiguous")
    if options.activation == "dm" and os.path.exists(LVM_UDEV_RULE):
        answer = run(["lvmconfig", "--typeconfig", "full", "global/event_activation"], check=False,
                     timeout=30, what="read lvm.conf", env=lvm_pool.settings.env())
        if answer.stdout.strip().endswith("=1"):
            yield Finding(WARN, "lvm settings", f"event activation is on and {LVM_UDEV_RULE} exists: udev "
                          "activates volumes behind the agent's back",
                          "set global { event_activation = 0 } in lvm.conf")
            return
    yield Finding(OK, "lvm settings", f"activation {options.activation}, allocation {options.alloc}")


def target_service(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    backend = inventory.target_backend
    if backend is None:
        return
    try:
        count = len(backend.exports())
    except StorageError as error:
        yield Finding(FAIL, "target service", f"the {inventory.settings.iscsi_backend} target service does "
                      f"not answer: {error}", "start it (tgt: tgtd; LIO: load target_core_mod, mount configfs)")
        return
    yield Finding(OK, "target service", f"{inventory.settings.iscsi_backend} answers with {count} export(s)")


def iscsi_node(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    own = initiator.for_node(inventory.settings)
    attached = bool(inventory.node_state.iscsi_targets())
    if own is None and not attached:
        return
    try:
        identity.iscsid_answers()
        yield Finding(OK, "iscsid", "iscsid answers")
    except StorageError as error:
        yield Finding(FAIL if attached else WARN, "iscsid", str(error), "start iscsid (open-iscsi)")
    if own is not None:
        current = own.current()
        if current is None:
            yield Finding(WARN, "initiator name", f"{own.path} is missing", "install open-iscsi, or run the agent "
                          "with --iscsi-manage-initiatorname")
        elif current != own.wanted:
            yield Finding(FAIL, "initiator name", f"{own.path} names {current}; the storage hosts expect "
                          f"{own.wanted}", f"set InitiatorName={own.wanted} there and restart iscsid, or run "
                          "the agent with --iscsi-manage-initiatorname")
        else:
            yield Finding(OK, "initiator name", f"{current}, as the storage hosts expect")
    if multipath.daemon_running():
        shown = run(["multipathd", "show", "config"], check=False, timeout=30, what="read multipathd's config")
        if any(line.split()[:2] in (["find_multipaths", '"off"'], ["find_multipaths", '"strict"'])
               for line in shown.stdout.splitlines()):
            yield Finding(WARN, "multipath", "multipathd runs with find_multipaths off or strict: volumes "
                          "with several portals get no map", "set find_multipaths yes (or greedy) in "
                          "/etc/multipath.conf and reload multipathd")


def leftovers(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    """Consumers first (sessions, node records, exports, then the pool's objects), which is also the order
    gc removes them in: a target holds its LV open, a session holds its target."""
    base = inventory.settings.iscsi_base_iqn + ":"
    owned = inventory.node_state.iscsi_targets()
    held = {}  # (target, portal) of each stray session in use: its node record stays with it
    for stray in inventory.node_state.stray_sessions(inventory.settings.iscsi_base_iqn):
        session = stray.session
        what = f"iSCSI session {session.sid} to {session.target_iqn} ({session.portal}): no node record names it"
        if stray.users:
            held[session.target_iqn, session.portal] = session.sid
            yield _in_use(what, stray.users)
        else:
            yield Finding(LEFTOVER, "leftovers", what, "basalt gc --apply", _session_removal(inventory, session))
    for target, portal in iscsiadm.nodes() if iscsiadm.installed() else []:
        if volume_id_of(target) and target.startswith(base) and target not in owned:
            what = f"iSCSI node record {target} ({portal}): no node record names it"
            if (target, portal) in held:
                yield _in_use(what, [f"its session {held[target, portal]} is in use"])
            else:
                yield Finding(LEFTOVER, "leftovers", what, "basalt gc --apply",
                              _node_removal(iscsiadm.delete_node, target, portal))
    for export in inventory.exports():
        if export["volume_id"] and not export["owned"] and export["target_iqn"].startswith(base):
            yield Finding(LEFTOVER, "leftovers", f"export {export['target_iqn']}: its volume has no record",
                          "basalt gc --apply", _export_removal(inventory, export["volume_id"]))
    grace = inventory.settings.cleanup_grace
    agent_runs = agent_listening(inventory.settings.socket_path)
    yield from _stray_grants(inventory, agent_runs)
    for record in volumes.abandoned(inventory.pool, grace):
        what = f"{type(record).__name__.lower()} {record.id} ({record.name!r}): {record.state}, left by an " \
            "interrupted operation"
        users = _record_users(inventory, record)
        if users:
            yield _in_use(what, users)
        elif agent_runs:  # its clean-up removes it under its locks: never race it
            yield Finding(WARN, "leftovers", what, f"none: the agent's clean-up removes it within "
                          f"{max(grace / 2, 1):g}s")
        else:
            yield Finding(LEFTOVER, "leftovers", what, "basalt gc --apply",
                          _abandoned_removal(inventory, record))
    for orphan in inventory.pool.orphans():
        what = f"{orphan.kind} {orphan.name}: {orphan.reason}"
        if orphan.users:
            yield _in_use(what, orphan.users)
        else:
            yield Finding(LEFTOVER, "leftovers", what, "basalt gc --apply", _orphan_removal(inventory, orphan))
    yield from _stale_mounts(inventory, kubelet_root)


def _in_use(what: str, users: Sequence[str]) -> Finding:
    return Finding(IN_USE, "leftovers", what, f"in use: {'; '.join(users)}; find its user and stop it first "
                   "(umount, swapoff, multipath -f, dmsetup remove), then basalt gc --apply")


def _record_users(inventory: Inventory, record: Union[Volume, Snapshot]) -> List[str]:
    """What uses the device an abandoned volume is attached as on this host (a snapshot is never attached)."""
    device = inventory.pool.attached_device(record) if isinstance(record, Volume) else None
    return device_use.users([device]) if device else []


def _wanted_initiators(inventory: Inventory, exporting: IscsiPublishing) -> Dict[str, Set[Optional[str]]]:
    """Per target, the initiators its volume's publication records want (None: a node whose IQN is unknown)."""
    wanted: Dict[str, Set[Optional[str]]] = {}
    for item in reconcile.wanted_of(exporting, inventory.pool.all_volumes()):
        wanted.setdefault(item.target_iqn, set()).add(item.initiator_iqn)
    return wanted


def _stray_grants(inventory: Inventory, agent_runs: bool) -> Iterator[Finding]:
    """Grants (tgt ACLs, LIO NodeACLs) on the exports of recorded volumes that no publication record wants:
    access a node should no longer have.  The agent revokes them at its next start (reconcile.py); while it
    runs, a grant may be a ControllerPublish whose record is not written yet, so gc leaves them to it."""
    exporting = inventory.exporting
    if exporting is None:
        return
    wanted = _wanted_initiators(inventory, exporting)
    for export in inventory.exports():
        target, want = export["target_iqn"], wanted.get(export["target_iqn"], set())
        if not export["owned"] or not target.startswith(exporting.settings.base_iqn + ":") or None in want:
            continue
        for initiator_iqn in sorted(set(export["initiators"]) - want):
            what = f"grant to {initiator_iqn} on {target}: no publication record wants it"
            if agent_runs:
                yield Finding(WARN, "leftovers", what, "restart the agent (it revokes it at start), or stop it "
                              "and run basalt gc --apply")
            else:
                yield Finding(LEFTOVER, "leftovers", what, "basalt gc --apply",
                              _grant_removal(inventory, exporting, target, initiator_iqn))


def _grant_removal(inventory: Inventory, exporting: IscsiPublishing, target: str, initiator_iqn: str
                   ) -> Callable[[], None]:
    def remove() -> None:
        backend = exporting.backend
        with backend.transaction():
            if initiator_iqn in _wanted_initiators(inventory, exporting).get(target, set()):
                raise Conflict(f"a publication record wants {initiator_iqn} on {target} again: left in place")
            if not backend.revoke_grant(target, initiator_iqn):
                raise Conflict(f"the grant to {initiator_iqn} on {target} was already gone")
            backend.persist()
    return remove


def _abandoned_removal(inventory: Inventory, record: Union[Volume, Snapshot]) -> Callable[[], None]:
    object_id = record.id

    def remove() -> None:
        users = _record_users(inventory, record)
        if users:
            raise InUse(f"{object_id} is in use ({'; '.join(users)}): left in place")
        if object_id not in volumes.clean_up(inventory.pool, inventory.settings.cleanup_grace,
                                             claim=lambda oid: contextlib.nullcontext(oid == object_id)):
            raise Conflict(f"{object_id} is no longer abandoned: left in place")
    return remove


def _orphan_removal(inventory: Inventory, orphan: Orphan) -> Callable[[], None]:
    return lambda: inventory.pool.remove_orphan(orphan)


def _export_removal(inventory: Inventory, volume_id: str) -> Callable[[], None]:
    def remove() -> None:
        exporting = inventory.exporting
        assert exporting is not None  # exports are only listed where there is a backend
        if inventory.pool.load_volume(volume_id) is not None:
            raise Conflict(f"volume {volume_id} has a record again: its export is left in place")
        # the whole export, every grant first, and the target service's saved configuration with it
        exports.ensure_withdrawn(inventory.pool, exporting.backend, exporting.settings, volume_id)
    return remove


def _session_removal(inventory: Inventory, session: iscsiadm.Session) -> Callable[[], None]:
    def remove() -> None:
        now = [stray for stray in inventory.node_state.stray_sessions(inventory.settings.iscsi_base_iqn)
               if stray.session == session]
        if not now:
            raise Conflict(f"session {session.sid} to {session.target_iqn} is gone or owned now: left alone")
        if now[0].users:
            raise InUse(f"session {session.sid} is in use ({'; '.join(now[0].users)}): left in place")
        if not iscsiadm.logout(session.target_iqn, session.portal):
            raise Conflict(f"{session.target_iqn} ({session.portal}) was already gone")
    return remove


def _node_removal(operation: Callable[..., bool], target: str, portal: str) -> Callable[[], None]:
    def remove() -> None:
        if not operation(target, portal):
            raise Conflict(f"{target} ({portal}) was already gone")
    return remove


def _stale_mounts(inventory: Inventory, kubelet_root: str) -> Iterator[Finding]:
    """Mounts under the kubelet root of this pool's loop devices, or in Basalt's plugin directory, that no
    node record names."""
    if not os.path.isdir(kubelet_root):
        return
    named = {path for record in inventory.node_state.all() for path in (record.staging_path, *record.targets)}
    pool_dir = getattr(inventory.pool, "directory", None)
    pool_loops = {loop.device for loop in list_devices()
                  if pool_dir and loop.backing_file.startswith(pool_dir + os.sep)}
    plugin_dir = os.path.join(kubelet_root, "plugins", "kubernetes.io", "csi", DRIVER_NAME) + os.sep
    root = kubelet_root.rstrip(os.sep) + os.sep
    for entry in mounts():
        point = entry.mount_point
        if not point.startswith(root) or point in named:
            continue
        if entry.source in pool_loops or point.startswith(plugin_dir):
            yield Finding(WARN, "stale mounts", f"{point} ({entry.source}) is mounted and no node record names it",
                          f"check that no pod uses it, then umount {point}")


CHECKS: List[Check] = [agent, kubelet, pool, lvm_settings, target_service, iscsi_node, leftovers]
