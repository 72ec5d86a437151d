"""LVM names and the tag codec: what may reach an LVM command line, and records held in tags.

Every name and tag is checked here before any command runs: nothing that could
read as an option or break a report selection gets through.  A value longer
than one tag (a JSON record) is split over several ``key.<index>.<count>:``
tags in base64 and put back together by ``decode_tag_value``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Dict, Iterable, List, Optional

from .errors import InvalidRequest, Precondition

#: the tag a pool puts on every LV it owns; reports filter on it
MANAGED_TAG = "basalt.managed"

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


def existing_lv_name(name: str) -> str:
    # Lookups accept any name LVM could have made (lvol0, a reserved-looking
    # one made by hand) but never one that could read as an option.
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > NAME_MAX:
        raise InvalidRequest(f"logical volume name {name!r} is invalid")
    return name
