"""What this node has staged and published, kept as one durable record per volume.

The kernel's mount table says *what* is mounted; these records add *how* it
was asked for (capability, read-only), which the spec's ALREADY_EXISTS and
single-writer rules need.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from basalt_core import device_use, ext4_grow, iscsiadm
from basalt_core.atomicfile import read_json, remove_durably, sweep_temp_files, write_json
from basalt_core.facts import volume_id_of_target
from basalt_core.model import Volume


@dataclass
class Target:
    readonly: bool
    block: bool
    mode: int


@dataclass
class NodeRecord:
    volume_id: str
    staging_path: str = ""
    block: bool = False
    fs_type: str = ""
    mode: int = 0
    targets: Dict[str, Target] = field(default_factory=dict)
    #: set for inline ephemeral volumes: the pool volume created for them
    ephemeral_volume_id: str = ""
    #: "major:minor" of the device staged: marks this volume's mounts even once the device is gone
    device_number: str = ""
    #: set for volumes attached over iSCSI from a storage host
    iscsi_target: str = ""
    iscsi_portals: List[str] = field(default_factory=list)
    serial: str = ""
    #: saved just before NodeStage makes a filesystem, cleared once it is made and mounted
    formatting: bool = False
    #: the dm-multipath map staged on (name, and uuid to recognise it): flushed at unstage even when every
    #: path is lost and no disk leads to it any more
    multipath_map: str = ""
    multipath_uuid: str = ""


@dataclass(frozen=True)
class StraySession:
    """A live session to a Basalt target that no node record names, and what uses its disks (device_use):
    one in use is never logged out."""

    session: iscsiadm.Session
    users: Tuple[str, ...] = ()


def volume_instance(volume: Volume) -> str:
    """What tells a pool volume from an earlier one of the same id (NodeState.grow_mark)."""
    return repr(volume.created_at)


class NodeState:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, volume_id: str) -> str:
        return self._stem(volume_id) + ".json"

    def _stem(self, volume_id: str) -> str:
        # CSI ids may hold any character; a digest makes a safe file name.
        return os.path.join(self.directory, hashlib.sha256(volume_id.encode()).hexdigest())

    def grow_mark(self, volume_id: str, instance: str = "") -> str:
        """Where an offline grow of the volume keeps its mark and undo files (``ext4_grow``).

        *instance* tells a pool volume from an earlier one of the same id (ids come from names): an undo file
        of a volume deleted mid-grow is never replayed into its successor, even a restore of a snapshot of it
        (same filesystem UUID), and start-up drops it (:meth:`drop_stray_grows`).
        """
        stem = self._stem(volume_id)
        return f"{stem}-{hashlib.sha256(instance.encode()).hexdigest()[:16]}" if instance else stem

    def load(self, volume_id: str) -> Optional[NodeRecord]:
        return self._read(self._path(volume_id))

    @staticmethod
    def _read(path: str) -> Optional[NodeRecord]:
        doc = read_json(path)
        if doc is None:
            return None
        targets = {path: Target(**t) for path, t in doc.pop("targets", {}).items()}
        return NodeRecord(targets=targets, **doc)

    def all(self) -> List[NodeRecord]:
        """Every record (for metrics, Probe and the operator command), in no particular order."""
        found = []
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                record = self._read(os.path.join(self.directory, name))
                if record is not None:
                    found.append(record)
        return found

    def save(self, record: NodeRecord) -> None:
        write_json(self._path(record.volume_id), asdict(record))

    def drop(self, volume_id: str) -> None:
        remove_durably(self._path(volume_id))

    def records(self) -> List[NodeRecord]:
        return [record for record in map(self._read, sorted(glob.glob(os.path.join(self.directory, "*.json"))))
                if record is not None]

    def iscsi_targets(self) -> Set[str]:
        """The iSCSI targets this node's records name (what it logged in to, or is logging in to)."""
        return {record.iscsi_target for record in self.all() if record.iscsi_target}

    def stray_sessions(self, base_iqn: str, kernel: Optional[device_use.Kernel] = None) -> List[StraySession]:
        """Live sessions to Basalt's targets (``BASE:vol-...``) that no record names: a node's leftovers
        (``basalt doctor`` and ``gc``, ``basalt_orphans{kind="session"}``), each with what uses its disks (a
        mount, a multipath map, ...); anything else is not Basalt's."""
        if not iscsiadm.installed():
            return []
        owned, base = self.iscsi_targets(), base_iqn + ":"
        sys_root = (kernel or device_use.HOST).sys_root
        return [StraySession(session, tuple(device_use.users(iscsiadm.session_disks(session.sid, sys_root=sys_root),
                                                             kernel)))
                for session in iscsiadm.sessions() if session.target_iqn.startswith(base)
                and volume_id_of_target(session.target_iqn) and session.target_iqn not in owned]

    def local_volume_ids(self) -> Set[str]:
        """Pool volumes this node stages, publishes or is staging (not those attached over iSCSI)."""
        return {r.ephemeral_volume_id or r.volume_id for r in self.records() if not r.iscsi_target}

    def drop_stray_grows(self, wanted: Set[str]) -> List[str]:
        """Forget the interrupted grows of pool volumes that are gone (their marks carry an instance and are not
        *wanted*); return what was removed.  Grows of volumes attached from a storage host stay."""
        removed: List[str] = []
        for mark in glob.glob(os.path.join(glob.escape(self.directory), "*-*" + ext4_grow.MARK_SUFFIX)):
            stem = mark[: -len(ext4_grow.MARK_SUFFIX)]
            if stem not in wanted:
                removed += ext4_grow.discard(stem)
        return removed

    def clean_leftovers(self) -> List[str]:
        """Remove the temp files of record writes and the undo files of grows a crash interrupted; return them."""
        return sweep_temp_files(self.directory) + ext4_grow.sweep(self.directory)
