"""LVM reports: ``pvs``/``vgs``/``lvs`` as JSON in bytes with explicit columns, parsed into typed values.

Neither lvm.conf's default columns nor its units can change what is parsed;
``lv_attr`` is decoded field by field (LvAttr), and a linear LV's place on its
PV (linear_location) is computed for hosts that reach it without device-mapper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import CommandFailed, NotFound, Precondition
from .lvm_command import DEFAULT_SETTINGS, REPORT_TIMEOUT, LvmSettings, run_lvm
from .lvm_names import check_tag, check_vg_name, existing_lv_name
from .runner import CommandResult, operand

PV_COLUMNS = ("pv_name", "vg_name", "pv_size", "pv_free", "pe_start")
PVSEG_COLUMNS = ("pv_name", "pvseg_start", "pvseg_size", "lv_name")
VG_COLUMNS = (
    "vg_name", "vg_uuid", "vg_size", "vg_free", "vg_extent_size", "vg_extent_count", "vg_free_count", "vg_tags",
)
# Segment columns (seg_*, devices, segtype) make lvs print one row per segment.
LV_COLUMNS = (
    "lv_name", "vg_name", "lv_uuid", "lv_size", "lv_attr", "lv_tags", "pool_lv", "origin", "data_percent",
    "metadata_percent", "lv_path", "segtype", "seg_start_pe", "seg_size_pe", "seg_pe_ranges", "devices",
)


@dataclass(frozen=True)
class PhysicalVolume:
    name: str
    vg_name: Optional[str]
    size: int
    free: int
    #: byte offset of the first extent on the device
    pe_start: int


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    uuid: str
    size: int
    free: int
    extent_size: int
    extent_count: int
    free_count: int
    tags: Tuple[str, ...]


_VOLUME_TYPES = {
    "-": "simple", "C": "cache", "m": "mirrored", "M": "mirrored without initial sync", "o": "origin",
    "O": "origin with merging snapshot", "r": "raid", "R": "raid without initial sync", "s": "snapshot",
    "S": "merging snapshot", "p": "pvmove", "v": "virtual", "i": "mirror or raid image",
    "I": "mirror or raid image out-of-sync", "l": "mirror log", "c": "under conversion", "V": "thin volume",
    "t": "thin pool", "T": "thin pool data", "d": "vdo pool", "D": "vdo pool data", "e": "metadata",
}
_PERMISSIONS = {"w": "writeable", "r": "read-only", "R": "read-only activation", "-": "unknown"}
_ALLOCATION = {"a": "anywhere", "c": "contiguous", "i": "inherit", "l": "cling", "n": "normal"}
_STATES = {
    "-": "inactive", "a": "active", "h": "historical", "s": "suspended", "I": "invalid snapshot",
    "S": "invalid suspended snapshot", "m": "snapshot merge failed", "M": "suspended snapshot merge failed",
    "d": "mapped device present without tables", "i": "mapped device present with inactive table",
    "c": "thin-pool check needed", "C": "suspended thin-pool check needed", "X": "unknown",
}
_TARGETS = {
    "-": "", "C": "cache", "m": "mirror", "r": "raid", "s": "snapshot", "t": "thin", "u": "unknown",
    "v": "virtual", "V": "vdo", "e": "writecache", "i": "integrity",
}
_HEALTH = {
    "-": "", "p": "partial", "X": "unknown", "r": "refresh needed", "m": "mismatches exist", "w": "writemostly",
    "s": "reshaping", "R": "remove after reshape", "F": "failed", "D": "out of data space",
    "M": "metadata read only", "E": "error",
}


@dataclass(frozen=True)
class LvAttr:
    """The ten ``lv_attr`` characters of lvs(8), decoded.

    Without device-mapper (activation disabled) state and open read ``X``
    (unknown): ``active`` is then False and ``state_known`` tells why.
    """

    raw: str
    volume_type: str
    permissions: str
    allocation_policy: str
    allocation_locked: bool
    fixed_minor: bool
    state: str
    device_open: Optional[bool]
    target_type: str
    zero: bool
    health: str
    skip_activation: bool

    @classmethod
    def parse(cls, text: str) -> "LvAttr":
        if len(text) != 10:
            raise ValueError(f"lv_attr {text!r} is not 10 characters")
        kind, perm, alloc, minor, state, opened, target, zero, health, skip = list(text)
        if kind not in _VOLUME_TYPES or perm not in _PERMISSIONS or state not in _STATES:
            raise ValueError(f"lv_attr {text!r} has an unknown volume type, permission or state")
        if alloc.lower() not in _ALLOCATION or target not in _TARGETS or health not in _HEALTH:
            raise ValueError(f"lv_attr {text!r} has an unknown allocation, target or health")
        if minor not in "m-" or opened not in "oX-" or zero not in "z-" or skip not in "k-":
            raise ValueError(f"lv_attr {text!r} has an unknown minor, open, zero or skip flag")
        return cls(
            raw=text,
            volume_type=_VOLUME_TYPES[kind],
            permissions=_PERMISSIONS[perm],
            allocation_policy=_ALLOCATION[alloc.lower()],
            allocation_locked=alloc.isupper(),
            fixed_minor=minor == "m",
            state=_STATES[state],
            device_open=None if opened == "X" else opened == "o",
            target_type=_TARGETS[target],
            zero=zero == "z",
            health=_HEALTH[health],
            skip_activation=skip == "k",
        )

    @property
    def active(self) -> bool:
        return self.raw[4] == "a"

    @property
    def suspended(self) -> bool:
        return self.raw[4] in "sSMC"

    @property
    def state_known(self) -> bool:
        return self.raw[4] != "X"

    @property
    def writeable(self) -> bool:
        return self.raw[1] == "w"

    @property
    def thin_pool(self) -> bool:
        return self.raw[0] == "t"

    @property
    def thin_volume(self) -> bool:
        return self.raw[0] == "V"

    @property
    def origin(self) -> bool:
        """A classic (COW) snapshot origin; thin origins stay ``V``."""
        return self.raw[0] in "oO"

    @property
    def snapshot(self) -> bool:
        """A classic (COW) snapshot; a thin snapshot is a thin volume with an origin."""
        return self.raw[0] in "sS"

    @property
    def virtual(self) -> bool:
        return self.raw[0] == "v"

    @property
    def simple(self) -> bool:
        return self.raw[0] == "-"

    @property
    def partial(self) -> bool:
        return self.raw[8] == "p"

    @property
    def failed(self) -> bool:
        return self.raw[8] == "F"


@dataclass(frozen=True)
class PeRange:
    """Extents ``first``..``last`` (inclusive) on *device* (a PV path, or a sub-LV for pools)."""

    device: str
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class Segment:
    segtype: str
    start_pe: int
    size_pe: int
    pe_ranges: Tuple[PeRange, ...]
    devices: str


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    vg_name: str
    uuid: str
    size: int
    attr: LvAttr
    tags: Tuple[str, ...]
    pool_lv: Optional[str]
    origin: Optional[str]
    data_percent: Optional[float]
    metadata_percent: Optional[float]
    #: the device node LVM would create (/dev/VG/LV); None for a thin pool
    path: Optional[str]
    segments: Tuple[Segment, ...]

    @property
    def full_name(self) -> str:
        return f"{self.vg_name}/{self.name}"

    @property
    def segtype(self) -> str:
        return self.segments[0].segtype if self.segments else ""

    @property
    def seg_pe_ranges(self) -> Tuple[PeRange, ...]:
        """PE ranges of the first segment."""
        return self.segments[0].pe_ranges if self.segments else ()

    @property
    def devices(self) -> str:
        """``devices`` of the first segment, e.g. ``/dev/loop0(2)``."""
        return self.segments[0].devices if self.segments else ""

    @property
    def thin_snapshot(self) -> bool:
        return self.attr.thin_volume and self.origin is not None


def parse_pe_ranges(text: str) -> Tuple[PeRange, ...]:
    """``/dev/loop0:0-24 /dev/loop1:3-3`` -> PeRange tuples (empty text -> ())."""
    ranges = []
    for item in text.split():
        device, sep, span = item.rpartition(":")
        first, dash, last = span.partition("-")
        if not sep or not dash or not first.isdigit() or not last.isdigit():
            raise ValueError(f"seg_pe_ranges item {item!r} is not DEVICE:FIRST-LAST")
        ranges.append(PeRange(device, int(first), int(last)))
    return tuple(ranges)


def _report(
    settings: LvmSettings,
    tool: str,
    kind: str,
    columns: Sequence[str],
    *,
    select: Optional[str],
    names: Sequence[str],
    what: str,
    extra: Sequence[str] = (),
) -> Tuple[List[Dict[str, str]], CommandResult]:
    args = [*extra, "--reportformat", "json", "--units", "b", "--nosuffix", "--options", ",".join(columns)]
    if select:
        args += ["--select", select]
    args += list(names)
    result = run_lvm(settings, tool, args, what=what, timeout=REPORT_TIMEOUT)
    try:
        rows: List[Dict[str, str]] = []
        for report in json.loads(result.stdout).get("report", []):
            rows.extend(report.get(kind, []))
        for row in rows:
            missing = [c for c in columns if c not in row]
            if missing:
                raise ValueError(f"columns {missing} missing")
        return rows, result
    except (ValueError, AttributeError, TypeError) as exc:
        raise CommandFailed(result.argv, result.rc, f"unexpected {tool} output: {exc}", what) from None


def _int(value: str) -> int:
    return int(value) if value else 0


def _percent(value: str) -> Optional[float]:
    return float(value) if value else None


def _tags(value: str) -> Tuple[str, ...]:
    return tuple(tag for tag in value.split(",") if tag)


def _select_value(value: str) -> str:
    # Validated names and tags hold no quote; quoted, '#', '&', '|' and '!' are literal.
    return f'"{value}"'


def tag_selection(tag: str) -> str:
    """``--select`` text matching LVs that carry *tag* (among others)."""
    return f"lv_tags={{{_select_value(check_tag(tag))}}}"


def physical_volumes(vg: Optional[str] = None, *, settings: LvmSettings = DEFAULT_SETTINGS) -> List[PhysicalVolume]:
    """PVs LVM sees (those of *vg* when given), with where their extents start."""
    select = f"vg_name={_select_value(check_vg_name(vg))}" if vg is not None else None
    rows, result = _report(settings, "pvs", "pv", PV_COLUMNS, select=select, names=(),
                           what=f"list physical volumes of {vg}" if vg else "list physical volumes")
    try:
        return [
            PhysicalVolume(
                name=row["pv_name"],
                vg_name=row["vg_name"] or None,
                size=_int(row["pv_size"]),
                free=_int(row["pv_free"]),
                pe_start=_int(row["pe_start"]),
            )
            for row in rows
        ]
    except ValueError as exc:
        raise CommandFailed(result.argv, result.rc, f"unexpected pvs output: {exc}") from None


def free_extents(vg: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> Dict[str, List[Tuple[int, int]]]:
    """Each PV of *vg* -> its free extent ranges (first, count), in order (``pvs --segments``: one command)."""
    what = f"list free extents of {vg}"
    select = f"vg_name={_select_value(check_vg_name(vg))}"
    rows, result = _report(settings, "pvs", "pvseg", PVSEG_COLUMNS, select=select, names=(), what=what,
                           extra=("--segments",))
    free: Dict[str, List[Tuple[int, int]]] = {}
    try:
        for row in rows:
            ranges = free.setdefault(row["pv_name"], [])
            if not row["lv_name"]:
                ranges.append((_int(row["pvseg_start"]), _int(row["pvseg_size"])))
    except ValueError as exc:
        raise CommandFailed(result.argv, result.rc, f"unexpected pvs output: {exc}", what) from None
    return {pv: sorted(ranges) for pv, ranges in free.items()}


def volume_group(vg: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> VolumeGroup:
    """The VG *vg*; NotFound when LVM does not see it."""
    what = f"read volume group {vg}"
    rows, result = _report(settings, "vgs", "vg", VG_COLUMNS, select=None,
                           names=[operand(check_vg_name(vg), "volume group")], what=what)
    if len(rows) != 1:
        raise NotFound(f"{what}: vgs reported {len(rows)} volume groups named {vg}")
    row = rows[0]
    try:
        return VolumeGroup(
            name=row["vg_name"],
            uuid=row["vg_uuid"],
            size=_int(row["vg_size"]),
            free=_int(row["vg_free"]),
            extent_size=_int(row["vg_extent_size"]),
            extent_count=_int(row["vg_extent_count"]),
            free_count=_int(row["vg_free_count"]),
            tags=_tags(row["vg_tags"]),
        )
    except ValueError as exc:
        raise CommandFailed(result.argv, result.rc, f"unexpected vgs output: {exc}", what) from None


def parse_logical_volumes(rows: Sequence[Mapping[str, str]]) -> List[LogicalVolume]:
    """Fold lvs' one-row-per-segment JSON into LogicalVolumes, in report order."""
    order: List[str] = []
    first: Dict[str, Mapping[str, str]] = {}
    segments: Dict[str, List[Segment]] = {}
    for row in rows:
        key = row["lv_uuid"]
        if key not in first:
            order.append(key)
            first[key] = row
            segments[key] = []
        segments[key].append(
            Segment(
                segtype=row["segtype"],
                start_pe=_int(row["seg_start_pe"]),
                size_pe=_int(row["seg_size_pe"]),
                pe_ranges=parse_pe_ranges(row["seg_pe_ranges"]),
                devices=row["devices"],
            )
        )
    volumes = []
    for key in order:
        row = first[key]
        volumes.append(
            LogicalVolume(
                name=row["lv_name"],
                vg_name=row["vg_name"],
                uuid=row["lv_uuid"],
                size=_int(row["lv_size"]),
                attr=LvAttr.parse(row["lv_attr"]),
                tags=_tags(row["lv_tags"]),
                pool_lv=row["pool_lv"] or None,
                origin=row["origin"] or None,
                data_percent=_percent(row["data_percent"]),
                metadata_percent=_percent(row["metadata_percent"]),
                path=row["lv_path"] or None,
                segments=tuple(sorted(segments[key], key=lambda s: s.start_pe)),
            )
        )
    return volumes


def logical_volumes(
    vg: str, tag: Optional[str], *, settings: LvmSettings = DEFAULT_SETTINGS
) -> List[LogicalVolume]:
    """The visible LVs of *vg* that carry *tag* (every LV only when *tag* is None).

    Pools pass their managed tag so that other LVs in a shared VG are never
    listed, counted or touched.  The tag goes into ``--select``, which LVM
    ANDs with the VG operand; ``lvs VG @tag`` would list the union of both.
    """
    select = tag_selection(tag) if tag is not None else None
    what = f"list logical volumes of {vg}" + (f" tagged {tag}" if tag else "")
    rows, result = _report(settings, "lvs", "lv", LV_COLUMNS, select=select,
                           names=[operand(check_vg_name(vg), "volume group")], what=what)
    return _parsed(rows, result, what)


def logical_volume(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> Optional[LogicalVolume]:
    """The LV *vg*/*name*, or None when the VG has no such LV (NotFound when the VG is missing)."""
    what = f"read logical volume {vg}/{name}"
    target = f"{check_vg_name(vg)}/{existing_lv_name(name)}"
    try:
        rows, result = _report(settings, "lvs", "lv", LV_COLUMNS, select=None, names=[target], what=what)
    except NotFound as exc:
        if "Failed to find logical volume" in str(exc):
            return None
        raise
    volumes = _parsed(rows, result, what)
    return volumes[0] if volumes else None


def _parsed(rows: Sequence[Mapping[str, str]], result: CommandResult, what: str) -> List[LogicalVolume]:
    try:
        return parse_logical_volumes(rows)
    except (ValueError, KeyError) as exc:
        raise CommandFailed(result.argv, result.rc, f"unexpected lvs output: {exc}", what) from None


@dataclass(frozen=True)
class DataLocation:
    """Where a linear LV's bytes lie on its PV: attach ``device`` at ``offset`` for ``length`` bytes."""

    device: str
    offset: int
    length: int


def linear_location(
    volume: LogicalVolume, pvs: Sequence[PhysicalVolume], extent_size: int
) -> DataLocation:
    """Byte range of a single-segment linear LV on its PV (pe_start + first_pe * extent_size).

    Lets a host without device-mapper reach the LV's data through a loop
    device with ``--offset``/``--sizelimit``.  LVs that are not one linear
    segment on one PV (create them with ``alloc="contiguous"``) raise Precondition.
    """
    segs = volume.segments
    if len(segs) != 1 or segs[0].segtype != "linear" or len(segs[0].pe_ranges) != 1:
        raise Precondition(
            f"{volume.full_name} is not one linear segment ({len(segs)} segments, "
            f"type {volume.segtype or 'none'}): its data is not one byte range of a PV"
        )
    pe_range = segs[0].pe_ranges[0]
    for pv in pvs:
        if pv.name == pe_range.device:
            length = pe_range.count * extent_size
            if length != volume.size:
                raise Precondition(f"{volume.full_name}: {pe_range.count} extents do not match size {volume.size}")
            return DataLocation(pv.name, pv.pe_start + pe_range.first * extent_size, length)
    raise NotFound(f"{volume.full_name} lies on {pe_range.device}, which is not among the PVs given")
