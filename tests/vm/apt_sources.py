"""The Debian mirror this machine's own apt uses, read from its sources (one-line and deb822).

The VM image builder fetches from the mirror the host is configured with, so a
local mirror or proxy works and no host name is written into the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Tuple

# (types, URIs, suites, components) of one source entry
Entry = Tuple[List[str], List[str], List[str], List[str]]


def _one_line(text: str) -> Iterator[Entry]:
    """``deb [options] URI SUITE COMPONENT...`` lines of a sources.list file."""
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] in ("deb", "deb-src"):
            rest = words[1:]
            if rest and rest[0].startswith("["):  # [arch=amd64 signed-by=...]
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if len(rest) >= 2:
                yield [words[0]], [rest[0]], [rest[1]], rest[2:]


def _deb822(text: str) -> Iterator[Entry]:
    """Stanzas of a ``.sources`` file (fields may continue on indented lines)."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _sep, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "uris" in fields:
            yield (fields.get("types", "").split(), fields["uris"].split(), fields.get("suites", "").split(),
                   fields.get("components", "").split())


def entries(root: str = "/") -> Iterator[Entry]:
    """Every source entry, in the order apt reads them: sources.list, then sources.list.d by name."""
    etc = Path(root, "etc", "apt")
    main = etc / "sources.list"
    if main.is_file():
        yield from _one_line(main.read_text(errors="replace"))
    parts = etc / "sources.list.d"
    for path in sorted(parts.iterdir()) if parts.is_dir() else []:
        if path.suffix == ".list":
            yield from _one_line(path.read_text(errors="replace"))
        elif path.suffix == ".sources":
            yield from _deb822(path.read_text(errors="replace"))


def debian_mirror(suite: str, root: str = "/") -> str:
    """The first ``deb`` URI serving *suite* with ``main``; BASALT_VM_MIRROR overrides it."""
    override = os.environ.get("BASALT_VM_MIRROR")
    if override:
        return override.rstrip("/")
    for types, uris, suites, components in entries(root):
        if "deb" in types and suite in suites and "main" in components:
            for uri in uris:
                if uri.startswith(("http://", "https://", "file:/")):
                    return uri.rstrip("/")
    raise SystemExit(f"no apt source of this machine serves Debian {suite} main (/etc/apt/sources.list, "
                     "sources.list.d): add one, or set BASALT_VM_MIRROR to a Debian mirror URL")
