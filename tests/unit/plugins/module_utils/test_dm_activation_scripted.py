"""dm activation, scripted (this machine has no device-mapper): what the start-up sweep deactivates and what a
copy takes down after itself.  Report rows and helpers as in test_lvm_pool_scripted.py; the same paths run
for real in the VM tier (tests/conformance/test_dm_startup.py, tests/vm/test_vm_chaos.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from test_lvm_pool_scripted import PVS, VG, found, lvs_all, lvs_json, row_like, thin_pool

from basalt_core import lvm
from basalt_core.lvm_pool import LvmPool, lv_name
from basalt_core.model import snapshot_id_for, volume_id_for
from basalt_core.pool_spec import PoolSettings
from basalt_core.sizes import MiB


def active_row(base: str, name: str, attr: str) -> Dict[str, str]:
    """A managed LV as LVM lists it with device-mapper (each LV its own uuid: rows of one LV are merged)."""
    return row_like(base, name, [lvm.MANAGED_TAG], lv_attr=attr, lv_uuid=f"uuid-{name}")


def deactivation(name: str, rc: int = 0, stderr: str = "") -> Any:
    return (["lvchange", "--activate", "n", f"{VG}/{name}"], rc, "", stderr)


def test_start_up_deactivates_only_the_pools_own_idle_activations(script: Any) -> None:
    """dm activation: start-up deactivates the pool's LVs that are active, unopened and wanted by no record
    (a copy or a NodeStage killed midway left them); a wanted, an open, a COW snapshot and an LV outside
    Basalt's names stay (LVM's selection on the managed tag already keeps every untagged LV out)."""
    stray, staged, opened = (lv_name(volume_id_for(what)) for what in ("stray", "staged", "open"))
    copy = lv_name(snapshot_id_for("copy"))
    script([
        PVS,
        (lvs_all(True), 0, lvs_json(
            active_row("thin2", stray, "Vwi-a-tz--"), active_row("thin2", copy, "Vwi-a-tz--"),
            active_row("thin2", staged, "Vwi-aotz--"), active_row("thin2", opened, "Vwi-aotz--"),
            active_row("cowsnap", "csi-snap-" + "c" * 32, "swi-a-s---"),
            active_row("thin2", "not-basalts", "Vwi-a-tz--")), ""),
        deactivation(stray),
        deactivation(copy),
    ])
    assert thin_pool().detach_strays([volume_id_for("staged")]) == [
        f"{VG}/{stray} (deactivated)", f"{VG}/{copy} (deactivated)"]


def test_a_stray_activation_that_cannot_be_taken_down_does_not_stop_start_up(script: Any) -> None:
    busy, idle = lv_name(volume_id_for("busy")), lv_name(volume_id_for("idle"))
    script([
        PVS,
        (lvs_all(True), 0, lvs_json(active_row("vol-normal", busy, "-wi-a-----"),
                                    active_row("vol-normal", idle, "-wi-a-----")), ""),
        deactivation(busy, 5, f"  Logical volume {VG}/{busy} in use.\n"),
        deactivation(idle),
    ])
    assert LvmPool(VG, PoolSettings()).detach_strays([]) == [f"{VG}/{idle} (deactivated)"]


def test_a_copy_takes_down_the_activations_it_made(script: Any, tmp_path: Path) -> None:
    """dm activation: a copy activates an idle origin and target for the copy only, and deactivates both after
    it, although the LVs it was given were read inactive (it once left both active: seen in the VM tier)."""
    origin, target = lv_name(volume_id_for("idle-origin")), lv_name(snapshot_id_for("idle-copy"))
    files = {name: tmp_path / name for name in (origin, target)}
    files[origin].write_bytes(b"data" * (MiB // 4))
    files[target].write_bytes(bytes(MiB))
    rows = {name: row_like("vol-normal", name, [lvm.MANAGED_TAG], lv_attr="-wi-------", lv_uuid=f"uuid-{name}",
                           lv_size=str(MiB), lv_path=str(files[name])) for name in (origin, target)}
    activations = []
    for name in (origin, target):
        activations += [(["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/{name}"], 0, "", ""),
                        found(dict(rows[name], lv_attr="-wi-a-----"))]
    script([*activations, deactivation(target), deactivation(origin)])
    idle = lvm.parse_logical_volumes(list(rows.values()))
    LvmPool(VG, PoolSettings())._copy_bytes(idle[0], idle[1])
    assert files[target].read_bytes() == files[origin].read_bytes()
