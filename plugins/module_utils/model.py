"""What the core knows about volumes and snapshots, independent of the backing pool."""

from __future__ import annotations

import time
import unicodedata
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from .errors import InvalidRequest

#: where the agent keeps its records (--state-dir) and where the modules look for the ones they share with it
DEFAULT_STATE_DIR = "/var/lib/basalt"
CREATING = "creating"
READY = "ready"
DELETING = "deleting"

SOURCE_SNAPSHOT = "snapshot"
SOURCE_VOLUME = "volume"

# Fixed namespaces: the same name always maps to the same id, so a retried
# create finds its own earlier (perhaps unfinished) attempt without an index.
_VOLUME_NS = uuid.UUID("6f1c1a52-4b8e-4cf6-9a8e-1f0a3c6d2b71")
_SNAPSHOT_NS = uuid.UUID("0e4d7c55-2a61-4f3b-8d0e-5b9e6a1c4f28")
VOLUME_PREFIX = "vol-"
SNAPSHOT_PREFIX = "snap-"


def now() -> float:
    """Creation timestamps come from here, so tests can fix the clock."""
    return time.time()


#: the longest volume or snapshot name, in bytes of UTF-8 (CSI's limit for names and ids)
MAX_NAME_BYTES = 128


def check_name(name: str, what: str = "name") -> str:
    """The name rule every face applies to volume and snapshot names (the agent's CSI names, the modules').

    Any Unicode text of 1 to MAX_NAME_BYTES bytes in UTF-8 without control
    characters (the CSI spec bans them; a NUL or a newline in a name would
    also reach logs and tags).
    """
    if not name:
        raise InvalidRequest(f"{what} is required")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidRequest(f"{what} is longer than {MAX_NAME_BYTES} bytes in UTF-8")
    bad = [c for c in name if unicodedata.category(c) == "Cc"]
    if bad:
        raise InvalidRequest(f"{what} contains control character(s) {', '.join(repr(c) for c in bad)}")
    return name


def volume_id_for(name: str) -> str:
    return VOLUME_PREFIX + uuid.uuid5(_VOLUME_NS, name).hex


def snapshot_id_for(name: str) -> str:
    return SNAPSHOT_PREFIX + uuid.uuid5(_SNAPSHOT_NS, name).hex


def is_volume_id(text: str) -> bool:
    return _is_id(text, VOLUME_PREFIX)


def is_snapshot_id(text: str) -> bool:
    return _is_id(text, SNAPSHOT_PREFIX)


def _is_id(text: str, prefix: str) -> bool:
    if not text.startswith(prefix):
        return False
    tail = text[len(prefix):]
    return len(tail) == 32 and all(c in "0123456789abcdef" for c in tail)


@dataclass(frozen=True)
class ContentSource:
    kind: str  # SOURCE_SNAPSHOT or SOURCE_VOLUME
    id: str


@dataclass
class Publication:
    """A controller-side grant of a volume to a node."""

    readonly: bool
    access_mode: str


@dataclass
class Volume:
    id: str
    name: str
    size: int
    pool: str
    parameters: Dict[str, str] = field(default_factory=dict)
    source: Optional[ContentSource] = None
    state: str = CREATING
    created_at: float = field(default_factory=lambda: now())  # pylint: disable=unnecessary-lambda
    copy_method: Optional[str] = None
    publications: Dict[str, Publication] = field(default_factory=dict)
    ephemeral: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "Volume":
        source = doc.get("source")
        return cls(
            id=doc["id"],
            name=doc["name"],
            size=int(doc["size"]),
            pool=doc["pool"],
            parameters=dict(doc.get("parameters") or {}),
            source=ContentSource(**source) if source else None,
            state=doc.get("state", CREATING),
            created_at=float(doc.get("created_at", 0.0)),
            copy_method=doc.get("copy_method"),
            publications={n: Publication(**p) for n, p in (doc.get("publications") or {}).items()},
            ephemeral=bool(doc.get("ephemeral", False)),
        )


@dataclass
class Snapshot:
    id: str
    name: str
    source_volume_id: str
    size: int
    pool: str
    parameters: Dict[str, str] = field(default_factory=dict)
    state: str = CREATING
    created_at: float = field(default_factory=lambda: now())  # pylint: disable=unnecessary-lambda
    copy_method: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Dict[str, Any]) -> "Snapshot":
        return cls(
            id=doc["id"],
            name=doc["name"],
            source_volume_id=doc["source_volume_id"],
            size=int(doc["size"]),
            pool=doc["pool"],
            parameters=dict(doc.get("parameters") or {}),
            state=doc.get("state", CREATING),
            created_at=float(doc.get("created_at", 0.0)),
            copy_method=doc.get("copy_method"),
        )
