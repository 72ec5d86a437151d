"""LVM2 through its command-line tools, for the ``lvm`` (thick) and ``lvmthin`` pools.

Reports come from ``pvs``/``vgs``/``lvs`` as JSON with sizes in bytes and an
explicit column list, so neither lvm.conf's default columns nor its units can
change what we parse.  Mutations are one small function each with an exact
argv.  Every name and tag is validated before a command runs, and the
well-known LVM failures become typed errors (NotFound, Conflict, NoSpace,
Precondition); anything else stays a CommandFailed with LVM's rc and stderr.

Behaviour measured on lvm2 2.03.16 (Debian 12), see tests/unit/lvm_recorded:

* ``--size``/``--virtualsize`` in bytes (``1048576b``) must be a multiple of
  512 ("Size is not a multiple of 512"); LVM then rounds up to whole extents.
  We round up ourselves (to the extent size when the caller knows it).
* Tags: characters ``A-Z a-z 0-9 _ + . - / = ! : # &``; 2.03.16 accepts any
  length, older releases stop at 128, so we keep every tag within 128.  LVM
  reports a list of tags sorted, joined with ``,``.
* Without the device-mapper kernel driver (``global{activation=0}``) LVM
  edits metadata only: ``lvchange -ay`` succeeds and does nothing, a new LV
  is not zeroed or wiped (a warning, rc 0), and thin pools, thin LVs and
  snapshots cannot be created ("Can't create thin-pool without using
  device-mapper kernel driver").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence, Tuple, Type

from .errors import CommandFailed, Conflict, InUse, InvalidRequest, NoSpace, NotFound, Precondition, StorageError
from .runner import CommandResult, operand, run

#: the tag a pool puts on every LV it owns; reports filter on it
MANAGED_TAG = "basalt.managed"

SECTOR = 512
REPORT_TIMEOUT = 60.0
CHANGE_TIMEOUT = 120.0
# Metadata-only changes on a few PVs take ~50 ms; a snapshot or thin LV also
# sends messages to the kernel pool, which can wait behind I/O.
REMOVE_TIMEOUT = 180.0

ALLOCATION_POLICIES = ("normal", "contiguous", "cling", "anywhere", "inherit")

_PV_COLUMNS = ("pv_name", "vg_name", "pv_size", "pv_free", "pe_start")
_VG_COLUMNS = (
    "vg_name", "vg_uuid", "vg_size", "vg_free", "vg_extent_size", "vg_extent_count", "vg_free_count", "vg_tags",
)
# Segment columns (seg_*, devices, segtype) make lvs print one row per segment.
_LV_COLUMNS = (
    "lv_name", "vg_name", "lv_uuid", "lv_size", "lv_attr", "lv_tags", "pool_lv", "origin", "data_percent",
    "metadata_percent", "lv_path", "segtype", "seg_start_pe", "seg_size_pe", "seg_pe_ranges", "devices",
)

# -- names and tags ------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*\Z")
NAME_MAX = 127
# lvm2 2.03.16 refuses "VG/LV" longer than 125 characters ("LV name ... length
# 126 is not supported"), whatever the split between the two.
FULL_NAME_MAX = 125
_RESERVED_PREFIXES = ("snapshot", "pvmove")
# lvm(8) "VALID NAMES" plus _cpool, _cvol and _imeta, which 2.03.16 also refuses.
_RESERVED_PARTS = (
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog", "_pmspare",
    "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
)

_TAG = re.compile(r"^[A-Za-z0-9_+.\-/=!:#&]+\Z")
TAG_MAX = 128
_TAG_KEY = re.compile(r"^[A-Za-z0-9_+.][A-Za-z0-9_+.-]*\Z")
_DEVICE = re.compile(r"^/dev/[A-Za-z0-9_.+/-]+\Z")


def check_vg_name(name: str) -> str:
    """Return *name* if LVM accepts it as a volume group name."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or len(name) > NAME_MAX:
        raise InvalidRequest(
            f"volume group name {name!r} is invalid: use 1-{NAME_MAX} of A-Z a-z 0-9 + _ . -, not starting with -"
        )
    return name


def check_lv_name(name: str, vg: Optional[str] = None) -> str:
    """Return *name* if LVM accepts it for a new logical volume (in *vg*, when given)."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or len(name) > NAME_MAX:
        raise InvalidRequest(
            f"logical volume name {name!r} is invalid: use 1-{NAME_MAX} of A-Z a-z 0-9 + _ . -, not starting with -"
        )
    for prefix in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            raise InvalidRequest(f"logical volume name {name!r} is reserved by LVM (starts with {prefix!r})")
    for part in _RESERVED_PARTS:
        if part in name:
            raise InvalidRequest(f"logical volume name {name!r} is reserved by LVM (contains {part!r})")
    if vg is not None:
        check_vg_name(vg)
        if len(vg) + 1 + len(name) > FULL_NAME_MAX:
            raise InvalidRequest(
                f"logical volume name {vg}/{name} is too long: LVM allows {FULL_NAME_MAX} characters for VG/LV"
            )
    return name


def check_tag(tag: str) -> str:
    """Return *tag* if it is within LVM's tag alphabet and our length limit."""
    if not isinstance(tag, str) or not _TAG.match(tag) or len(tag) > TAG_MAX:
        raise InvalidRequest(
            f"tag {tag!r} is invalid: use 1-{TAG_MAX} of A-Z a-z 0-9 _ + . - / = ! : # &"
        )
    return tag


def _tag_prefix(key: str, index: int, count: int) -> str:
    return f"{key}:{index}/{count}="


def encode_tag_value(key: str, text: str) -> List[str]:
    """Store any Unicode *text* under *key* as one or more LVM tags.

    The UTF-8 bytes are base64url-encoded without padding (its alphabet,
    ``A-Z a-z 0-9 - _``, is inside LVM's) and cut into chunks
    ``KEY:I/N=CHUNK`` of at most 128 characters.  LVM sorts tags, so each
    chunk carries its index and the count, and decoding can tell a missing one.
    """
    if not isinstance(key, str) or not _TAG_KEY.match(key) or len(key) > 64:
        raise InvalidRequest(f"tag key {key!r} is invalid: use 1-64 of A-Z a-z 0-9 _ + . -, not starting with -")
    if not isinstance(text, str):
        raise InvalidRequest(f"tag value for {key!r} must be text")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"tag value for {key!r} is not valid Unicode text: {exc}") from None
    payload = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    count = 1
    while True:
        room = TAG_MAX - len(_tag_prefix(key, count - 1, count))
        if room * count >= len(payload):
            break
        count += 1
    size = -(-len(payload) // count) if payload else 0
    tags = [_tag_prefix(key, i, count) + payload[i * size:(i + 1) * size] for i in range(count)]
    return [check_tag(tag) for tag in tags]


def decode_tag_value(tags: Iterable[str], key: str) -> Optional[str]:
    """The text *encode_tag_value* stored under *key*, or None when no tag has that key.

    Chunks that do not add up (a missing, repeated or inconsistent one) raise
    Precondition rather than yielding a wrong name.
    """
    pattern = re.compile(r"^" + re.escape(key) + r":(\d+)/(\d+)=([A-Za-z0-9_-]*)\Z")
    chunks: Dict[int, str] = {}
    counts = set()
    for tag in tags:
        match = pattern.match(tag)
        if not match:
            continue
        index, count, piece = int(match.group(1)), int(match.group(2)), match.group(3)
        if index in chunks:
            raise Precondition(f"tag {key!r} has chunk {index} twice")
        chunks[index] = piece
        counts.add(count)
    if not chunks:
        return None
    if len(counts) != 1 or set(chunks) != set(range(next(iter(counts)))):
        raise Precondition(f"tags for {key!r} are incomplete: have chunks {sorted(chunks)} of {sorted(counts)}")
    payload = "".join(chunks[i] for i in range(len(chunks)))
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        return raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise Precondition(f"tags for {key!r} do not decode: {exc}") from None


# -- settings --------------------------------------------------------------------


@dataclass(frozen=True)
class LvmSettings:
    """How the LVM tools run: extra ``--config`` text and a private ``LVM_SYSTEM_DIR``.

    The default (nothing extra) is production: the host's /etc/lvm.  Tests and
    machines without device-mapper pass ``global{activation=0}`` and a device
    filter admitting only their own loop devices, so the host's VGs are never
    seen, let alone changed.
    """

    config: str = ""
    system_dir: Optional[str] = None

    def command(self, tool: str, *args: str) -> List[str]:
        argv = [tool]
        if self.config:
            argv += ["--config", self.config]
        argv += list(args)
        return argv

    def env(self) -> Dict[str, str]:
        # The agent may hold descriptors open; LVM warns about each on stderr.
        env = {"LVM_SUPPRESS_FD_WARNINGS": "1"}
        if self.system_dir:
            env["LVM_SYSTEM_DIR"] = self.system_dir
        return env

    @classmethod
    def isolated(cls, devices: Sequence[str], system_dir: Optional[str] = None) -> "LvmSettings":
        """Settings that see only *devices*, never activate, and write no host state."""
        return cls(config=isolated_config(devices), system_dir=system_dir)


DEFAULT_SETTINGS = LvmSettings()


def isolated_config(devices: Sequence[str]) -> str:
    """lvm.conf text: activation off, only *devices* visible, no hints, backups or devices file."""
    accept = []
    for device in devices:
        if not _DEVICE.match(device):
            raise InvalidRequest(f"device {device!r} cannot go into an LVM filter")
        accept.append(f'"a|^{re.escape(device)}$|"')
    filters = ", ".join([*accept, '"r|.*|"'])
    return (
        "global { activation = 0 } "
        f'devices {{ filter = [ {filters} ] scan = [ "/dev" ] use_devicesfile = 0 '
        'obtain_device_list_from_udev = 0 hints = "none" } '
        "backup { backup = 0 archive = 0 }"
    )


# -- errors ----------------------------------------------------------------------

# Most specific first: the line that names what needed device-mapper.
_DM_MISSING: Tuple[Tuple["re.Pattern[str]", str], ...] = (
    (re.compile(r"Can't create (\S+) without using device-mapper kernel driver"), ""),
    (re.compile(r"(\S+): Required device-mapper target\(s\) not detected in your kernel"), ""),
    (re.compile(r"Cannot activate thin pool"), "thin-pool"),
    (re.compile(r"Failure to communicate with kernel device-mapper driver"), ""),
)
_DM_MODULES = {"thin-pool": "dm_thin_pool", "thin": "dm_thin_pool", "snapshot": "dm_snapshot"}
_KNOWN: Tuple[Tuple["re.Pattern[str]", Type[StorageError]], ...] = (
    (re.compile(r"already exists", re.I), Conflict),
    (re.compile(r"insufficient free space|insufficient suitable (contiguous )?allocatable extents", re.I), NoSpace),
    # the VG's metadata area is full (measured at ~800 LVs with LVM's default 1 MiB area)
    (re.compile(r"exceeds maximum metadata size", re.I), NoSpace),
    (re.compile(r"Failed to find (logical|physical) volume|Volume group \"[^\"]*\" not found"
                r"|(Logical volume|Pool) \S+ not found in volume group", re.I), NotFound),
    (re.compile(r"existing signature left on the device"), Precondition),
)


def classify(error: CommandFailed) -> StorageError:
    """The typed error for a failed LVM command, or *error* itself when not a known case."""
    prefix = f"{error.what}: " if error.what else ""
    # Warnings ("Device for PV ... not found or rejected by a filter") are not the failure.
    text = "\n".join(line for line in error.stderr.splitlines() if not line.strip().startswith("WARNING:"))
    for pattern, feature in _DM_MISSING:
        dm = pattern.search(text)
        if dm:
            kind = feature or (dm.group(1) if pattern.groups else "")
            module = _DM_MODULES.get(kind, "dm_mod")
            needs = f" for {kind}" if kind else ""
            return Precondition(
                f"{prefix}the device-mapper kernel driver ({module}{needs}) is not available on this host: "
                f"{_line_of(text, dm.group(0))}"
            )
    for pattern, kind_of_error in _KNOWN:
        match = pattern.search(text)
        if match:
            return kind_of_error(f"{prefix}{_line_of(text, match.group(0))}")
    return error


def _fail(result: CommandResult, what: str) -> NoReturn:
    failure = CommandFailed(result.argv, result.rc, result.stderr, what)
    mapped = classify(failure)
    if mapped is failure:
        raise failure
    raise mapped from failure


def _line_of(text: str, fragment: str) -> str:
    for line in text.splitlines():
        if fragment in line:
            return line.strip()
    return fragment


def _lvm(
    settings: LvmSettings,
    tool: str,
    args: Sequence[str],
    *,
    what: str,
    timeout: float,
    check: bool = True,
) -> CommandResult:
    argv = settings.command(tool, *args)
    try:
        # stdin at EOF: any prompt LVM still asks is answered "n".
        return run(argv, timeout=timeout, check=check, env=settings.env(), what=what, stdin="")
    except CommandFailed as exc:
        mapped = classify(exc)
        if mapped is exc:
            raise
        raise mapped from exc


# -- sizes -----------------------------------------------------------------------


def _size_arg(size_bytes: int, extent_size: Optional[int], what: str) -> str:
    """``--size`` text in bytes: rounded up to *extent_size* (or to 512, the least LVM takes)."""
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
        raise InvalidRequest(f"{what}: size must be a positive number of bytes, not {size_bytes!r}")
    unit = extent_size or SECTOR
    if unit % SECTOR:
        raise InvalidRequest(f"{what}: extent size {unit} is not a multiple of {SECTOR}")
    return f"{round_up(size_bytes, unit)}b"


def round_up(size_bytes: int, unit: int) -> int:
    return -(-size_bytes // unit) * unit


# -- reports ---------------------------------------------------------------------


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
) -> Tuple[List[Dict[str, str]], CommandResult]:
    args = ["--reportformat", "json", "--units", "b", "--nosuffix", "--options", ",".join(columns)]
    if select:
        args += ["--select", select]
    args += list(names)
    result = _lvm(settings, tool, args, what=what, timeout=REPORT_TIMEOUT)
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
    rows, result = _report(settings, "pvs", "pv", _PV_COLUMNS, select=select, names=(),
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


def volume_group(vg: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> VolumeGroup:
    """The VG *vg*; NotFound when LVM does not see it."""
    what = f"read volume group {vg}"
    rows, result = _report(settings, "vgs", "vg", _VG_COLUMNS, select=None,
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
    rows, result = _report(settings, "lvs", "lv", _LV_COLUMNS, select=select,
                           names=[operand(check_vg_name(vg), "volume group")], what=what)
    return _parsed(rows, result, what)


def logical_volume(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> Optional[LogicalVolume]:
    """The LV *vg*/*name*, or None when the VG has no such LV (NotFound when the VG is missing)."""
    what = f"read logical volume {vg}/{name}"
    target = f"{check_vg_name(vg)}/{_existing_lv_name(name)}"
    try:
        rows, result = _report(settings, "lvs", "lv", _LV_COLUMNS, select=None, names=[target], what=what)
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


def _existing_lv_name(name: str) -> str:
    # Lookups accept any name LVM could have made (lvol0, a reserved-looking
    # one made by hand) but never one that could read as an option.
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > NAME_MAX:
        raise InvalidRequest(f"logical volume name {name!r} is invalid")
    return name


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


# -- mutations -------------------------------------------------------------------


def _tag_args(option: str, tags: Iterable[str]) -> List[str]:
    args: List[str] = []
    for tag in tags:
        args += [option, check_tag(tag)]
    return args


def _target(vg: str, name: str) -> str:
    return f"{check_vg_name(vg)}/{_existing_lv_name(name)}"


def create_linear(
    vg: str,
    name: str,
    size_bytes: int,
    tags: Sequence[str] = (),
    *,
    alloc: str = "normal",
    extent_size: Optional[int] = None,
    zero: bool = True,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Create a linear LV; return the size asked of LVM (rounded up to *extent_size* when given).

    *zero* (the default) asks LVM to zero the first 4 KiB and wipe known
    signatures, so blkid sees the new LV blank even when its extents held
    another filesystem.  LVM can only do that through an active device: with
    activation disabled it warns "Skipping zeroing and wipping" [sic] and succeeds
    without zeroing, so such callers must clear the start themselves (or pass
    ``zero=False``, which says so explicitly and avoids the warning).
    """
    what = f"create LV {vg}/{name}"
    check_lv_name(name, vg)
    if alloc not in ALLOCATION_POLICIES:
        raise InvalidRequest(f"{what}: allocation policy {alloc!r} is not one of {', '.join(ALLOCATION_POLICIES)}")
    size = _size_arg(size_bytes, extent_size, what)
    flag = "y" if zero else "n"
    args = ["--yes", "--name", name, "--size", size, "--alloc", alloc, "--zero", flag, "--wipesignatures", flag]
    args += [*_tag_args("--addtag", tags), vg]
    _lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)
    return int(size[:-1])


def create_thin(
    vg: str,
    pool: str,
    name: str,
    virtual_size: int,
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Create a thin LV in thin pool *pool*; return the virtual size asked of LVM.

    New thin LVs read as zeroes (unprovisioned blocks), so nothing to wipe.
    """
    what = f"create thin LV {vg}/{name} in pool {pool}"
    check_lv_name(name, vg)
    _existing_lv_name(pool)
    size = _size_arg(virtual_size, extent_size, what)
    args = ["--yes", "--type", "thin", "--name", name, "--virtualsize", size, "--thinpool", pool]
    args += [*_tag_args("--addtag", tags), vg]
    _lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)
    return int(size[:-1])


def create_thin_pool(vg: str, name: str, size_bytes: Optional[int] = None, *, free_percent: int = 90,
                     settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Create thin pool *name* of *size_bytes*, or of *free_percent* of the VG's free space.

    Without a size some space stays free: LVM keeps a spare metadata LV, and a
    full pool's metadata can then still be grown.
    """
    what = f"create thin pool {vg}/{name}"
    check_lv_name(name, vg)
    if not 1 <= free_percent <= 100:
        raise InvalidRequest(f"{what}: free_percent must be 1 to 100, not {free_percent}")
    size = ["--size", _size_arg(size_bytes, None, what)] if size_bytes else ["--extents", f"{free_percent}%FREE"]
    args = ["--yes", "--type", "thin-pool", "--name", name, *size, check_vg_name(vg)]
    _lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def create_thin_snapshot(
    vg: str,
    origin: str,
    name: str,
    tags: Sequence[str] = (),
    *,
    activation_skip: bool = True,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Snapshot thin LV *origin* as thin LV *name* (no size: it shares the origin's pool).

    LVM marks thin snapshots "skip activation" by default (lvm.conf
    ``auto_set_activation_skip``); we say so explicitly instead of inheriting
    the host's setting.  Keep the flag (the default) for CSI snapshots, which
    are only ever sources, so ``vgchange -ay`` at boot leaves them alone;
    pass ``activation_skip=False`` when the snapshot becomes a volume (a clone
    or restore).  ``activate`` ignores the flag either way.
    """
    what = f"snapshot {vg}/{origin} as {name}"
    check_lv_name(name, vg)
    args = ["--yes", "--snapshot", "--name", name, "--setactivationskip", "y" if activation_skip else "n"]
    args += [*_tag_args("--addtag", tags), _target(vg, origin)]
    _lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def create_cow_snapshot(
    vg: str,
    origin: str,
    name: str,
    size_bytes: int,
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> int:
    """Classic (copy-on-write) snapshot of a thick LV with *size_bytes* of COW space.

    The snapshot becomes invalid when its COW space fills; the origin then
    writes slower for as long as the snapshot exists.
    """
    what = f"snapshot {vg}/{origin} as {name}"
    check_lv_name(name, vg)
    size = _size_arg(size_bytes, extent_size, what)
    args = ["--yes", "--snapshot", "--name", name, "--size", size]
    args += [*_tag_args("--addtag", tags), _target(vg, origin)]
    _lvm(settings, "lvcreate", args, what=what, timeout=CHANGE_TIMEOUT)
    return int(size[:-1])


def extend(
    vg: str,
    name: str,
    size_bytes: int,
    *,
    extent_size: Optional[int] = None,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> bool:
    """Grow *vg*/*name* to *size_bytes*; False when it already has that size (after rounding).

    ``lvextend`` never shrinks: a smaller size raises InvalidRequest.
    """
    what = f"extend LV {vg}/{name}"
    size = _size_arg(size_bytes, extent_size, what)
    argv_args = ["--yes", "--size", size, _target(vg, name)]
    result = _lvm(settings, "lvextend", argv_args, what=what, timeout=CHANGE_TIMEOUT, check=False)
    if result.rc == 0:
        return True
    if re.search(r"matches existing size", result.stderr):
        return False
    if re.search(r"not larger than existing size", result.stderr):
        raise InvalidRequest(f"{what}: cannot shrink to {size_bytes} bytes: {_line_of(result.stderr, 'not larger')}")
    _fail(result, what)


def remove(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove *vg*/*name* (NotFound when it does not exist)."""
    _lvm(settings, "lvremove", ["--yes", _target(vg, name)], what=f"remove LV {vg}/{name}", timeout=REMOVE_TIMEOUT)


def activate(
    vg: str,
    name: str,
    *,
    exclusive: bool = True,
    ignore_skip: bool = True,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Activate *vg*/*name* (exclusively by default; thin snapshots despite their skip flag)."""
    args = ["--activate", "ey" if exclusive else "y"]
    if ignore_skip:
        args.append("--ignoreactivationskip")
    args.append(_target(vg, name))
    _lvm(settings, "lvchange", args, what=f"activate LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def deactivate(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    _lvm(settings, "lvchange", ["--activate", "n", _target(vg, name)], what=f"deactivate LV {vg}/{name}",
         timeout=CHANGE_TIMEOUT)


def add_tags(vg: str, name: str, tags: Sequence[str], *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Add *tags* in one metadata commit (adding a tag the LV has is not an error)."""
    if not tags:
        return
    args = [*_tag_args("--addtag", tags), _target(vg, name)]
    _lvm(settings, "lvchange", args, what=f"tag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def remove_tags(vg: str, name: str, tags: Sequence[str], *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove *tags* in one metadata commit (removing an absent tag is not an error)."""
    if not tags:
        return
    args = [*_tag_args("--deltag", tags), _target(vg, name)]
    _lvm(settings, "lvchange", args, what=f"untag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def create_pv(device: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Initialise *device* as a PV; refuses (Precondition) a device holding a signature."""
    _lvm(settings, "pvcreate", [operand(device, "device")], what=f"create PV on {device}", timeout=CHANGE_TIMEOUT)


def remove_pv(device: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    _lvm(settings, "pvremove", [operand(device, "device")], what=f"remove PV label from {device}",
         timeout=CHANGE_TIMEOUT)


def create_vg(
    vg: str,
    devices: Sequence[str],
    tags: Sequence[str] = (),
    *,
    extent_size: Optional[int] = None,
    metadata_size: Optional[int] = None,
    wipe_signatures: bool = False,
    settings: LvmSettings = DEFAULT_SETTINGS,
) -> None:
    """Create VG *vg* on *devices* (made PVs by this same command) with *tags*, in one metadata commit.

    A device holding a signature is refused (Precondition) unless *wipe_signatures*;
    *metadata_size* is each new PV's metadata area (LVM's default is 1 MiB).
    """
    what = f"create VG {vg}"
    check_vg_name(vg)
    if not devices:
        raise InvalidRequest(f"{what}: no physical volumes given")
    args: List[str] = ["--yes"] if wipe_signatures else []
    if extent_size is not None:
        args += ["--physicalextentsize", _size_arg(extent_size, None, what)]
    if metadata_size is not None:
        args += ["--metadatasize", _size_arg(metadata_size, None, what)]
    args += _tag_args("--addtag", tags) + [vg] + [operand(device, "device") for device in devices]
    _lvm(settings, "vgcreate", args, what=what, timeout=CHANGE_TIMEOUT)


def remove_vg(vg: str, *, force: bool = False, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove VG *vg*; with LVs left in it InUse, unless *force* (which removes them too)."""
    what = f"remove VG {vg}"
    args = (["--force", "--force"] if force else []) + [check_vg_name(vg)]
    result = _lvm(settings, "vgremove", args, what=what, timeout=REMOVE_TIMEOUT, check=False)
    if result.rc == 0:
        return
    if re.search(r"Volume group \S+ not removed", result.stderr):
        failure = CommandFailed(result.argv, result.rc, result.stderr, what)
        raise InUse(f"{what}: it still holds logical volumes") from failure
    _fail(result, what)


def change_tags(
    vg: str, name: str, *, add: Sequence[str], remove: Sequence[str], settings: LvmSettings = DEFAULT_SETTINGS
) -> None:
    """Remove and add tags in ONE metadata commit: a record held in tags is never seen half-changed."""
    if not add and not remove:
        return
    args = [*_tag_args("--deltag", remove), *_tag_args("--addtag", add), _target(vg, name)]
    _lvm(settings, "lvchange", args, what=f"retag LV {vg}/{name}", timeout=CHANGE_TIMEOUT)


def change_vg_tags(vg: str, *, add: Sequence[str], remove: Sequence[str],
                   settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Remove and add VG tags in one metadata commit."""
    if not add and not remove:
        return
    args = [*_tag_args("--deltag", remove), *_tag_args("--addtag", add), check_vg_name(vg)]
    _lvm(settings, "vgchange", args, what=f"retag VG {vg}", timeout=CHANGE_TIMEOUT)


def refresh(vg: str, name: str, *, settings: LvmSettings = DEFAULT_SETTINGS) -> None:
    """Reload an active LV's kernel mapping (after lvextend, for instance)."""
    _lvm(settings, "lvchange", ["--refresh", _target(vg, name)], what=f"refresh LV {vg}/{name}",
         timeout=CHANGE_TIMEOUT)
