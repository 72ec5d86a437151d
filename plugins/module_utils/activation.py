"""Making an LV a block device on this host, and undoing it.

Two activators behind one interface:

* ``DeviceMapperActivator``: ``lvchange -aey`` / ``-an``, the device path the
  one LVM reports (never guessed).  The normal case.
* ``LoopActivator``: for kernels without device-mapper.  A linear LV that is
  one contiguous segment on one PV is a byte range of that PV, so a loop
  device at that offset and size *is* the LV's data.  Thin LVs and snapshots
  have no such range and cannot be reached this way.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import os
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

from . import device_wait, dm_status, losetup, lvm
from .errors import Precondition, StorageError

log = logging.getLogger(__name__)


class Activator(abc.ABC):
    name = ""

    def __init__(self, settings: lvm.LvmSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def activate(self, volume: lvm.LogicalVolume) -> str:
        """Make *volume* a block device (idempotent); return its path."""

    @abc.abstractmethod
    def device(self, volume: lvm.LogicalVolume) -> Optional[str]:
        """The block device of *volume* if it is active here."""

    @abc.abstractmethod
    def deactivate(self, volume: lvm.LogicalVolume, *, activated: bool = False) -> bool:
        """Undo activate; False when it was not active.

        *activated*: the caller activated it after reading *volume* (whose state then predates that).
        """

    @abc.abstractmethod
    def refresh(self, volume: lvm.LogicalVolume) -> None:
        """Make the active device match the LV's (new) size."""

    def release(self, volume: lvm.LogicalVolume) -> None:
        """Let go of *volume* before ``lvremove``."""
        self.deactivate(volume)

    def current(self, volume: lvm.LogicalVolume) -> Optional[lvm.LogicalVolume]:
        """*volume* as read earlier (the pool's index), with whatever of its state is not VG metadata read now;
        None when that cannot be told (the caller reads the LV with ``lvs``)."""
        return volume

    def unmapped_location(self, volume: lvm.LogicalVolume) -> Optional[lvm.DataLocation]:
        """Where *volume*'s bytes can be written straight on its PV, when nothing maps it; else None."""
        return None

    def detach_strays(self, vg: str, owned: Collection[lvm.LogicalVolume],
                      wanted: Collection[lvm.LogicalVolume]) -> List[str]:
        """Undo activations no *wanted* LV needs, left by interrupted operations (start-up); return them.

        *owned* are the pool's own LVs (its tag and names); every other LV of *vg* is somebody else's.
        """
        return []


class DeviceMapperActivator(Activator):
    name = "dm"

    def activate(self, volume: lvm.LogicalVolume) -> str:
        """The LV's device path once it is mapped: no ``lvchange`` when the kernel maps it already (LVM maps a
        new LV: a NodeStage after CreateVolume), no ``lvs`` read-back when the kernel says it is mapped and
        *volume* carries the path LVM reports; udev's names waited for."""
        name = dm_status.dm_name(volume.vg_name, volume.name)
        state = dm_status.state(name)
        if state is None or not state.mapped:
            lvm.activate(volume.vg_name, volume.name, settings=self.settings)
            state = dm_status.state(name)
        path = volume.path
        if state is None or not path:  # the kernel cannot tell: LVM's report says
            current = lvm.logical_volume(volume.vg_name, volume.name, settings=self.settings)
            mapped, path = current is not None and current.attr.active, current.path if current else ""
        else:
            mapped = state.mapped
        if not mapped or not path:
            raise Precondition(
                f"LVM reports {volume.full_name} inactive after activating it: is device-mapper available? "
                "(hosts without it can use loop activation)"
            )
        return device_wait.appeared(path, f"activated LV {volume.full_name}")

    def device(self, volume: lvm.LogicalVolume) -> Optional[str]:
        return volume.path if volume.attr.active else None

    def deactivate(self, volume: lvm.LogicalVolume, *, activated: bool = False) -> bool:
        if not (activated or volume.attr.active):
            return False
        lvm.deactivate(volume.vg_name, volume.name, settings=self.settings)
        return True

    def refresh(self, volume: lvm.LogicalVolume) -> None:
        lvm.refresh(volume.vg_name, volume.name, settings=self.settings)

    def release(self, volume: lvm.LogicalVolume) -> None:
        """Nothing: ``lvremove --yes`` takes an active, unopened LV down itself (one command fewer)."""

    def current(self, volume: lvm.LogicalVolume) -> Optional[lvm.LogicalVolume]:
        """Its lv_attr state and open characters from the kernel (dm_status), as ``lvs`` reads them: activation
        moves no seqno, so the index cannot know them."""
        found = dm_status.state(dm_status.dm_name(volume.vg_name, volume.name))
        if found is None:
            return None
        raw = volume.attr.raw
        flags = ("a" + ("o" if found.open_count > 0 else "-")) if found.mapped else "--"
        return dataclasses.replace(volume, attr=lvm.LvAttr.parse(raw[:4] + flags + raw[6:]))

    def detach_strays(self, vg: str, owned: Collection[lvm.LogicalVolume],
                      wanted: Collection[lvm.LogicalVolume]) -> List[str]:
        """Deactivate every *owned* LV that is active but not *wanted*: what a copy, a clear of a new LV's ends
        or a NodeStage killed before its record left active (an active thin LV also keeps its thin pool busy).

        Never another LV of the VG (not the pool's: a thin pool, foreign LVs), never an open one (something
        uses it: left, and logged), never a classic snapshot (its activation follows its origin's).
        """
        keep = {volume.name for volume in wanted}
        deactivated = []
        for volume in owned:
            if volume.name in keep or not volume.attr.active or volume.attr.snapshot:
                continue
            if volume.attr.device_open:
                log.warning("%s is active and open, and no record wants it: left active", volume.full_name)
                continue
            try:
                self.deactivate(volume)
            except StorageError as error:  # e.g. opened meanwhile: start-up goes on, a later start tries again
                log.warning("%s could not be deactivated: %s", volume.full_name, error)
                continue
            deactivated.append(f"{volume.full_name} (deactivated)")
        return deactivated


class LoopActivator(Activator):
    name = "loop"

    def __init__(self, settings: lvm.LvmSettings) -> None:
        super().__init__(settings)
        # Extent size and PV data offsets are fixed once a VG and its PVs exist;
        # re-read only when an LV lies on a PV not seen before (vgextend).
        self._layout: Dict[str, Tuple[int, Sequence[lvm.PhysicalVolume]]] = {}

    def _location(self, volume: lvm.LogicalVolume) -> lvm.DataLocation:
        if volume.attr.thin_volume or volume.attr.snapshot:
            raise Precondition(
                f"{volume.full_name} is a thin or snapshot LV: without the device-mapper kernel driver "
                "(dm_thin_pool, dm_snapshot) its data cannot be reached"
            )
        known = self._layout.get(volume.vg_name)
        devices = {r.device for r in volume.seg_pe_ranges}
        if known is None or not devices <= {pv.name for pv in known[1]}:
            group = lvm.volume_group(volume.vg_name, settings=self.settings)
            known = (group.extent_size, lvm.physical_volumes(volume.vg_name, settings=self.settings))
            self._layout[volume.vg_name] = known
        return lvm.linear_location(volume, known[1], known[0])

    def _find(self, volume: lvm.LogicalVolume) -> Optional[losetup.LoopDevice]:
        """The volume's loop device: at its offset, within its extents (smaller only before a refresh)."""
        location = self._location(volume)
        found = losetup.find(location.device, location.offset)
        return found if found is not None and 0 < found.size_limit <= location.length else None

    def activate(self, volume: lvm.LogicalVolume) -> str:
        location = self._location(volume)
        found = losetup.find(location.device, location.offset)
        if found is not None and not 0 < found.size_limit <= location.length:
            # Reaching past the LV's extents: left by an interrupted operation over a removed LV
            # (start-up detaches those); never the volume's own.
            raise Precondition(f"{found.device} covers {location.device} from {location.offset} for "
                               f"{found.size_limit or 'all'} bytes, beyond {volume.full_name} "
                               f"({location.length} bytes): a stale device; restart the agent to detach it")
        if found is not None and not found.detaching:  # one being detached would unbind under its new user
            if found.size_limit < location.length:  # the LV grew since it was attached
                losetup.set_size_limit(found.device, location.length)
            return found.device
        device, _changed = losetup.ensure_attached(location.device, offset=location.offset, size_limit=location.length)
        return device.device

    def device(self, volume: lvm.LogicalVolume) -> Optional[str]:
        if volume.attr.thin_volume or volume.attr.snapshot:
            return None
        found = self._find(volume)
        return found.device if found else None

    def deactivate(self, volume: lvm.LogicalVolume, *, activated: bool = False) -> bool:
        found = self._find(volume)  # looked up afresh: *activated* changes nothing
        if found is None:
            return False
        losetup.detach(found.device)
        return True

    def unmapped_location(self, volume: lvm.LogicalVolume) -> Optional[lvm.DataLocation]:
        """Its range of the PV while no loop device maps it: written there, no attach and detach is needed."""
        location = self._location(volume)
        return None if losetup.find(location.device, location.offset) else location

    def refresh(self, volume: lvm.LogicalVolume) -> None:
        location = self._location(volume)  # still one contiguous range, or Precondition
        found = self._find(volume)
        if found is not None and found.size_limit != location.length:
            losetup.set_size_limit(found.device, location.length)

    def detach_strays(self, vg: str, owned: Collection[lvm.LogicalVolume],
                      wanted: Collection[lvm.LogicalVolume]) -> List[str]:
        """Detach every loop device over the VG's PVs but those of *wanted* LVs; return them.

        A loop device lying within an LV that is not *owned* is somebody else's: left alone.
        """
        pvs = lvm.physical_volumes(vg, settings=self.settings)
        loops = losetup.over([pv.name for pv in pvs])
        if not loops:  # (every start after a clean stop) then neither the extent size nor the whole VG's
            return []  # listing is needed: two LVM commands of 1-3 s each at 10,000 LVs
        extent = lvm.volume_group(vg, settings=self.settings).extent_size
        ours = {volume.name for volume in owned}
        keep = set()
        for volume in wanted:
            with contextlib.suppress(Precondition):  # not reachable by loop: has no loop device to keep
                keep.add(self._find(volume))
        foreign = [(pv.name, pv.pe_start + r.first * extent, pv.pe_start + (r.first + r.count) * extent)
                   for lv in lvm.logical_volumes(vg, None, settings=self.settings) if lv.name not in ours
                   for segment in lv.segments for r in segment.pe_ranges for pv in pvs if pv.name == r.device]
        detached = []
        for loop in loops:
            end = loop.offset + loop.size_limit
            if loop in keep or any(loop.backing_path == os.path.realpath(name) and start <= loop.offset and
                                   0 < loop.size_limit and end <= stop for name, start, stop in foreign):
                continue
            losetup.detach(loop.device)
            detached.append(f"{loop.device} over {loop.backing_path}@{loop.offset}")
        return detached


ACTIVATORS = {cls.name: cls for cls in (DeviceMapperActivator, LoopActivator)}


@contextlib.contextmanager
def active(activator: Activator, volume: lvm.LogicalVolume) -> Iterator[str]:
    """The volume's device for the duration of a block; activated only for it if it was not already."""
    device = activator.device(volume)
    if device is not None:
        yield device
        return
    device = activator.activate(volume)
    try:
        yield device
    finally:
        activator.deactivate(volume, activated=True)  # *volume* still says inactive (dm: it was read before)
