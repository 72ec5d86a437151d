"""Open the pool a spec names, with the settings stored with it: the one factory above the pools.

``pool.py`` is the interface and imports no implementation; this module is the
only one that knows them all, so the core has no import circle. It imports the
implementation a spec names when it opens one: an agent serving a file pool
never loads the LVM layers (about 1 MiB of its resident memory).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from .atomicfile import read_json, write_json
from .errors import NotFound, Precondition
from .file_pool import FilePool
from .lvm_command import DEFAULT_SETTINGS, LvmSettings
from .pool import Pool
from .pool_spec import (
    FILE,
    LVM,
    SETTINGS_FILE,
    TAG_PREFIX,
    PoolSettings,
    PoolSpec,
    parse_pool_spec,
    reconcile,
    settings_from_tags,
)


def settings_path(spec: PoolSpec) -> str:
    return os.path.join(spec.location, SETTINGS_FILE)


def where_stored(spec: PoolSpec) -> str:
    """Where a pool's settings live, for messages."""
    return settings_path(spec) if spec.kind == FILE else f"the tags of volume group {spec.location}"


def stored_settings(spec: PoolSpec, *, lvm_settings: LvmSettings = DEFAULT_SETTINGS
                    ) -> Optional[PoolSettings]:
    """The settings stored with the pool, or None (no pool yet, or one made without stored settings)."""
    if spec.kind == FILE:
        try:
            document = read_json(settings_path(spec))
        except ValueError as error:
            raise Precondition(f"{settings_path(spec)} is not a pool settings document: {error}") from error
        return PoolSettings.from_values(document) if document is not None else None
    from . import lvm

    try:
        tags = lvm.volume_group(spec.location, settings=lvm_settings).tags
    except NotFound:
        return None  # probe() reports the missing VG; there is nothing stored to agree with
    return settings_from_tags(tags)


def store_settings(spec: PoolSpec, settings: PoolSettings, *,
                   lvm_settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Write the pool's settings where every opener reads them (one atomic write, or one VG commit)."""
    if spec.kind == FILE:
        write_json(settings_path(spec), settings.values(FILE))
        return
    from . import lvm

    old = [t for t in lvm.volume_group(spec.location, settings=lvm_settings).tags if t.startswith(TAG_PREFIX)]
    new = settings.to_tags()
    lvm.change_vg_tags(spec.location, add=[t for t in new if t not in old], remove=[t for t in old if t not in new],
                       settings=lvm_settings)


def open_pool(spec: Union[str, PoolSpec], given: Optional[Mapping[str, Any]] = None, *,
              labels: Optional[Mapping[str, str]] = None, create_layout: bool = True,
              lvm_settings: LvmSettings = DEFAULT_SETTINGS) -> Pool:
    """Open the pool *spec* names (``file:/dir``, ``lvm:VG`` or ``lvmthin:VG/THINPOOL``).

    Its settings are those stored with it; *given* settings (an agent's flags)
    apply only to a pool that stores none, and one that contradicts a stored
    value is refused (pool_spec.reconcile).  A file pool's directories are
    created when missing, unless *create_layout* is false (check mode): a
    missing layout then reads as an empty pool.
    """
    parsed = spec if isinstance(spec, PoolSpec) else parse_pool_spec(spec)
    stored = stored_settings(parsed, lvm_settings=lvm_settings)
    settings = reconcile(stored, given or {}, parsed.kind, where_stored(parsed), labels)
    if parsed.kind == FILE:
        pool = FilePool(parsed.location, settings.capacity_limit)
        if create_layout:
            pool.ensure_layout()
        return pool
    if parsed.kind == LVM:
        from .lvm_pool import LvmPool

        return LvmPool(parsed.location, settings, lvm_settings)
    from .lvmthin_pool import LvmThinPool

    return LvmThinPool(parsed.location, parsed.thin_pool or "", settings, lvm_settings)
