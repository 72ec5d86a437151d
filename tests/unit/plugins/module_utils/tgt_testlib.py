"""What the tgt unit tests share: the scripted tgtadm calls, recorded listings and the grant record's files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from basalt_core import tgt, tgt_config
from basalt_core.iscsi_target import Chap

RECORDED = Path(__file__).parent / "iscsi_recorded"
SHOW = (RECORDED / "tgtadm_target_show.txt").read_text()
RW = "iqn.2026-11.io.basalt:pvc-5b1fd0c2"
RO = "iqn.2026-11.io.basalt:pvc-7a3e9d41"
NODE_A = "iqn.2026-11.io.example:node-a"
NODE_B = "iqn.2026-11.io.example:node-b"
CHAP_A = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
C = ["tgtadm", "-C", "7", "--lld", "iscsi"]
SHOW_T = [*C, "--mode", "target", "--op", "show"]

Call = Tuple[List[str], int, str, str]


def ok(argv: List[str], stdout: str = "") -> Call:
    return (argv, 0, stdout, "")


def made_export(tid: str, iqn: str, device: str, params: str) -> List[Call]:
    """The commands that make a new export: target, its address ACL that admits nobody, the LUN and its
    serial and mode (*params*), in this order."""
    return [
        ok([*C, "--mode", "target", "--op", "new", "--tid", tid, "--targetname", iqn]),
        ok([*C, "--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", tgt_config.NO_ADDRESS]),
        ok([*C, "--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1", "--backing-store", device,
            "--bstype", "rdwr"]),
        ok([*C, "--mode", "logicalunit", "--op", "update", "--tid", tid, "--lun", "1", "--params", params]),
    ]


def old_record(backend: tgt.TgtBackend, targets: Dict[str, Dict[str, Optional[Chap]]]) -> None:
    """A grant record as an older Basalt kept it: a JSON file of its own, without LUNs (read, then superseded)."""
    doc = {iqn: {"grants": {i: tgt_config.chap_to_json(c) for i, c in grants.items()}}
           for iqn, grants in targets.items()}
    Path(backend.record_path).parent.mkdir(parents=True, exist_ok=True)
    Path(backend.record_path).write_text(json.dumps({"version": 1, "targets": doc}))


def saved(backend: tgt.TgtBackend) -> Dict[str, Any]:
    """The grant record's targets as the config file carries them (the older JSON file is gone by then)."""
    assert not Path(backend.record_path).exists(), "the config file's record supersedes the JSON file"
    doc = tgt_config.record_in(Path(backend.conf_path).read_text())
    assert doc is not None and doc["version"] == 2
    return dict(doc["targets"])
