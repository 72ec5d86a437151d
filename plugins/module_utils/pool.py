"""The interface every pool (file, lvm, lvmthin) implements.

A pool keeps records (volume and snapshot metadata) and data (images, LVs),
and on the node attaches a volume as a block device.  The rules that are the
same for every pool (idempotency, compatibility, crash recovery) live in
``volumes.py`` and are written once against this interface.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Collection, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

from .errors import Conflict, InUse, InvalidRequest
from .freeze import DEFAULT_LIMIT as DEFAULT_FREEZE_LIMIT
from .model import Snapshot, Volume
from .sizes import MiB


@dataclass(frozen=True)
class Storage:
    """The pool's own storage: bytes in all and bytes taken (by anything); thin pools add fill levels."""

    size: int
    allocated: int
    data_percent: Optional[float] = None
    metadata_percent: Optional[float] = None


@dataclass(frozen=True)
class Usage:
    """What operators watch of a pool (metrics, ``basalt pools``)."""

    storage: Storage
    #: bytes a new volume may still take (thin: virtual, under the over-provisioning ratio)
    available: int
    #: bytes Basalt's volumes and snapshots were given
    provisioned: int
    volumes: int
    snapshots: int


@dataclass(frozen=True)
class Orphan:
    """Data under Basalt's names that no record owns (doctor reports it, gc removes it)."""

    kind: str  # "image", "lv", "loop device"
    name: str  # a path, VG/LV or /dev/loopN
    reason: str
    #: what uses it (device_use): an orphan in use is reported, never removed
    users: Tuple[str, ...] = field(default=(), compare=False)


class Pool(abc.ABC):
    kind: str = ""
    #: creating a volume's data itself refuses what does not fit (lvcreate), so without a
    #: capacity limit no free-space check is needed before it
    allocation_checks_space = False
    #: the first record of a new volume refuses a name that exists (lvcreate: AlreadyExists), so a
    #: create of a blank volume can come before the look-up of an earlier attempt, made only on refusal
    creates_exclusively = False
    #: probe() runs commands (so Probe need not run it at every call)
    probe_runs_commands = False
    #: the record lives with the data (an LV's tags), so releasing the data drops the record in
    #: the same step: no "deleting" record is needed first for a crash to converge
    releases_record_with_data = False
    #: longest a mounted volume's filesystem stays frozen while a pool copies it (seconds)
    freeze_limit = DEFAULT_FREEZE_LIMIT

    def __init__(self, capacity_limit: int = 0) -> None:
        #: bytes that may be provisioned in all (0: no limit beyond the pool's own space)
        self.capacity_limit = capacity_limit
        # Held from a space check to the record that claims the space, so
        # concurrent creates of different names cannot overcommit the pool.
        self.allocation = threading.Lock()

    @property
    def unit(self) -> int:
        """Allocation granularity in bytes: every size the pool hands out is a multiple."""
        return MiB

    def operation(self) -> ContextManager[None]:
        """Scope of one operation on objects the caller holds locked (``volumes.py`` opens it).

        Within it a pool may reuse what it read about those objects instead of
        reading them again; this one reads every time.
        """
        return contextlib.nullcontext()

    @property
    def snapshot_parameter_keys(self) -> Tuple[str, ...]:
        """CreateSnapshot parameters (snapshot class) this pool understands."""
        return ()

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the pool lives (directory, VG), for messages and pool specs."""

    @abc.abstractmethod
    def probe(self) -> None:
        """Raise Precondition when the pool cannot serve requests."""

    # -- records -----------------------------------------------------------
    @abc.abstractmethod
    def load_volume(self, volume_id: str) -> Optional[Volume]: ...

    @abc.abstractmethod
    def save_volume(self, volume: Volume) -> None: ...

    def ready_when_allocated(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> bool:
        """Whether allocating *volume* is all of its provisioning (its first record can say ready)."""
        return False

    def create_volume(self, volume: Volume) -> None:
        """Write the first record of a new volume (claiming its space); pools may allocate with it."""
        self.save_volume(volume)

    @abc.abstractmethod
    def forget_volume(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def volume_ids(self) -> List[str]: ...

    def all_volumes(self) -> List[Volume]:
        """Every volume record; pools that can read them in one go override this."""
        return [v for v in map(self.load_volume, self.volume_ids()) if v is not None]

    @abc.abstractmethod
    def load_snapshot(self, snapshot_id: str) -> Optional[Snapshot]: ...

    @abc.abstractmethod
    def save_snapshot(self, snapshot: Snapshot) -> None: ...

    @abc.abstractmethod
    def forget_snapshot(self, snapshot_id: str) -> None: ...

    @abc.abstractmethod
    def snapshot_ids(self) -> List[str]: ...

    def all_snapshots(self) -> List[Snapshot]:
        return [s for s in map(self.load_snapshot, self.snapshot_ids()) if s is not None]

    # -- data --------------------------------------------------------------
    @abc.abstractmethod
    def provision_volume(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> Optional[str]:
        """Create the volume's data, blank or as a copy of *source*; return the copy method.

        Must be safe to call again after a crash part-way through.
        """

    @abc.abstractmethod
    def release_volume(self, volume: Volume) -> None:
        """Remove the volume's data; a no-op when it is already gone."""

    @abc.abstractmethod
    def resize_volume(self, volume: Volume, size: int) -> None: ...

    @abc.abstractmethod
    def take_snapshot(self, snapshot: Snapshot, volume: Volume) -> Optional[str]:
        """Create the snapshot's data from *volume*; return the copy method."""

    @abc.abstractmethod
    def release_snapshot(self, snapshot: Snapshot) -> None: ...

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Bytes the pool's own storage can still give."""

    def provisioned_bytes(self) -> int:
        return sum(v.size for v in self.all_volumes()) + sum(s.size for s in self.all_snapshots())

    @abc.abstractmethod
    def storage(self) -> Storage:
        """Size and use of the pool's own storage (filesystem, VG, thin pool)."""

    def usage(self) -> Usage:
        volumes, snapshots = self.all_volumes(), self.all_snapshots()
        provisioned = sum(v.size for v in volumes) + sum(s.size for s in snapshots)
        return Usage(self.storage(), self.available_bytes(), provisioned, len(volumes), len(snapshots))

    def available_bytes(self) -> int:
        """Bytes a new volume may still take: free space, bounded by the capacity limit."""
        free = self.free_bytes()
        if self.capacity_limit:
            return max(0, min(free, self.capacity_limit - self.provisioned_bytes()))
        return free

    @abc.abstractmethod
    def busy_reason(self, volume: Volume) -> Optional[str]:
        """Why the volume's data cannot be removed now (attached somewhere), or None."""

    @abc.abstractmethod
    def volume_problem(self, volume: Volume) -> Optional[str]:
        """What is wrong with the volume's data (missing, wrong size), or None when healthy."""

    def volume_problems(self, volumes: List[Volume]) -> Dict[str, Optional[str]]:
        """volume_problem for many volumes; pools that can check them in one go override this."""
        return {volume.id: self.volume_problem(volume) for volume in volumes}

    # -- node side ---------------------------------------------------------
    @abc.abstractmethod
    def attach(self, volume: Volume) -> str:
        """Make the volume a block device on this host (idempotent); return its path."""

    @abc.abstractmethod
    def attached_device(self, volume: Volume) -> Optional[str]: ...

    def attached_devices(self, volumes: Sequence[Volume]) -> Dict[str, Optional[str]]:
        """:meth:`attached_device` of many volumes, by id; pools that can look once override this."""
        return {v.id: self.attached_device(v) for v in volumes}

    @abc.abstractmethod
    def detach(self, volume: Volume) -> bool:
        """Undo attach; False when it was not attached."""

    @abc.abstractmethod
    def refresh(self, volume: Volume) -> None:
        """Make an attached device see its volume's new size."""

    def detach_strays(self, wanted: Collection[str]) -> List[str]:
        """Detach every device over the pool's storage but those of the *wanted* volume ids (start-up,
        when nothing else runs: an interrupted operation's devices); return what was detached."""
        return []

    def clean_leftovers(self) -> List[str]:
        """Remove debris of interrupted writes (not volumes); return what was removed."""
        return []

    def orphans(self) -> List[Orphan]:
        """Data named as Basalt names it that no record owns, in the order to remove it."""
        return []

    def remove_orphan(self, orphan: Orphan) -> None:
        """Remove *orphan* if it still is one and nothing uses it (read again first); Conflict or InUse otherwise."""
        current = next((found for found in self.orphans() if found == orphan), None)
        if current is None:
            raise Conflict(f"{orphan.kind} {orphan.name} is no longer an orphan: left in place")
        if current.users:
            raise InUse(f"{orphan.kind} {orphan.name} is in use ({'; '.join(current.users)}): left in place")
        self._remove_orphan(current)

    def _remove_orphan(self, orphan: Orphan) -> None:
        raise InvalidRequest(f"the {self.kind} pool has no {orphan.kind} orphans to remove")
