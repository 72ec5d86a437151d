"""Foreign objects are present, and intact, while the suites run (tests/foreign_objects.py).

Under ``scripts/test.sh`` the objects were made before any suite started and
``BASALT_FOREIGN_OBJECTS`` names their record: this test proves they are there
(and, run again at the end of the file-pool conformance run, that nothing touched
them). Run alone, without that record, it makes its own set, checks it, and
checks that ``down`` removes exactly that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices, LVM and tgtd")

_SPEC = importlib.util.spec_from_file_location("foreign_objects", Path(__file__).parents[1] / "foreign_objects.py")
assert _SPEC is not None and _SPEC.loader is not None
foreign = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(foreign)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    given = os.environ.get("BASALT_FOREIGN_OBJECTS")
    if given:
        with open(given, encoding="utf-8") as handle:
            yield json.load(handle)
        return
    path = str(tmp_path_factory.mktemp("foreign") / "record.json")
    made = foreign.up(path)
    try:
        yield made
    finally:
        assert foreign.down(path) == []
        assert not any(foreign._attached(loop["device"], loop["backing_file"]) for loop in made["loops"])
        assert not _system_vg_exists(made["vg"])
        assert not os.path.exists(os.path.join(foreign.TGTD_SOCKETS, f"socket.{made['tgtd']['control_port']}"))
        assert not any(os.path.lexists(path) for path in made["files"] + made["dirs"])


def _system_vg_exists(name: str) -> bool:
    """Asked through the system's LVM config, as any tool without a private one would."""
    found = subprocess.run(["vgs", *foreign.NO_ACTIVATION, "--noheadings", "-o", "vg_name", name],
                           capture_output=True, text=True, env=foreign.LVM_ENV)
    return found.returncode == 0 and found.stdout.strip() == name


def test_loop_devices_are_attached_and_hold_their_data(record: Dict[str, Any]) -> None:
    assert len(record["loops"]) == 3
    for loop in record["loops"]:
        assert foreign._attached(loop["device"], loop["backing_file"]), loop
    for loop in record["loops"][:2]:
        with open(loop["device"], "rb") as handle:
            assert handle.read(len(foreign.MARKER)) == foreign.MARKER, f"{loop['device']} was written to"


def test_foreign_vg_is_visible_in_the_system_config(record: Dict[str, Any]) -> None:
    assert _system_vg_exists(record["vg"])
    lvs = subprocess.run(["lvs", *foreign.NO_ACTIVATION, "--noheadings", "-o", "lv_name,lv_tags", record["vg"]],
                         capture_output=True, text=True, env=foreign.LVM_ENV, check=True).stdout.split()
    assert lvs == ["foreign-data"], "the foreign VG's LV was removed, renamed or tagged"


def test_foreign_target_is_exported(record: Dict[str, Any]) -> None:
    tgtd = record["tgtd"]
    shown = foreign._tgtadm(tgtd["control_port"], "--mode", "target", "--op", "show")
    assert f"Target {tgtd['tid']}: {tgtd['iqn']}" in shown
    assert f"Backing store path: {record['loops'][1]['device']}" in shown


def test_host_role_files_are_intact(record: Dict[str, Any]) -> None:
    # the ones the machine did not have already: planted, and no test's run of the roles removed or changed them
    planted = [path for path in foreign.host_role_files() if path in record["files"]]
    assert planted == record["files"] and len(foreign.host_role_files()) == len(foreign.HOST_ROLE_FILES)
    for path in planted:
        assert os.path.exists(path), f"{path} was removed"
        with open(path, "rb") as handle:
            assert handle.read() == foreign.FILE_MARKER, f"{path} was changed"
