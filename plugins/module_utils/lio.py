"""The iSCSI target through the kernel's LIO, in-process with ``rtslib_fb`` (rtslib-fb 2.1.x; no targetcli).

**Runs for real only where configfs and the target modules exist — the VM
tier (tests/vm).**  The development and CI machines have no configfs
("No such file or directory: '/proc/modules'"), so tests/unit/plugins/module_utils/test_lio.py
drives this module against a fake ``rtslib_fb`` that records the object calls;
the calls it expects follow rtslib-fb 2.1.76's API (constructors and
properties of FabricModule, Target, TPG, NetworkPortal, BlockStorageObject,
LUN, NodeACL, MappedLUN, RTSRoot).

Every object is opened at its configfs path (rtslib's constructors in lookup
mode), never found by listing its siblings: a call's cost does not grow with
the exports on the host.

Layout per volume: a block backstore named ``basalt-<serial>`` on the device
(its T10 unit serial, VPD 0x80, is the volume's serial; ``readonly`` set
for read-only exports), one iSCSI target with TPG 1 (``generate_node_acls=0``:
only NodeACLs log in; ``demo_mode_write_protect=1``), the configured network
portals, LUN 0 on the backstore, and per granted initiator one NodeACL with
its CHAP credentials (``chap_userid``/``chap_password``, mutual
``chap_mutual_userid``/``chap_mutual_password``) and mapped LUN 0 with
``write_protect`` for read-only exports.  ``authentication=1`` on the TPG
when the grants use CHAP.  As with tgt, one TPG's grants all use CHAP or all
do not (:class:`~.errors.Conflict` otherwise).

Revoking deletes the NodeACL, which makes the kernel end that initiator's
sessions.  ``persist`` writes rtslib's saved configuration (mode 0600: it
holds the CHAP secrets) to rtslib's own default file unless told otherwise:
the one the ``rtslib-fb-targetctl`` / ``target`` service restores at boot
(``targetctl restore``).  It replaces there only the entries of the exports
changed since the last save (lio_config: rtslib's ``save_to_file`` would read
back every object on the host), and falls back to ``save_to_file`` while
there is no readable file.  A change whose save a crash prevented is found
by the retry (the file disagrees with LIO) and saved then.  That file is
not the same everywhere: upstream /etc/target/saveconfig.json, Debian's
python3-rtslib-fb /etc/rtslib-fb-target/saveconfig.json (found in the VM
tier, where a save to /etc/target was never restored).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar

from . import lio_config
from .atomicfile import sweep_temp_files
from .errors import Conflict, InUse, InvalidRequest, NotFound, Precondition
from .hostlock import HostLock
from .iscsi_target import Chap, Export, Grant, TargetBackend, check_iqn, check_serial
from .model import DEFAULT_STATE_DIR
from .runner import operand

DATA_LUN = 0
_Method = TypeVar("_Method", bound=Callable[..., Any])
TPG_TAG = 1
#: A NodeACL's CHAP credentials (the initiator's, then the mutual ones): rtslib's names, which its dump uses.
CHAP_ATTRIBUTES = lio_config.CHAP_KEYS
#: What TPG 1 is given at creation; ``authentication`` follows the grants (CHAP or not).
TPG_ATTRIBUTES = {"generate_node_acls": "0", "demo_mode_write_protect": "1", "authentication": "0"}
SO_PREFIX = "basalt-"


def _locked(method: _Method) -> _Method:
    """Run the method inside the backend's transaction (LIO's state is shared by every volume)."""
    @functools.wraps(method)
    def locked(self: "LioBackend", *args: Any, **kwargs: Any) -> Any:
        with self.transaction():
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


def lock_path_under(state_dir: str) -> str:
    """The lock every writer of LIO's state on this host takes (the agent and the module agree on it)."""
    return os.path.join(state_dir, "iscsi", "lio.lock")


def load_rtslib() -> Any:
    """Import rtslib_fb, or explain what is missing."""
    try:
        import rtslib_fb
    except ImportError:
        raise Precondition("the LIO backend needs rtslib-fb (Debian: python3-rtslib-fb; pip: rtslib-fb) "
                           "and a kernel with configfs and target_core_mod") from None
    return rtslib_fb


def _split_portal(portal: str) -> Tuple[str, int]:
    """``HOST:PORT`` / ``[v6]:PORT`` / ``HOST`` into rtslib's (ip_address, port); IPv6 keeps its brackets."""
    host, port = portal, 3260
    if portal.startswith("["):
        end = portal.find("]")
        if end < 0:
            raise InvalidRequest(f"portal {portal!r} is not [ADDRESS]:PORT")
        host, rest = portal[: end + 1], portal[end + 1 :]
        if rest:
            port = int(rest.lstrip(":"))
    elif portal.count(":") == 1:
        host, port_text = portal.split(":")
        port = int(port_text)
    if not host or host.startswith("-") or not 0 < port < 65536:
        raise InvalidRequest(f"portal {portal!r} is not HOST:PORT")
    return host, port


class LioBackend(TargetBackend):
    """:class:`TargetBackend` over LIO via rtslib_fb (VM tier / real hosts only; see the module docstring).

    *portals*: where TPG 1 listens (default ``0.0.0.0:3260``).  *save_file*:
    what ``persist`` writes (default: rtslib's ``default_save_file``).
    *lock_path*: the :class:`~.hostlock.HostLock` every call holds: LIO's
    objects and its saved configuration are shared by every volume.
    *rtslib*: the rtslib_fb module (tests pass a fake).
    """

    lun = DATA_LUN

    def __init__(self, *, portals: Sequence[str] = ("0.0.0.0:3260",), save_file: Optional[str] = None,
                 lock_path: str = lock_path_under(DEFAULT_STATE_DIR), rtslib: Any = None) -> None:
        self.portals = tuple(portals)
        for portal in self.portals:
            _split_portal(portal)
        self.save_file = save_file
        self._lock = HostLock(lock_path)
        self._rtslib = rtslib
        #: target IQN -> the backstores seen with it: the exports changed since the last save (under the lock)
        self._unsaved: Dict[str, Set[str]] = {}

    def transaction(self) -> ContextManager[None]:
        return self._lock

    def ping(self) -> None:
        self._fabric()  # rtslib reads configfs: fails without the target modules

    @property
    def rts(self) -> Any:
        if self._rtslib is None:
            self._rtslib = load_rtslib()
        return self._rtslib

    # -- lookups: each object opened at its configfs path (a stat), never by listing its siblings --

    def _fabric(self) -> Any:
        return self.rts.FabricModule("iscsi")

    def _opened(self, open_object: Callable[[], Any]) -> Any:
        """What *open_object* (an rtslib constructor in lookup mode) finds, or None when it is not there."""
        rts = self.rts
        missing = getattr(rts, "RTSLibNotInCFSError", None) or rts.RTSLibNotInCFS  # 2.2's name, 2.1's
        try:
            return open_object()
        except missing:
            return None

    def _target(self, target_iqn: str) -> Any:
        return self._opened(lambda: self.rts.Target(self._fabric(), target_iqn, mode="lookup"))

    def _tpg(self, target: Any) -> Any:
        return self._opened(lambda: self.rts.TPG(target, TPG_TAG, mode="lookup"))

    def _lun(self, tpg: Any) -> Any:
        return self._opened(lambda: self.rts.LUN(tpg, DATA_LUN))  # no storage object: lookup

    def _acl(self, tpg: Any, initiator_iqn: str) -> Any:
        return self._opened(lambda: self.rts.NodeACL(tpg, initiator_iqn, mode="lookup"))

    def _mapped_lun(self, acl: Any) -> Any:
        return self._opened(lambda: self.rts.MappedLUN(acl, DATA_LUN))  # no TPG LUN: lookup

    def _opened_tpg(self, target_iqn: str) -> Tuple[Any, Any]:
        """The target and its TPG 1 (each None when not there)."""
        target = self._target(target_iqn)
        return target, self._tpg(target) if target is not None else None

    def _storage_object(self, name: str) -> Any:
        # A listing, not rtslib's lookup by name, which trusts a cache of this process's own (the
        # iscsi_export module changes LIO too); only needed while no LUN leads to the backstore.
        for so in self.rts.RTSRoot().storage_objects:
            if so.plugin == "block" and so.name == name:
                return so
        return None

    @staticmethod
    def _chap_of(acl: Any) -> Optional[Chap]:
        if not acl.chap_userid:
            return None
        return Chap(acl.chap_userid, acl.chap_password, acl.chap_mutual_userid or None,
                    acl.chap_mutual_password or None)

    # -- TargetBackend --

    @_locked
    def ensure_export(self, target_iqn: str, device: str, serial: str, read_only: bool) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_serial(serial)
        operand(device, "device")
        rts = self.rts
        changed = False
        name = SO_PREFIX + serial
        target, tpg = self._opened_tpg(target_iqn)
        lun = self._lun(tpg) if tpg is not None else None
        if lun is not None and lun.storage_object.name != name:
            raise Conflict(f"target {target_iqn} LUN {DATA_LUN} is {lun.storage_object.name}, not {name}")
        so = lun.storage_object if lun is not None else self._storage_object(name)
        if so is None:
            so = rts.BlockStorageObject(name, dev=device, wwn=serial, readonly=read_only)
            changed = True
        elif (so.udev_path, so.wwn, bool(so.readonly)) != (device, serial, read_only):
            raise Conflict(f"backstore {name} is {so.udev_path} (serial {so.wwn}, read-only {so.readonly}), "
                           f"not {device} (serial {serial}, read-only {read_only})")
        if target is None:
            target = rts.Target(self._fabric(), target_iqn, mode="create")
            changed = True
        if tpg is None:
            tpg = rts.TPG(target, TPG_TAG, mode="create")
            for attribute, value in TPG_ATTRIBUTES.items():
                tpg.set_attribute(attribute, value)
            changed = True
        have = {(p.ip_address, p.port) for p in tpg.network_portals}
        for portal in self.portals:
            ip_address, port = _split_portal(portal)
            if (ip_address, port) not in have:
                rts.NetworkPortal(tpg, ip_address, port, mode="create")
                changed = True
        if lun is None:
            rts.LUN(tpg, lun=DATA_LUN, storage_object=so)
            changed = True
        if not tpg.enable:
            tpg.enable = True
            changed = True
        if changed:
            self._changed(target_iqn, name)
        return changed

    @_locked
    def ensure_grant(self, target_iqn: str, initiator_iqn: str, chap: Optional[Chap]) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        _target, tpg = self._opened_tpg(target_iqn)
        lun = self._lun(tpg) if tpg is not None else None
        if tpg is None or lun is None:
            raise NotFound(f"target {target_iqn} is not exported")
        for other in tpg.node_acls:
            if other.node_wwn != initiator_iqn and bool(other.chap_userid) != (chap is not None):
                raise Conflict(f"{initiator_iqn} and {other.node_wwn} on {target_iqn} must both use CHAP or "
                               "both not (authentication is per TPG)")
        changed = False
        acl = self._acl(tpg, initiator_iqn)
        if acl is None:
            acl = self.rts.NodeACL(tpg, initiator_iqn, mode="create")
            changed = True
        wanted = dict(zip(CHAP_ATTRIBUTES, (chap.user, chap.password, chap.mutual_user or "",
                                            chap.mutual_password or "") if chap else ("", "", "", "")))
        for attribute, value in wanted.items():
            if (getattr(acl, attribute) or "") != value:
                setattr(acl, attribute, value)
                changed = True
        read_only = bool(lun.storage_object.readonly)
        mapped = self._mapped_lun(acl)
        if mapped is None:
            self.rts.MappedLUN(acl, DATA_LUN, tpg_lun=lun, write_protect=read_only)
            changed = True
        elif bool(mapped.write_protect) != read_only:
            mapped.write_protect = read_only
            changed = True
        wanted_auth = "1" if chap is not None else "0"
        if tpg.get_attribute("authentication") != wanted_auth:
            tpg.set_attribute("authentication", wanted_auth)
            changed = True
        if changed:
            self._changed(target_iqn)
            return True
        return self._unsaved_after_crash(target_iqn)

    @_locked
    def revoke_grant(self, target_iqn: str, initiator_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        _target, tpg = self._opened_tpg(target_iqn)
        return self._revoke(target_iqn, tpg, initiator_iqn)

    def _revoke(self, target_iqn: str, tpg: Any, initiator_iqn: str) -> bool:
        acl = self._acl(tpg, initiator_iqn) if tpg is not None else None
        if acl is None:
            return False
        acl.delete()  # with its mapped LUNs; the kernel closes the initiator's sessions
        self._changed(target_iqn)
        return True

    @_locked
    def remove_export(self, target_iqn: str) -> bool:
        check_iqn(target_iqn, "target IQN")
        return self._remove(target_iqn, *self._opened_tpg(target_iqn))

    def _remove(self, target_iqn: str, target: Any, tpg: Any) -> bool:
        if target is None:
            return False
        remaining = [acl.node_wwn for acl in tpg.node_acls] if tpg is not None else []
        if remaining:
            raise InUse(f"target {target_iqn} still grants access to {', '.join(sorted(remaining))}")
        lun = self._lun(tpg) if tpg is not None else None
        so = lun.storage_object if lun is not None else None
        target.delete()
        if so is not None and so.name.startswith(SO_PREFIX):
            so.delete()
        self._changed(target_iqn, *([so.name] if so is not None else []))
        return True

    @_locked
    def withdraw(self, target_iqn: str, initiator_iqn: str) -> Tuple[bool, bool]:
        """As :meth:`TargetBackend.withdraw`, with one lookup of the target and its TPG for both steps."""
        check_iqn(target_iqn, "target IQN")
        check_iqn(initiator_iqn, "initiator IQN")
        target, tpg = self._opened_tpg(target_iqn)
        changed = self._revoke(target_iqn, tpg, initiator_iqn)
        if tpg is not None and any(True for _acl in tpg.node_acls):
            gone = False
        else:
            changed, gone = self._remove(target_iqn, target, tpg) or changed, True
        return changed or self._unsaved_after_crash(target_iqn), gone

    @_locked
    def exports(self) -> List[Export]:
        return [e for e in map(self._export_of, self._fabric().targets) if e is not None]

    @_locked
    def export(self, target_iqn: str) -> Optional[Export]:
        """One target's export: reads that target only, however many the host has."""
        target = self._target(target_iqn)
        return self._export_of(target) if target is not None else None

    def _export_of(self, target: Any) -> Optional[Export]:
        tpg = self._tpg(target)
        lun = self._lun(tpg) if tpg is not None else None
        if lun is None or not lun.storage_object.name.startswith(SO_PREFIX):
            return None  # not ours
        so = lun.storage_object
        grants: Iterable[Grant] = (Grant(acl.node_wwn, self._chap_of(acl)) for acl in tpg.node_acls)
        return Export(target.wwn, DATA_LUN, so.wwn, so.udev_path, bool(so.readonly), tuple(grants))

    # -- the saved configuration (lio_config) --

    def _save_path(self) -> str:
        return self.save_file or str(self.rts.root.default_save_file)

    def _changed(self, target_iqn: str, *so_names: str) -> None:
        self._unsaved.setdefault(target_iqn, set()).update(so_names)

    def _unsaved_after_crash(self, target_iqn: str) -> bool:
        """Whether the saved file holds the export otherwise than LIO does (a crash came between a change and
        its save): then the export is to be saved as if changed, so that the retry converges."""
        if target_iqn in self._unsaved:
            return False  # this process's next save writes it anyway
        document = lio_config.read(self._save_path())
        if document is not None and lio_config.holds(document, target_iqn, self._saved_form(target_iqn)):
            return False
        self._changed(target_iqn)
        return True

    def _saved_form(self, target_iqn: str) -> Optional[lio_config.Entries]:
        """The export's entries in the saved file, read from its live objects (None: no export to save)."""
        _target, tpg = self._opened_tpg(target_iqn)
        lun = self._lun(tpg) if tpg is not None else None
        if lun is None:
            return None
        so = lun.storage_object
        acls = []
        for acl in tpg.node_acls:
            mapped = self._mapped_lun(acl)
            credentials = {name: getattr(acl, name) or "" for name in CHAP_ATTRIBUTES}  # as set, unchecked
            acls.append(lio_config.acl_entry(acl.node_wwn, credentials, DATA_LUN,
                                             None if mapped is None else bool(mapped.write_protect)))
        attributes = {name: tpg.get_attribute(name) for name in TPG_ATTRIBUTES}
        portals = [(portal.ip_address, int(portal.port)) for portal in tpg.network_portals]
        return (lio_config.storage_object_entry(so.name, so.udev_path, so.wwn, bool(so.readonly)),
                lio_config.target_entry(target_iqn, TPG_TAG, bool(tpg.enable), attributes, portals, DATA_LUN,
                                        so.name, acls))

    @_locked
    def persist(self) -> None:
        """Save the exports changed since the last save: their entries replaced in the saved file
        (lio_config), not every object dumped; rtslib's whole save when the file is missing or not rtslib's
        form, or no change was seen (a caller's explicit save)."""
        unsaved, self._unsaved = self._unsaved, {}
        try:
            document = lio_config.read(self._save_path()) if unsaved else None
            if document is None:
                self.rts.RTSRoot().save_to_file(self.save_file)
                return
            for target_iqn, so_names in sorted(unsaved.items()):
                document = lio_config.merged(document, target_iqn, so_names, self._saved_form(target_iqn))
            lio_config.write(self._save_path(), document)
        except BaseException:
            for target_iqn, so_names in unsaved.items():
                self._changed(target_iqn, *so_names)
            raise

    def sweep_interrupted_writes(self) -> List[str]:  # their temp files hold CHAP secrets
        with self.transaction():
            path = self._save_path()
            return sweep_temp_files(os.path.dirname(path) or ".", of=os.path.basename(path))
