"""basalt_core.lvm against real LVM2, on loop devices of its own, with activation disabled.

LVM runs with a private LVM_SYSTEM_DIR whose lvm.conf admits only this
module's loop devices, so the host's VGs are never seen.  Thin pools, thin LVs
and snapshots cannot be created without device-mapper; their metadata is
loaded with ``vgcfgrestore`` from tests/unit/plugins/module_utils/lvm_recorded/thin_lvs.vgtext.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from basalt_core import losetup, lvm
from basalt_core.activation import LoopActivator
from basalt_core.errors import Conflict, InvalidRequest, NoSpace, NotFound, Precondition
from basalt_core.runner import run

MiB = 1 << 20
MANAGED = lvm.MANAGED_TAG
THIN_LVS = Path(__file__).parent / "plugins" / "module_utils" / "lvm_recorded" / "thin_lvs.vgtext"

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (loop devices, LVM)"),
    pytest.mark.skipif(shutil.which("lvcreate") is None or shutil.which("losetup") is None,
                       reason="needs lvm2 and losetup"),
]


@dataclass(frozen=True)
class RealVg:
    name: str
    devices: List[str]
    settings: lvm.LvmSettings
    workdir: str

    @property
    def env(self) -> Dict[str, str]:
        return self.settings.env()


@pytest.fixture(scope="module")
def vg() -> Iterator[RealVg]:
    """A VG on two 64 MiB sparse loop devices; removes exactly what it made."""
    workdir = tempfile.mkdtemp(prefix="basalt-lvm-real-")
    devices: List[str] = []
    name = f"basalt-test-{os.getpid()}"
    settings = lvm.LvmSettings(system_dir=os.path.join(workdir, "etc"))
    made_vg = False
    try:
        for index in range(2):
            image = os.path.join(workdir, f"pv{index}.img")
            with open(image, "wb") as handle:
                handle.truncate(64 * MiB)
            attached = run(["losetup", "--find", "--show", image], what=f"attach {image}").stdout.strip()
            devices.append(attached)
        os.mkdir(settings.system_dir or "")
        Path(settings.system_dir or "", "lvm.conf").write_text(lvm.isolated_config(devices) + "\n")
        for device in devices:
            lvm.create_pv(device, settings=settings)
        lvm.create_vg(name, devices, settings=settings)
        made_vg = True
        yield RealVg(name, devices, settings, workdir)
    finally:
        if made_vg:
            try:
                lvm.remove_vg(name, force=True, settings=settings)
            except Exception as exc:  # keep cleaning up; report below
                print(f"cleanup: {exc}")
        for device in devices:
            if settings.system_dir and os.path.exists(os.path.join(settings.system_dir, "lvm.conf")):
                try:
                    lvm.remove_pv(device, settings=settings)
                except Exception as exc:
                    print(f"cleanup: {exc}")
            run(["losetup", "--detach", device], check=False, what=f"detach {device}")
        shutil.rmtree(workdir, ignore_errors=True)


def test_volume_group_and_physical_volumes(vg: RealVg) -> None:
    group = lvm.volume_group(vg.name, settings=vg.settings)
    assert (group.name, group.extent_size, group.extent_count) == (vg.name, 4 * MiB, 30)
    assert group.free == group.size == 30 * 4 * MiB and group.tags == ()
    pvs = lvm.physical_volumes(vg.name, settings=vg.settings)
    assert sorted(pv.name for pv in pvs) == sorted(vg.devices)  # LVM lists PVs in its own order
    assert all(pv.vg_name == vg.name and pv.pe_start == MiB and pv.size == 60 * MiB for pv in pvs)


def test_config_text_works_without_a_private_lvm_conf(vg: RealVg) -> None:
    empty = os.path.join(vg.workdir, "empty-etc")
    os.makedirs(empty, exist_ok=True)
    Path(empty, "lvm.conf").write_text("")
    settings = lvm.LvmSettings.isolated(vg.devices, system_dir=empty)
    assert lvm.volume_group(vg.name, settings=settings).extent_count == 30
    # With the second device filtered out, LVM reports the VG's PV there as missing.
    hidden = lvm.LvmSettings.isolated(vg.devices[:1], system_dir=empty)
    assert sorted(pv.name for pv in lvm.physical_volumes(settings=hidden)) == sorted([vg.devices[0], "[unknown]"])


def test_linear_lifecycle(vg: RealVg) -> None:
    s = vg.settings
    name_tags = lvm.encode_tag_value("basalt.name", "pvc-lifecycle")
    assert lvm.create_linear(vg.name, "lin-a", 10 * MiB, [MANAGED, *name_tags], extent_size=4 * MiB,
                             settings=s) == 12 * MiB
    lvm.create_linear(vg.name, "lin-other", 4 * MiB, settings=s)
    try:
        volume = lvm.logical_volume(vg.name, "lin-a", settings=s)
        assert volume is not None
        assert (volume.size, volume.segtype, volume.attr.allocation_policy) == (12 * MiB, "linear", "normal")
        assert not volume.attr.active and not volume.attr.state_known  # activation disabled
        assert lvm.decode_tag_value(volume.tags, "basalt.name") == "pvc-lifecycle"

        assert lvm.extend(vg.name, "lin-a", 20 * MiB, settings=s) is True
        assert lvm.extend(vg.name, "lin-a", 18 * MiB, settings=s) is False  # rounds to the same 5 extents
        with pytest.raises(InvalidRequest, match="cannot shrink"):
            lvm.extend(vg.name, "lin-a", 4 * MiB, settings=s)

        lvm.add_tags(vg.name, "lin-a", ["odd/=!:#&+.-_x", "basalt.extra"], settings=s)
        lvm.remove_tags(vg.name, "lin-a", ["basalt.extra", "never-there"], settings=s)
        managed = {v.name: v for v in lvm.logical_volumes(vg.name, MANAGED, settings=s)}
        assert list(managed) == ["lin-a"]
        assert managed["lin-a"].size == 20 * MiB
        assert set(managed["lin-a"].tags) == {MANAGED, "odd/=!:#&+.-_x", *name_tags}
        assert {v.name for v in lvm.logical_volumes(vg.name, None, settings=s)} == {"lin-a", "lin-other"}
        assert [v.name for v in lvm.logical_volumes(vg.name, "odd/=!:#&+.-_x", settings=s)] == ["lin-a"]

        # One metadata commit swaps a record held in tags.
        old_tags = lvm.encode_tag_value("basalt.rec", "v1")
        lvm.add_tags(vg.name, "lin-a", old_tags, settings=s)
        new_tags = lvm.encode_tag_value("basalt.rec", "v2 ✓")
        lvm.change_tags(vg.name, "lin-a", add=new_tags, remove=old_tags, settings=s)
        volume = lvm.logical_volume(vg.name, "lin-a", settings=s)
        assert volume is not None and lvm.decode_tag_value(volume.tags, "basalt.rec") == "v2 ✓"

        lvm.activate(vg.name, "lin-a", settings=s)  # a no-op without activation, but accepted
        lvm.refresh(vg.name, "lin-a", settings=s)
        lvm.deactivate(vg.name, "lin-a", settings=s)
    finally:
        lvm.remove(vg.name, "lin-a", settings=s)
        lvm.remove(vg.name, "lin-other", settings=s)
    assert lvm.logical_volume(vg.name, "lin-a", settings=s) is None
    with pytest.raises(NotFound):
        lvm.remove(vg.name, "lin-a", settings=s)


def test_contiguous_lv_location(vg: RealVg) -> None:
    s = vg.settings
    lvm.create_linear(vg.name, "first", 4 * MiB, settings=s)
    lvm.create_linear(vg.name, "contig", 8 * MiB, [MANAGED], alloc="contiguous", settings=s)
    try:
        volume = lvm.logical_volume(vg.name, "contig", settings=s)
        assert volume is not None and volume.attr.allocation_policy == "contiguous"
        pvs = lvm.physical_volumes(vg.name, settings=s)
        location = lvm.linear_location(volume, pvs, 4 * MiB)
        first = volume.seg_pe_ranges[0].first
        # LVM allocates from the VG's first PV (vgcreate's order, not the devices' numbering).
        assert location == lvm.DataLocation(vg.devices[0], MiB + first * 4 * MiB, 8 * MiB)
        assert first == 1  # right after "first"
        # A contiguous LV cannot grow past its neighbour... unless the next extents are free.
        lvm.create_linear(vg.name, "blocker", 4 * MiB, settings=s)
        with pytest.raises(NoSpace, match="contiguous"):
            lvm.extend(vg.name, "contig", 12 * MiB, settings=s)
    finally:
        for name in ("first", "contig", "blocker"):
            if lvm.logical_volume(vg.name, name, settings=s) is not None:
                lvm.remove(vg.name, name, settings=s)


def test_loop_activation_never_hands_out_a_device_being_detached(vg: RealVg) -> None:
    """A detach while the LV's loop device was held (a LUN, a mount going away) leaves it bound until that
    last close (autoclear): activating the LV again must give a device that stays bound after it."""
    s = vg.settings
    lvm.create_linear(vg.name, "held", 8 * MiB, alloc="contiguous", settings=s)
    activator = LoopActivator(s)
    try:
        volume = lvm.logical_volume(vg.name, "held", settings=s)
        assert volume is not None
        device = activator.activate(volume)
        holder = os.open(device, os.O_RDONLY)
        try:
            losetup.detach(device)
            assert activator.device(volume) == device  # still bound: the holder keeps it
            given = activator.activate(volume)
        finally:
            os.close(holder)
        assert activator.device(volume) == given  # still bound after the holder's last close
        assert activator.deactivate(volume) and activator.device(volume) is None
    finally:
        lvm.remove(vg.name, "held", settings=s)


def test_failures_are_typed(vg: RealVg) -> None:
    s = vg.settings
    lvm.create_linear(vg.name, "dup", 4 * MiB, settings=s)
    try:
        with pytest.raises(Conflict, match="already exists"):
            lvm.create_linear(vg.name, "dup", 4 * MiB, settings=s)
        with pytest.raises(NoSpace, match="insufficient free space"):
            lvm.create_linear(vg.name, "huge", 1 << 30, settings=s)
        with pytest.raises(Precondition, match="device-mapper"):
            lvm.create_cow_snapshot(vg.name, "dup", "dup-snap", 4 * MiB, settings=s)
        with pytest.raises(NotFound):
            lvm.extend(vg.name, "missing", 8 * MiB, settings=s)
        with pytest.raises(NotFound):
            lvm.add_tags(vg.name, "missing", ["x"], settings=s)
        with pytest.raises(NotFound):
            lvm.volume_group("basalt-no-such-vg", settings=s)
        with pytest.raises(InvalidRequest, match="reserved"):
            lvm.create_linear(vg.name, "x_tmeta", 4 * MiB, settings=s)
    finally:
        lvm.remove(vg.name, "dup", settings=s)


def test_longest_names_lvm_takes(vg: RealVg) -> None:
    s = vg.settings
    longest = "n" * (lvm.FULL_NAME_MAX - len(vg.name) - 1)
    lvm.create_linear(vg.name, longest, 4 * MiB, settings=s)
    lvm.remove(vg.name, longest, settings=s)
    with pytest.raises(InvalidRequest, match="too long"):
        lvm.check_lv_name(longest + "n", vg.name)


def test_tag_values_survive_lvm(vg: RealVg) -> None:
    s = vg.settings
    texts = {"basalt.name": "é" * 64, "basalt.desc": "".join(chr(c) for c in range(1, 128)) + "😀 名前"}
    tags = [tag for key, text in texts.items() for tag in lvm.encode_tag_value(key, text)]
    lvm.create_linear(vg.name, "tagged", 4 * MiB, [MANAGED], settings=s)
    try:
        lvm.add_tags(vg.name, "tagged", tags, settings=s)
        volume = lvm.logical_volume(vg.name, "tagged", settings=s)
        assert volume is not None
        for key, text in texts.items():
            assert lvm.decode_tag_value(volume.tags, key) == text
    finally:
        lvm.remove(vg.name, "tagged", settings=s)


def test_thin_metadata_reports(vg: RealVg) -> None:
    """Runs last: it leaves thin LVs that only the fixture's vgremove -ff takes away."""
    s = vg.settings
    second = {pv.name: pv for pv in lvm.physical_volumes(vg.name, settings=s)}[vg.devices[1]]  # pv1 in the VG
    assert second.free == second.size, "thin_lvs.vgtext needs the second PV empty"
    lvm.create_linear(vg.name, "origin", 8 * MiB, [MANAGED], settings=s)
    backup = os.path.join(vg.workdir, "backup.vg")
    run(["vgcfgbackup", "--file", backup, vg.name], env=vg.env, what="back up VG metadata", stdin="")
    text = Path(backup).read_text()
    lvs_text = THIN_LVS.read_text().replace("@ORIGIN@", "origin").replace("@ORIGIN_EXTENTS@", "2")
    marker = "\tlogical_volumes {\n"
    assert marker in text
    Path(backup).write_text(text.replace(marker, marker + "\n" + lvs_text, 1))
    run(["vgcfgrestore", "--force", "--file", backup, vg.name], env=vg.env, what="restore thin metadata",
        stdin="")

    managed = {v.name: v for v in lvm.logical_volumes(vg.name, MANAGED, settings=s)}
    assert sorted(managed) == ["cowsnap", "origin", "thin1", "thin2", "thinsnap1"]
    thin1, snap, cow = managed["thin1"], managed["thinsnap1"], managed["cowsnap"]
    assert thin1.attr.thin_volume and thin1.pool_lv == "pool0" and thin1.size == 32 * MiB
    assert lvm.decode_tag_value(thin1.tags, "basalt.name") == "pvc-thin-1"
    assert snap.thin_snapshot and snap.attr.skip_activation and snap.origin == "thin1"
    assert lvm.decode_tag_value(snap.tags, "basalt.name") == "snap-ü-1"
    assert cow.attr.snapshot and cow.origin == "origin" and cow.seg_pe_ranges[0].device == vg.devices[1]
    assert managed["origin"].attr.origin

    pool = lvm.logical_volume(vg.name, "pool0", settings=s)
    assert pool is not None and pool.attr.thin_pool and pool.segtype == "thin-pool" and pool.path is None

    lvm.activate(vg.name, "thinsnap1", settings=s)  # -K: accepted (a no-op here)
    with pytest.raises(Precondition, match="device-mapper"):
        lvm.create_thin(vg.name, "pool0", "thin9", 8 * MiB, settings=s)
    with pytest.raises(Precondition, match="device-mapper"):
        lvm.create_thin_snapshot(vg.name, "thin1", "snap9", settings=s)
    assert lvm.extend(vg.name, "thin2", 16 * MiB, settings=s) is True  # metadata only
    # Removing a thin LV fails (the kernel pool cannot be told) but its metadata is gone.
    with pytest.raises(Precondition, match="Cannot activate thin pool"):
        lvm.remove(vg.name, "thin2", settings=s)
    assert lvm.logical_volume(vg.name, "thin2", settings=s) is None
