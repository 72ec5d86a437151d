"""Shared by the LVM command-layer tests: the recorded LVM 2.03.16 calls (lvm_recorded)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

RECORDED = Path(__file__).parent / "lvm_recorded"
VG = "basalt-rec"
MiB = 1 << 20
EXTENT = 4 * MiB
NAME_TAG = "basalt.name:0/1=cHZjLTViMWZkMGMyLW5vcm1hbA"  # "pvc-5b1fd0c2-normal"
LV_COLS = ("lv_name,vg_name,lv_uuid,lv_size,lv_attr,lv_tags,pool_lv,origin,data_percent,metadata_percent,lv_path,"
           "segtype,seg_start_pe,seg_size_pe,seg_pe_ranges,devices")
VG_COLS = "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,vg_tags"
PV_COLS = "pv_name,vg_name,pv_size,pv_free,pe_start"
REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix", "--options"]

Call = Tuple[List[str], int, str, str]


def lock_free(path: Path) -> bool:
    """Whether someone else (LVM) could take the lock file at *path* now (a file made to ask is removed)."""
    existed = path.exists()
    fd = os.open(path, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        if not existed:
            path.unlink()  # before the close, as LVM releases: nobody locks a file about to go
        os.close(fd)


def _commands() -> Dict[str, Tuple[List[str], int]]:
    table = {}
    for line in (RECORDED / "commands.tsv").read_text().splitlines():
        name, rc, argv = line.split("\t")
        table[name] = (argv.split(" "), int(rc))
    return table


COMMANDS = _commands()


def read_recorded(name: str) -> str:
    path = RECORDED / name
    return path.read_text() if path.exists() else ""


def recorded(name: str, argv: Optional[List[str]] = None) -> Call:
    """The call recorded as *name*: its argv (checked against *argv* when given), rc, stdout and stderr."""
    real_argv, rc = COMMANDS[name]
    if argv is not None:
        assert argv == real_argv, f"{name}: the argv under test differs from the recorded one"
    stdout = read_recorded(f"{name}.json") or read_recorded(f"{name}.stdout.txt")
    return (real_argv, rc, stdout, read_recorded(f"{name}.stderr.txt"))


def stderr_of(name: str) -> str:
    return read_recorded(f"{name}.stderr.txt")
