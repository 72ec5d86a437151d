"""``basalt``: the operator's command (list and show what a node has, doctor, gc).

It takes the agent's own settings (same names, same defaults, ``--config`` and
``CSI_ENDPOINT``), so it is pointed at a node exactly as the agent there is.
Output is a human table by default, ``-o json`` or ``-o yaml`` for machines,
and ``--query`` applies a JMESPath expression to the JSON form first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc
import jmespath
import yaml
from jmespath.exceptions import JMESPathError

from basalt_core.errors import StorageError
from basalt_core.sizes import describe

from . import __version__, config, doctor
from .inventory import CallFailed, Inventory, Record

log = logging.getLogger("basalt")

Column = Tuple[str, str, Callable[[Any], str]]


def _size(value: Any) -> str:
    return describe(int(value)) if value is not None else "-"


def _text(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


COLUMNS: Dict[str, List[Column]] = {
    "volumes": [("VOLUME", "volume_id", _text), ("CAPACITY", "capacity_bytes", _size),
                ("SOURCE", "content_source", _text), ("PUBLISHED", "published_node_ids", _text),
                ("ABNORMAL", "abnormal", _text), ("CONDITION", "condition", _text)],
    "snapshots": [("SNAPSHOT", "snapshot_id", _text), ("SOURCE VOLUME", "source_volume_id", _text),
                  ("SIZE", "size_bytes", _size), ("CREATED", "creation_time", _text),
                  ("READY", "ready_to_use", _text)],
    "pools": [("POOL", "pool", _text), ("NODE", "node", _text), ("SIZE", "size_bytes", _size),
              ("ALLOCATED", "allocated_bytes", _size), ("AVAILABLE", "available_bytes", _size),
              ("PROVISIONED", "provisioned_bytes", _size), ("VOLUMES", "volumes", _text),
              ("SNAPSHOTS", "snapshots", _text), ("THIN DATA %", "thin_data_percent", _text),
              ("THIN META %", "thin_metadata_percent", _text)],
    "exports": [("TARGET", "target_iqn", _text), ("VOLUME", "volume_id", _text), ("DEVICE", "device", _text),
                ("READ-ONLY", "read_only", _text), ("INITIATORS", "initiators", _text), ("OWNED", "owned", _text)],
    "sessions": [("SID", "sid", _text), ("TARGET", "target_iqn", _text), ("PORTAL", "portal", _text),
                 ("VOLUME", "volume_id", _text), ("OWNED", "owned", _text)],
    "findings": [("STATUS", "status", _text), ("CHECK", "check", _text), ("WHAT", "what", _text),
                 ("FIX", "fix", _text)],
}
#: what ``show`` looks an object up by
KEYS = {"volumes": "volume_id", "snapshots": "snapshot_id", "pools": "pool", "exports": "target_iqn",
        "sessions": "sid"}


def table(rows: List[Record], columns: Optional[List[Column]] = None) -> str:
    if columns is None:  # a --query result: its own keys
        keys = list(dict.fromkeys(k for row in rows for k in row))
        columns = [(k.upper(), k, _text) for k in keys]
    cells = [[header for header, _key, _fmt in columns]]
    cells += [[fmt(row.get(key)) for _header, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def render(data: Any, output: str, query: Optional[str], columns: Optional[List[Column]]) -> str:
    if query:
        data = jmespath.search(query, data)
        columns = None
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    if output == "yaml":
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip()
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return table(data, columns) if data or columns else "(none)"
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        return "\n".join(f"{k.ljust(width)}  {_text(v)}" for k, v in data.items())
    return _text(data) if not isinstance(data, (list, dict)) else json.dumps(data)


def _listing(inventory: Inventory, kind: str) -> List[Record]:
    if kind == "volumes":
        return inventory.volumes()
    if kind == "snapshots":
        return inventory.snapshots()
    return {"pools": inventory.pools, "exports": inventory.exports, "sessions": inventory.sessions}[kind]()


def _show(inventory: Inventory, kind: str, key: str) -> Record:
    if kind == "volumes":
        return inventory.volume(key)
    if kind == "snapshots":
        found = inventory.snapshots(key)
    else:
        found = [row for row in _listing(inventory, kind) if str(row[KEYS[kind]]) == key
                 or row.get("volume_id") == key]
    if not found:
        raise CallFailed(grpc.StatusCode.NOT_FOUND, f"no {kind[:-1]} {key!r}")
    return found[0]


def parser() -> argparse.ArgumentParser:
    settings = argparse.ArgumentParser(add_help=False)
    config.add_settings(settings)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table",
                        help="table (default), json or yaml")
    output.add_argument("--query", metavar="JMESPATH",
                        help="a JMESPath expression applied to the JSON form, e.g. \"[?abnormal].volume_id\"")
    p = argparse.ArgumentParser(
        prog="basalt", description="Basalt's operator command: what this node's agent and pool hold, "
        "a doctor that says what is wrong and how to fix it, and gc for Basalt's own leftovers.",
        epilog="Listings talk to the agent over its socket (--endpoint, CSI_ENDPOINT) when it runs there, "
        "and read the pool through the storage core when it does not.")
    p.add_argument("--version", action="version", version=f"basalt {__version__}")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="COMMAND")
    for kind in KEYS:
        sub = kinds.add_parser(kind, help=f"list or show {kind}")
        verbs = sub.add_subparsers(dest="verb", required=True)
        verbs.add_parser("list", parents=[settings, output], help=f"list {kind}")
        show = verbs.add_parser("show", parents=[settings, output], help=f"show one of the {kind}")
        show.add_argument("id", help=f"the {KEYS[kind]}" + (" or volume_id" if kind in ("exports", "sessions")
                                                            else ""))
    kubelet = argparse.ArgumentParser(add_help=False)
    kubelet.add_argument("--kubelet-root", default=doctor.DEFAULT_KUBELET_ROOT,
                         help=f"kubelet's root directory (default {doctor.DEFAULT_KUBELET_ROOT})")
    kinds.add_parser("doctor", parents=[settings, output, kubelet],
                     help="check this node for what Basalt needs and for leftovers, one line per finding with the "
                     "fix; exit 1 when something is wrong")
    gc = kinds.add_parser("gc", parents=[settings, output, kubelet],
                          help="remove the leftovers doctor reports as safe to remove (dry run without --apply); "
                          "those in use are left and named, exit 1")
    gc.add_argument("--apply", action="store_true", help="remove them (default: only say what would go)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="basalt: %(message)s", stream=sys.stderr)
    try:
        settings = config.from_args(args)
        inventory = Inventory(settings)
        status = 0
        if args.kind == "doctor":
            findings = doctor.examine(inventory, args.kubelet_root)
            data: Any = [f.as_dict() for f in findings]
            status = 1 if any(f.status != doctor.OK for f in findings) else 0
        elif args.kind == "gc":
            removed = doctor.collect(inventory, args.kubelet_root, apply=args.apply)
            data = [f.as_dict() for f in removed]
            status = 1 if any(f.status in (doctor.FAIL, doctor.IN_USE) for f in removed) else 0
        elif args.verb == "list":
            data = _listing(inventory, args.kind)
        else:
            data = _show(inventory, args.kind, args.id)
        columns = COLUMNS["findings" if args.kind in ("doctor", "gc") else args.kind]
        print(render(data, args.output, args.query, columns))
        return status
    except (StorageError, CallFailed, JMESPathError) as error:
        print(f"basalt: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
