"""The iSCSI target side, independent of the target implementation (tgt or LIO).

One target per volume, one data LUN per target, an ACL entry per node that
may attach it (its initiator IQN, never "ALL"), and CHAP credentials per
grant.  The agent's ControllerPublish maps to ``ensure_export`` +
``ensure_grant``; ControllerUnpublish to ``revoke_grant`` (and
``remove_export`` when no grant is left); ``persist`` makes the state survive
a restart of the target service and of the host.

Every operation is idempotent and returns whether it changed something, so a
retried CSI call (the normal case) is cheap and safe.
"""

from __future__ import annotations

import abc
import hashlib
import re
from dataclasses import dataclass, field
from typing import ContextManager, Dict, List, Optional, Tuple

from .errors import InvalidRequest

#: the agent's --iscsi-base-iqn and the iscsi_export module's base_iqn by default: targets are BASE:<volume id>
DEFAULT_BASE_IQN = "iqn.2026-11.dev.basalt"
# RFC 3720 3.2.6.1: at most 223 bytes, UTF-8.  We produce and accept only the
# ASCII subset a stringprep'd name can hold without escaping trouble.
MAX_IQN_BYTES = 223
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"^iqn\.(\d{{4}})-(\d{{2}})\.{_LABEL}(\.{_LABEL})*(:[a-z0-9.:-]+)?$")
_EUI = re.compile(r"^eui\.[0-9A-F]{16}$")
_NAA = re.compile(r"^naa\.([0-9A-F]{16}|[0-9A-F]{32})$")
_SUFFIX_UNSAFE = re.compile(r"[^a-z0-9.-]+")
# A SCSI unit serial number (VPD page 0x80) is printable ASCII; tgt keeps at
# most 36 bytes (SCSI_SN_LEN) and LIO 36 too.  We use a short hex string.
SERIAL_LEN = 16
_SERIAL = re.compile(r"^[0-9A-Za-z_.-]{1,36}$")


@dataclass(frozen=True)
class Chap:
    """CHAP credentials of one grant.

    ``user``/``password``: the initiator proves itself to the target
    (tgt "incominguser", LIO ACL userid/password).  ``mutual_*``: the target
    proves itself to the initiator (tgt "outgoinguser", LIO mutual_userid).
    RFC 3720 wants secrets of 12 to 16 bytes for interoperability; open-iscsi
    refuses longer than 256 and LIO/tgt shorter than 12 in some versions.
    """

    user: str
    password: str = field(repr=False)
    mutual_user: Optional[str] = None
    mutual_password: Optional[str] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for what, value in (("CHAP user", self.user), ("CHAP password", self.password)):
            _check_chap_text(value, what)
        if (self.mutual_user is None) != (self.mutual_password is None):
            raise InvalidRequest("mutual CHAP needs both a user and a password")
        if self.mutual_user is not None and self.mutual_password is not None:
            _check_chap_text(self.mutual_user, "mutual CHAP user")
            _check_chap_text(self.mutual_password, "mutual CHAP password")
            if self.mutual_password == self.password:
                raise InvalidRequest("the mutual CHAP secret must differ from the initiator's secret (RFC 3720 8.2.1)")

    @property
    def mutual(self) -> bool:
        return self.mutual_user is not None

    def secrets(self) -> Tuple[str, ...]:
        """The values to redact from command lines and logs."""
        return tuple(s for s in (self.password, self.mutual_password) if s)

    def users(self) -> Tuple[str, ...]:
        """The account names these credentials use (the initiator's, then the mutual one)."""
        return (self.user,) + ((self.mutual_user,) if self.mutual_user else ())


def _check_chap_text(value: str, what: str) -> None:
    # tgtadm and tgt's config file split on whitespace; iscsiadm node files on
    # '=' and newline: keep CHAP names and secrets to printable, blank-free ASCII.
    if not value or len(value) > 255 or value.startswith("-") or not all(33 <= ord(c) <= 126 for c in value):
        raise InvalidRequest(f"{what} must be 1-255 printable ASCII characters without blanks, not starting with '-'")
    if any(c in value for c in "#\"'\\<>"):
        raise InvalidRequest(f"{what} must not contain # \" ' \\ < or >")


@dataclass(frozen=True)
class Grant:
    """One node allowed to log in to one target."""

    initiator_iqn: str
    chap: Optional[Chap] = None


@dataclass(frozen=True)
class Export:
    """A volume as the target service exposes it now (``TargetBackend.exports``).

    ``grants`` carry CHAP only when the backend can read the secrets back
    (LIO can; tgt cannot — TgtBackend fills them from its own grant record).
    """

    target_iqn: str
    lun: int
    serial: str
    device: str
    read_only: bool
    grants: Tuple[Grant, ...] = ()

    def grant_for(self, initiator_iqn: str) -> Optional[Grant]:
        for grant in self.grants:
            if grant.initiator_iqn == initiator_iqn:
                return grant
        return None


class TargetBackend(abc.ABC):
    """What the agent needs from an iSCSI target implementation.

    The target service's state is shared by every volume: each method holds
    :meth:`transaction`, and a caller that needs several calls to see one
    consistent state (publish, unpublish, reconciliation) holds it around them.
    """

    #: the LUN number the volume's data LUN gets (tgt: 1, LUN 0 is its controller; LIO: 0)
    lun: int = 0

    @abc.abstractmethod
    def transaction(self) -> ContextManager[None]:
        """Exclusive use of the target service's shared state (threads and processes); re-entrant."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise StorageError unless the target service answers; never waits for :meth:`transaction`."""

    @abc.abstractmethod
    def ensure_export(self, target_iqn: str, device: str, serial: str, read_only: bool) -> bool:
        """Make *device* the data LUN of target *target_iqn*, unit serial *serial*.

        Raises Conflict when the target exists with another device, serial or
        read-only mode (changing them under a logged-in initiator is unsafe).
        """

    @abc.abstractmethod
    def ensure_grant(self, target_iqn: str, initiator_iqn: str, chap: Optional[Chap]) -> bool:
        """Allow *initiator_iqn* (and only it) to log in, with *chap* when given."""

    @abc.abstractmethod
    def revoke_grant(self, target_iqn: str, initiator_iqn: str) -> bool:
        """Remove the node's ACL entry and credentials; close its sessions where the backend can."""

    @abc.abstractmethod
    def remove_export(self, target_iqn: str) -> bool:
        """Delete the target (after its grants are gone); False when it did not exist."""

    @abc.abstractmethod
    def exports(self) -> List[Export]:
        """The live state, for reconciliation after an agent restart."""

    @abc.abstractmethod
    def persist(self) -> None:
        """Write the configuration so that it survives a restart of the target service and the host."""

    def saved_grants(self) -> Dict[str, Dict[str, Optional[Chap]]]:
        """The grants this backend can restore, per target IQN: initiator IQN -> CHAP (None: without CHAP).

        Reconciliation re-creates a recorded publication's grant from this
        (CSI records never hold secrets).  Default: the live grants, for
        backends that read secrets back and whose service restores its own
        saved configuration (LIO: saveconfig.json); tgt overrides it with its
        grant record, which outlives tgtd.
        """
        return {item.target_iqn: {g.initiator_iqn: g.chap for g in item.grants} for item in self.exports()}

    def sweep_interrupted_writes(self) -> List[str]:
        """Remove what writes of this backend's own files a crash interrupted left (call in a transaction at
        start-up); return their paths.  Default: none (LIO's saved configuration is rtslib's to write)."""
        return []

    def export(self, target_iqn: str) -> Optional[Export]:
        for item in self.exports():
            if item.target_iqn == target_iqn:
                return item
        return None

    def withdraw(self, target_iqn: str, initiator_iqn: str) -> Tuple[bool, bool]:
        """Revoke *initiator_iqn*'s grant and delete the target when no grant is left.

        Returns (changed, the target is gone).
        """
        with self.transaction():
            changed = self.revoke_grant(target_iqn, initiator_iqn)
            remaining = self.export(target_iqn)
            if remaining is not None and remaining.grants:
                return changed, False
            return self.remove_export(target_iqn) or changed, True


# -- names -----------------------------------------------------------------


def check_iqn(text: str, what: str = "iSCSI name") -> str:
    """Return *text* if it is a valid iSCSI name (iqn., eui. or naa. form); raise InvalidRequest otherwise.

    ``iqn.`` names must be lower case (RFC 3722 stringprep maps case; tgt and
    LIO compare bytes, so a mixed-case name would silently never match).
    Names are also command-line operands: nothing starting with '-' or
    holding blanks gets through.
    """
    if not isinstance(text, str) or not text:
        raise InvalidRequest(f"{what} is empty")
    if len(text.encode()) > MAX_IQN_BYTES:
        raise InvalidRequest(f"{what} {text!r} is longer than {MAX_IQN_BYTES} bytes")
    if text.startswith("iqn."):
        match = _IQN.match(text)
        if not match:
            raise InvalidRequest(f"{what} {text!r} is not iqn.YYYY-MM.reverse.domain[:name] in lower case")
        if not 1 <= int(match.group(2)) <= 12:
            raise InvalidRequest(f"{what} {text!r} has an invalid month")
        return text
    if _EUI.match(text) or _NAA.match(text):
        return text
    raise InvalidRequest(f"{what} {text!r} is not an iqn., eui. or naa. name")


def target_iqn_for(base_iqn: str, volume_id: str) -> str:
    """The target IQN of a volume: ``<base_iqn>:<volume id, sanitised>``.

    *base_iqn* is an iqn. name without a ':' part (e.g. ``iqn.2026-11.io.basalt``).
    The volume id is lower-cased and characters outside [a-z0-9.-] become '-';
    when that is lossy or too long, a hash of the exact id is appended so two
    volume ids never share a target.
    """
    return _name_under(base_iqn, volume_id, "volume id", "target IQN")


def initiator_iqn_for(base_iqn: str, node_id: str) -> str:
    """A node's initiator IQN derived from its CSI node id: ``<base_iqn>:<node id, sanitised>``.

    The same rule as :func:`target_iqn_for`, so the controller computes what
    the node agent writes into its initiatorname file, without a map.
    """
    return _name_under(base_iqn, node_id, "node id", "initiator IQN")


def _name_under(base_iqn: str, text: str, what: str, result: str) -> str:
    check_iqn(base_iqn, "base IQN")
    if not base_iqn.startswith("iqn.") or ":" in base_iqn:
        raise InvalidRequest(f"base IQN {base_iqn!r} must be an iqn. name without a ':' part")
    if not text:
        raise InvalidRequest(f"{what} is empty")
    clean = _SUFFIX_UNSAFE.sub("-", text.lower()).strip("-.") or "vol"
    room = MAX_IQN_BYTES - len(base_iqn) - 1
    if clean != text or len(clean) > room:
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        clean = f"{clean[: max(0, room - 13)]}-{digest}".lstrip("-")
    if room < 13:
        raise InvalidRequest(f"base IQN {base_iqn!r} leaves no room for a {what}")
    return check_iqn(f"{base_iqn}:{clean}", result)


def serial_for(volume_id: str) -> str:
    """A SCSI unit serial number for a volume: 16 hex digits of SHA-256 of the id.

    Short (tgt and LIO keep at most 36 bytes, udev builds ``scsi-S…`` links
    from it), printable, and unique per volume with overwhelming probability;
    the node finds its disk by it (``iscsiadm.wait_for_device``).
    """
    if not volume_id:
        raise InvalidRequest("volume id is empty")
    return hashlib.sha256(volume_id.encode()).hexdigest()[:SERIAL_LEN]


def check_serial(serial: str) -> str:
    if not _SERIAL.match(serial or ""):
        raise InvalidRequest(f"unit serial {serial!r} must be 1-36 characters of [0-9A-Za-z_.-]")
    return serial
