"""The ``file`` pool: each volume is a sparse image file, attached as a loop device.

Layout under the pool directory::

    volumes/<id>.img    volumes/<id>.json     (data, metadata)
    snapshots/<id>.img  snapshots/<id>.json

The JSON records, written atomically, are the only source of truth.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Collection, ContextManager, Dict, List, Optional, Sequence, Union

from . import device_use, freeze, imagefile, losetup
from .atomicfile import read_json, remove_durably, sweep_temp_files, write_json
from .errors import Precondition
from .model import Snapshot, Volume, is_snapshot_id, is_volume_id
from .pool import Orphan, Pool, Storage

log = logging.getLogger(__name__)

KIND = "file"


class FilePool(Pool):
    kind = KIND

    def __init__(self, directory: str, capacity_limit: int = 0) -> None:
        super().__init__(capacity_limit)
        self.directory = os.path.abspath(directory)
        self._attached: Dict[str, str] = {}  # volume id -> the device attach gave, checked before each use

    @property
    def location(self) -> str:
        return self.directory

    # -- layout --------------------------------------------------------------
    def _dir(self, kind: str) -> str:
        return os.path.join(self.directory, kind)

    def image_path(self, volume_id: str) -> str:
        return os.path.join(self._dir("volumes"), volume_id + ".img")

    def snapshot_path(self, snapshot_id: str) -> str:
        return os.path.join(self._dir("snapshots"), snapshot_id + ".img")

    def ensure_layout(self) -> None:
        for kind in ("volumes", "snapshots"):
            os.makedirs(self._dir(kind), mode=0o700, exist_ok=True)

    def probe(self) -> None:
        for kind in ("volumes", "snapshots"):
            path = self._dir(kind)
            if not os.path.isdir(path):
                raise Precondition(f"file pool directory {path} does not exist")
            if not os.access(path, os.W_OK | os.X_OK):
                raise Precondition(f"file pool directory {path} is not writable")
        if shutil.disk_usage(self.directory).free == 0:
            raise Precondition(f"file pool filesystem at {self.directory} is full")

    # -- records -------------------------------------------------------------
    def _ids(self, kind: str) -> List[str]:
        check = is_volume_id if kind == "volumes" else is_snapshot_id
        try:
            names = os.listdir(self._dir(kind))
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and check(n[:-5]))

    def load_volume(self, volume_id: str) -> Optional[Volume]:
        doc = read_json(os.path.join(self._dir("volumes"), volume_id + ".json"))
        return Volume.from_dict(doc) if doc else None

    def save_volume(self, volume: Volume) -> None:
        write_json(os.path.join(self._dir("volumes"), volume.id + ".json"), volume.to_dict())

    def forget_volume(self, volume_id: str) -> None:
        remove_durably(os.path.join(self._dir("volumes"), volume_id + ".json"))

    def volume_ids(self) -> List[str]:
        return self._ids("volumes")

    def load_snapshot(self, snapshot_id: str) -> Optional[Snapshot]:
        doc = read_json(os.path.join(self._dir("snapshots"), snapshot_id + ".json"))
        return Snapshot.from_dict(doc) if doc else None

    def save_snapshot(self, snapshot: Snapshot) -> None:
        write_json(os.path.join(self._dir("snapshots"), snapshot.id + ".json"), snapshot.to_dict())

    def forget_snapshot(self, snapshot_id: str) -> None:
        remove_durably(os.path.join(self._dir("snapshots"), snapshot_id + ".json"))

    def snapshot_ids(self) -> List[str]:
        return self._ids("snapshots")

    # -- data ----------------------------------------------------------------
    def provision_volume(self, volume: Volume, source: Optional[Union[Volume, Snapshot]]) -> Optional[str]:
        target = self.image_path(volume.id)
        if source is None:
            # A retry after a crash starts from a fresh blank image.
            if os.path.exists(target):
                os.unlink(target)
            imagefile.create(target, volume.size)
            return None
        origin = self.image_path(source.id) if isinstance(source, Volume) else self.snapshot_path(source.id)
        with self._frozen(source if isinstance(source, Volume) else None):
            return imagefile.clone(origin, target, volume.size)

    def _frozen(self, volume: Optional[Volume]) -> ContextManager[None]:
        """*volume*'s filesystem frozen (if it is mounted here), bounded, recorded for start-up to thaw."""
        device = self.attached_device(volume) if volume is not None else None
        return freeze.frozen(device, self.freeze_limit, self._dir("freezes"))

    def release_volume(self, volume: Volume) -> None:
        image = self.image_path(volume.id)
        losetup.ensure_detached(image)
        remove_durably(image)

    def resize_volume(self, volume: Volume, size: int) -> None:
        imagefile.grow(self.image_path(volume.id), size)

    def take_snapshot(self, snapshot: Snapshot, volume: Volume) -> Optional[str]:
        with self._frozen(volume):
            return imagefile.clone(self.image_path(volume.id), self.snapshot_path(snapshot.id))

    def release_snapshot(self, snapshot: Snapshot) -> None:
        remove_durably(self.snapshot_path(snapshot.id))

    def _filesystem(self) -> str:
        # The pool's directory may not exist yet (opened without its layout, in check mode):
        # its space is that of the filesystem it would be created on.
        existing = self.directory
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        return existing

    def free_bytes(self) -> int:
        return shutil.disk_usage(self._filesystem()).free

    def storage(self) -> Storage:
        space = shutil.disk_usage(self._filesystem())
        return Storage(space.total, space.total - space.free)

    def busy_reason(self, volume: Volume) -> Optional[str]:
        device = self.attached_device(volume)
        return f"attached as {device}" if device else None

    def volume_problem(self, volume: Volume) -> Optional[str]:
        image = self.image_path(volume.id)
        try:
            actual = os.path.getsize(image)
        except FileNotFoundError:
            return f"image file {image} is missing"
        if actual < volume.size:
            return f"image file {image} is {actual} bytes, smaller than the volume's {volume.size}"
        return None

    # -- node side -----------------------------------------------------------
    def attach(self, volume: Volume) -> str:
        # the device attached exactly so is reused (read alone while it is the one this pool attached before)
        device = losetup.attach(self.image_path(volume.id), likely=self._attached.get(volume.id)).device
        self._attached[volume.id] = device
        return device

    def attached_devices(self, volumes: Sequence[Volume]) -> Dict[str, Optional[str]]:
        by_image = {d.backing_file: d.device for d in losetup.list_devices()  # one listing
                    if d.offset == 0 and d.size_limit == 0}
        return {v.id: by_image.get(os.path.realpath(self.image_path(v.id))) for v in volumes}

    def attached_device(self, volume: Volume) -> Optional[str]:
        found = losetup.find(self.image_path(volume.id), size_limit=0)
        return found.device if found else None

    def detach(self, volume: Volume) -> bool:
        return losetup.ensure_detached(self.image_path(volume.id), likely=self._attached.pop(volume.id, None))

    def refresh(self, volume: Volume) -> None:
        device = self.attached_device(volume)
        if device:
            losetup.refresh_capacity(device)

    def orphans(self) -> List[Orphan]:
        """Loop devices on images that are gone or have no record, then images with no record.

        A record is written before its image and forgotten after it, so an image
        without one is never a creation or deletion in progress.  An image stays
        in use while a loop device over it is (device_use): removing it would
        free the user's data.
        """
        owned = set(self.volume_ids()) | set(self.snapshot_ids())
        loops: List[Orphan] = []
        used_over: Dict[str, List[str]] = {}  # image path -> what uses the loop devices over it
        for loop in losetup.over([self._dir("volumes"), self._dir("snapshots")]):
            path = loop.backing_path
            deleted = loop.backing_file != path  # the kernel says " (deleted)"
            if deleted or not os.path.exists(path) or os.path.basename(path)[:-4] not in owned:
                in_use = tuple(device_use.users([loop.device]))
                used_over.setdefault(path, []).extend(f"{loop.device} over it: {use}" for use in in_use)
                loops.append(Orphan("loop device", loop.device, f"attached to {loop.backing_file}, "
                                    "which no record owns", in_use))
        images: List[Orphan] = []
        for kind, is_id in (("volumes", is_volume_id), ("snapshots", is_snapshot_id)):
            directory = self._dir(kind)
            for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
                path = os.path.join(directory, name)
                if name.endswith(".img") and is_id(name[:-4]) and name[:-4] not in owned:
                    images.append(Orphan("image", path, "no record owns it",
                                         tuple(used_over.get(os.path.realpath(path), ()))))
        return loops + images

    def _remove_orphan(self, orphan: Orphan) -> None:
        if orphan.kind == "loop device":
            losetup.detach(orphan.name)
        else:
            remove_durably(orphan.name)

    def detach_strays(self, wanted: Collection[str]) -> List[str]:
        wanted_images = {os.path.realpath(self.image_path(volume_id)) for volume_id in wanted}
        kept = set()
        detached = []
        for loop in losetup.over([self._dir("volumes"), self._dir("snapshots")]):  # one listing for all
            # as attach() finds it: the first whole-file device over a wanted image (never an unlinked one)
            if loop.backing_file in wanted_images and loop.backing_file not in kept and not loop.offset \
                    and not loop.size_limit:
                kept.add(loop.backing_file)
            else:
                losetup.detach(loop.device)
                detached.append(f"{loop.device} over {loop.backing_file}")
        return detached

    def clean_leftovers(self) -> List[str]:
        removed = [f"freeze of {path}" for path in freeze.thaw_recorded(self._dir("freezes"))]
        for kind in ("volumes", "snapshots", "freezes"):
            removed += sweep_temp_files(self._dir(kind))
        return removed
