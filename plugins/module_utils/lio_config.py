"""LIO's saved configuration, one export at a time: rtslib's ``saveconfig.json``, which ``targetctl restore``
(the target service at boot) loads.

rtslib's own ``RTSRoot().save_to_file()`` dumps every object on the host, each
attribute and parameter read from configfs: in the VM tier that was 90 ms of a
110 ms save with one export, and it grows with every export.  The LIO backend
instead replaces, in the file as it is, the entries of the exports an RPC
changed, written from what it sets (rtslib's restore takes the kernel's
defaults for what an entry leaves out, as creating the objects did).  The
other entries (other exports, the host's own targets) stay as saved.  The
file holds CHAP secrets: mode 0600, written through a temp file that is
fsynced and renamed, then the directory fsynced.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .atomicfile import write_atomic

Entry = Dict[str, Any]
#: A NodeACL entry's CHAP credentials, as rtslib's dump names them.
CHAP_KEYS = ("chap_userid", "chap_password", "chap_mutual_userid", "chap_mutual_password")
#: An export's two entries: its storage object and its target.
Entries = Tuple[Entry, Entry]


def so_path(name: str) -> str:
    """How a LUN entry names its block backstore."""
    return f"/backstores/block/{name}"


def storage_object_entry(name: str, device: str, serial: str, read_only: bool) -> Entry:
    return {"plugin": "block", "name": name, "dev": device, "wwn": serial, "readonly": read_only,
            "write_back": False}


def acl_entry(initiator_iqn: str, credentials: Dict[str, str], lun: int, write_protect: Optional[bool]) -> Entry:
    """One node's ACL: *credentials* as LIO holds them (``chap_userid``, ``chap_password``,
    ``chap_mutual_userid``, ``chap_mutual_password``; as rtslib's dump, only those set); *write_protect*
    None: it has no mapped LUN (yet)."""
    mapped = [] if write_protect is None else [{"index": lun, "tpg_lun": lun, "write_protect": write_protect}]
    entry: Entry = {"node_wwn": initiator_iqn, "mapped_luns": mapped}
    entry.update((name, value) for name, value in credentials.items() if value)
    return entry


def target_entry(target_iqn: str, tag: int, enabled: bool, attributes: Dict[str, str],
                 portals: Sequence[Tuple[str, int]], lun: int, so_name: str, acls: Iterable[Entry]) -> Entry:
    tpg = {"tag": tag, "enable": enabled, "attributes": dict(attributes),
           "portals": [{"ip_address": ip, "port": port} for ip, port in portals],
           "luns": [{"index": lun, "storage_object": so_path(so_name)}],
           "node_acls": sorted(acls, key=lambda acl: str(acl["node_wwn"]))}
    return {"wwn": target_iqn, "fabric": "iscsi", "tpgs": [tpg]}


def read(path: str) -> Optional[Dict[str, Any]]:
    """The saved configuration, or None when there is none or it is not rtslib's form (the caller then saves
    everything the rtslib way)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or not all(isinstance(document.get(key, []), list)
                                                 for key in ("storage_objects", "targets")):
        return None
    return document


def _so_names_of(target: Entry) -> List[str]:
    return [str(lun.get("storage_object", "")).rpartition("/")[2]
            for tpg in target.get("tpgs", []) for lun in tpg.get("luns", [])]


def merged(document: Dict[str, Any], target_iqn: str, so_names: Iterable[str],
           entries: Optional[Entries]) -> Dict[str, Any]:
    """*document* with *target_iqn*'s entries replaced by *entries* (None: the export is gone): its old target
    entry goes, and with it the storage objects that entry's LUNs named or *so_names* names (those the
    backend saw this export use)."""
    targets = [t for t in document.get("targets", []) if isinstance(t, dict)]
    old = [t for t in targets if t.get("wwn") == target_iqn]
    stale = set(so_names) | {name for t in old for name in _so_names_of(t)}
    kept_targets = [t for t in targets if t.get("wwn") != target_iqn]
    still_used = {name for t in kept_targets for name in _so_names_of(t)}
    gone = stale - still_used
    objects = [so for so in document.get("storage_objects", [])
               if not (isinstance(so, dict) and so.get("plugin") == "block" and so.get("name") in gone)]
    if entries is not None:
        so, target = entries
        objects = [o for o in objects if not (o.get("plugin") == "block" and o.get("name") == so["name"])]
        objects.append(so)
        kept_targets.append(target)
    return {**document, "storage_objects": objects, "targets": kept_targets}


def _comparable_so(entry: Entry) -> Tuple[Any, ...]:
    return (entry.get("plugin"), entry.get("name"), entry.get("dev"), entry.get("wwn"),
            bool(entry.get("readonly")), bool(entry.get("write_back")))


def _comparable_target(entry: Entry, attribute_names: Iterable[str]) -> Tuple[Any, ...]:
    """A target entry reduced to what :func:`target_entry` writes: rtslib's own dump of the same export also
    has every attribute and parameter (numbers for digit strings), aliases, portal and ACL options."""
    names = set(attribute_names)

    def acl(node: Entry) -> Tuple[Any, ...]:
        mapped = sorted(((m.get("index"), m.get("tpg_lun"), bool(m.get("write_protect")))
                         for m in node.get("mapped_luns", [])), key=repr)
        return (node.get("node_wwn"), tuple(node.get(name) or "" for name in CHAP_KEYS), mapped)

    def tpg(group: Entry) -> Tuple[Any, ...]:
        attributes = group.get("attributes") or {}
        return (group.get("tag"), bool(group.get("enable", True)),
                sorted(((key, str(value)) for key, value in attributes.items() if key in names), key=repr),
                sorted(((p.get("ip_address"), p.get("port")) for p in group.get("portals", [])), key=repr),
                sorted(((lun.get("index"), lun.get("storage_object")) for lun in group.get("luns", [])), key=repr),
                sorted((acl(node) for node in group.get("node_acls", [])), key=repr))
    return (entry.get("wwn"), entry.get("fabric"), [tpg(group) for group in entry.get("tpgs", [])])


def holds(document: Dict[str, Any], target_iqn: str, entries: Optional[Entries]) -> bool:
    """Whether *document* already saves *target_iqn* as *entries* (None: not at all), in this module's form
    or in rtslib's own (its whole save, e.g. the first one on a host)."""
    old = [t for t in document.get("targets", []) if isinstance(t, dict) and t.get("wwn") == target_iqn]
    if entries is None:
        return not old
    so, target = entries
    saved_so = [o for o in document.get("storage_objects", []) if isinstance(o, dict)
                and o.get("plugin") == "block" and o.get("name") == so["name"]]
    names = [name for group in target["tpgs"] for name in group["attributes"]]
    return ([_comparable_target(t, names) for t in old] == [_comparable_target(target, names)]
            and [_comparable_so(o) for o in saved_so] == [_comparable_so(so)])


def write(path: str, document: Dict[str, Any]) -> None:
    """Replace the file durably (mode 0600: CHAP secrets), in rtslib's layout."""
    write_atomic(path, (json.dumps(document, sort_keys=True, indent=2) + "\n").encode(), mode=0o600)
