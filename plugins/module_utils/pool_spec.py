"""What names a pool (the spec) and how it behaves (its settings): parsed and checked once, here.

A spec is ``file:/absolute/dir``, ``lvm:VG`` or ``lvmthin:VG/THINPOOL``; agent,
modules and roles all pass that text.  The settings belong to the pool itself:
whoever creates the pool (``pool_setup.ensure_pool``) stores them with it (VG
tags, or a settings file in the pool directory) and every face reads them from
there (``pool_factory``).  A pool that has none stored (made before settings
were stored, or by hand) behaves as the defaults below and whatever its opener
gives.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import InvalidRequest

FILE = "file"
LVM = "lvm"
LVMTHIN = "lvmthin"
KINDS = (FILE, LVM, LVMTHIN)
SPEC_FORMS = "file:/absolute/dir, lvm:VG or lvmthin:VG/THINPOOL"

ALLOCATION_POLICIES = ("normal", "contiguous", "cling", "anywhere")
SNAPSHOT_MODES = ("copy", "cow")
ACTIVATIONS = ("dm", "loop")

#: VG tag prefix of a stored setting: ``basalt.pool.<key>=<value>``
TAG_PREFIX = "basalt.pool."
#: the settings file of a file pool, in its directory
SETTINGS_FILE = "pool-settings.json"


def _choice(key: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidRequest(f"{key} {value!r} is not one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class PoolSettings:
    """How a pool allocates, snapshots and counts capacity (defaults: what an unconfigured pool does)."""

    #: LVM allocation policy of new LVs (loop activation needs contiguous)
    alloc: str = "normal"
    #: dm (lvchange) or loop (a loop device over the LV's extents, for hosts without device-mapper)
    activation: str = "dm"
    #: lvm: snapshots are independent copies or classic COW snapshots
    snapshot_mode: str = "copy"
    #: lvm: COW space of a classic snapshot, as a percentage of its origin
    cow_percent: int = 25
    #: lvmthin: virtual bytes allowed per byte of thin pool data
    overprovision: float = 1.0
    #: lvmthin: data or metadata use (percent) above which volumes report abnormal
    full_percent: float = 90.0
    #: bytes that may be provisioned in all (0: no limit beyond the pool's own space)
    capacity_limit: int = 0

    def __post_init__(self) -> None:
        _choice("alloc", self.alloc, ALLOCATION_POLICIES)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("snapshot_mode", self.snapshot_mode, SNAPSHOT_MODES)
        if not 1 <= self.cow_percent <= 100:
            raise InvalidRequest(f"cow_percent must be 1 to 100, not {self.cow_percent}")
        if not (math.isfinite(self.overprovision) and self.overprovision > 0):
            raise InvalidRequest(f"overprovision must be a positive ratio, not {self.overprovision}")
        if not 0 < self.full_percent <= 100:
            raise InvalidRequest(f"full_percent must be above 0 and at most 100, not {self.full_percent}")
        if self.capacity_limit < 0:
            raise InvalidRequest(f"capacity_limit must not be negative, not {self.capacity_limit}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "PoolSettings":
        """Settings from key -> value (text or typed), every missing key at its default."""
        unknown = sorted(set(values) - set(SETTING_KEYS))
        if unknown:
            raise InvalidRequest(f"unknown pool settings {', '.join(unknown)}; known: {', '.join(SETTING_KEYS)}")
        return cls(**{key: _typed(key, value) for key, value in values.items()})

    def values(self, kind: str) -> Dict[str, Any]:
        """The settings that mean something for a pool of *kind*, key -> value."""
        return {key: getattr(self, key) for key in keys_for(kind)}

    def to_tags(self) -> List[str]:
        return [f"{TAG_PREFIX}{key}={_text(value)}" for key, value in self.values(LVM).items()]


SETTING_KEYS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PoolSettings))
DEFAULTS = PoolSettings()
_KEYS_BY_KIND = {FILE: ("capacity_limit",), LVM: SETTING_KEYS, LVMTHIN: SETTING_KEYS}


def keys_for(kind: str) -> Tuple[str, ...]:
    return _KEYS_BY_KIND[kind]


def _typed(key: str, value: Any) -> Any:
    kind = type(getattr(DEFAULTS, key))
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise InvalidRequest(f"pool setting {key} must be {kind.__name__}, not {value!r}")


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def settings_from_tags(tags: Iterable[str]) -> Optional[PoolSettings]:
    """The settings a VG's tags store, or None when it stores none."""
    values = {tag[len(TAG_PREFIX):].partition("=")[0]: tag.partition("=")[2]
              for tag in tags if tag.startswith(TAG_PREFIX)}
    return PoolSettings.from_values(values) if values else None


def reconcile(stored: Optional[PoolSettings], given: Mapping[str, Any], kind: str, where: str,
              labels: Optional[Mapping[str, str]] = None) -> PoolSettings:
    """The pool's settings: the stored ones, or without them the defaults with *given* applied.

    A given value that contradicts a stored one is refused (InvalidRequest naming
    both), never silently preferred: two openers of one pool must agree.
    *labels* name the given keys as the caller knows them (an agent's flags).
    """
    wanted = PoolSettings.from_values(given)
    if stored is None:
        return wanted
    contradictions = [
        f"{(labels or {}).get(key, key)} {_text(getattr(wanted, key))} (stored: {_text(getattr(stored, key))})"
        for key in given if key in keys_for(kind) and getattr(wanted, key) != getattr(stored, key)
    ]
    if contradictions:
        raise InvalidRequest(f"pool {where} stores its own settings and they say otherwise: "
                             f"{'; '.join(contradictions)}. Drop these or change the pool's settings "
                             "(the basalt.csi.pool module, or the pool role)")
    return stored


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """A parsed pool spec: its kind, location (directory or VG) and, for lvmthin, its thin pool."""

    kind: str
    location: str
    thin_pool: Optional[str] = None

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.location}" + (f"/{self.thin_pool}" if self.thin_pool else "")

    def __str__(self) -> str:
        return self.text


def parse_pool_spec(text: str) -> PoolSpec:
    """``file:/dir``, ``lvm:VG`` or ``lvmthin:VG/THINPOOL`` (names are checked by the pools themselves)."""
    kind, _sep, location = str(text).partition(":")
    if kind == FILE and location.startswith("/"):
        return PoolSpec(FILE, location)
    if kind == LVM and location and "/" not in location:
        return PoolSpec(LVM, location)
    if kind == LVMTHIN:
        vg, sep, thin_pool = location.partition("/")
        if vg and sep and thin_pool and "/" not in thin_pool:
            return PoolSpec(LVMTHIN, vg, thin_pool)
    raise InvalidRequest(f"pool {text!r} is not supported: use {SPEC_FORMS}")
