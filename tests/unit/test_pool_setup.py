"""pool_setup and pool_factory against real files and real LVM2 on loop devices of their own.

LVM runs with a private LVM_SYSTEM_DIR whose lvm.conf admits only this test's
loop devices and disables activation (no device-mapper here), so the host's
VGs are never seen.  Thin pools need device-mapper: their creation runs in the
VM tier, and here only as far as the refusal LVM gives without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from basalt_core import lvm, lvm_report, pool_setup
from basalt_core.errors import InUse, InvalidRequest, Precondition
from basalt_core.lvm_pool import LvmPool
from basalt_core.model import Publication, Volume, volume_id_for
from basalt_core.pool_factory import open_pool, stored_settings
from basalt_core.pool_spec import (
    DEFAULTS,
    SETTINGS_FILE,
    PoolSettings,
    parse_pool_spec,
    reconcile,
    settings_from_tags,
)
from basalt_core.runner import run
from basalt_core.sizes import MiB

needs_lvm = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("vgcreate") is None,
                               reason="needs root, loop devices and lvm2")


# -- the spec and the settings, alone ------------------------------------------------

def test_spec_is_parsed_once_into_kind_location_and_thin_pool() -> None:
    assert parse_pool_spec("lvmthin:vg0/tp").thin_pool == "tp"
    assert parse_pool_spec("lvm:vg0").location == "vg0"
    assert parse_pool_spec("file:/srv/p").text == "file:/srv/p"
    for bad in ("zfs:tank", "file:relative", "lvm:", "lvm:vg/x", "lvmthin:vg", "lvmthin:vg/a/b"):
        with pytest.raises(InvalidRequest, match="is not supported"):
            parse_pool_spec(bad)


def test_settings_round_trip_through_vg_tags_and_are_checked() -> None:
    settings = PoolSettings(alloc="contiguous", overprovision=2.5, capacity_limit=10 * MiB, activation="loop")
    assert settings_from_tags([*settings.to_tags(), "other.tag"]) == settings
    for tag in settings.to_tags():
        lvm.check_tag(tag)
    assert settings_from_tags(["unrelated"]) is None
    with pytest.raises(InvalidRequest, match="alloc 'sideways'"):
        PoolSettings.from_values({"alloc": "sideways"})
    with pytest.raises(InvalidRequest, match="unknown pool settings"):
        PoolSettings.from_values({"colour": "blue"})


def test_a_given_setting_applies_without_stored_ones_and_must_agree_with_them() -> None:
    assert reconcile(None, {"alloc": "cling"}, "lvm", "vg0").alloc == "cling"
    stored = PoolSettings(alloc="contiguous")
    assert reconcile(stored, {"alloc": "contiguous"}, "lvm", "vg0") == stored
    with pytest.raises(InvalidRequest, match=r"--lvm-alloc normal \(stored: contiguous\)"):
        reconcile(stored, {"alloc": "normal"}, "lvm", "vg0", {"alloc": "--lvm-alloc"})
    # a setting that means nothing for the kind is not a contradiction (LVM flags on a file pool)
    assert reconcile(PoolSettings(), {"alloc": "cling"}, "file", "/p") == PoolSettings()


# -- file pools ------------------------------------------------------------------------

def test_file_pool_is_made_once_stores_its_settings_and_every_opener_reads_them(tmp_path: Path) -> None:
    spec = f"file:{tmp_path}/pool"
    settings = PoolSettings(capacity_limit=64 * MiB)
    assert pool_setup.ensure_pool(spec, settings, check_mode=True) != []
    assert not (tmp_path / "pool").exists()
    actions = pool_setup.ensure_pool(spec, settings)
    assert actions[0] == f"create directory {tmp_path}/pool" and len(actions) == 2
    assert json.loads((tmp_path / "pool" / SETTINGS_FILE).read_text()) == {"capacity_limit": 64 * MiB}
    assert pool_setup.ensure_pool(spec, settings) == []

    pool = open_pool(spec)
    assert pool.capacity_limit == 64 * MiB and pool.available_bytes() == 64 * MiB
    with pytest.raises(InvalidRequest, match="stored: 67108864"):
        open_pool(spec, {"capacity_limit": 32 * MiB})
    assert open_pool(spec, {"capacity_limit": 64 * MiB}).capacity_limit == 64 * MiB

    assert pool_setup.ensure_pool(spec, PoolSettings(capacity_limit=128 * MiB)) == [
        f"store settings {{'capacity_limit': {128 * MiB}}} in {tmp_path}/pool/{SETTINGS_FILE}"]
    assert open_pool(spec).capacity_limit == 128 * MiB


def test_a_pool_without_stored_settings_keeps_the_given_ones(tmp_path: Path) -> None:
    pool = open_pool(f"file:{tmp_path}/p", {"capacity_limit": 8 * MiB})
    assert pool.capacity_limit == 8 * MiB and stored_settings(parse_pool_spec(f"file:{tmp_path}/p")) is None
    assert open_pool(f"file:{tmp_path}/p").capacity_limit == DEFAULTS.capacity_limit


def test_file_pool_removal_refuses_volumes_unless_forced_and_keeps_other_files(tmp_path: Path) -> None:
    spec = f"file:{tmp_path}/pool"
    pool_setup.ensure_pool(spec, DEFAULTS)
    pool = open_pool(spec)
    pool.save_volume(Volume(id=volume_id_for("v"), name="v", size=MiB, pool="file"))
    with pytest.raises(InUse, match="holds 1 volumes"):
        pool_setup.remove_pool(spec)
    (tmp_path / "pool" / "notes.txt").write_text("not Basalt's")
    assert pool_setup.remove_pool(spec, force=True, check_mode=True)
    assert pool.volume_ids() == [volume_id_for("v")]
    actions = pool_setup.remove_pool(spec, force=True)
    assert actions[-1] == f"keep {tmp_path}/pool: it also holds notes.txt"
    assert sorted(os.listdir(tmp_path / "pool")) == ["notes.txt"]
    os.unlink(tmp_path / "pool" / "notes.txt")
    assert pool_setup.remove_pool(spec)[-1] == f"remove directory {tmp_path}/pool"
    assert not (tmp_path / "pool").exists() and pool_setup.remove_pool(spec) == []


def test_metadata_area_grows_with_the_number_of_volumes() -> None:
    assert pool_setup.metadata_size(100) == MiB  # LVM's own area already holds ~800
    assert pool_setup.metadata_size(1000) == 4 * MiB
    assert pool_setup.metadata_size(10000) == 40 * MiB
    with pytest.raises(InvalidRequest):
        pool_setup.metadata_size(0)


# -- LVM pools on loop devices -----------------------------------------------------------

class Disks:
    def __init__(self, root: Path, count: int) -> None:
        self.devices: List[str] = []
        for index in range(count):
            image = root / f"disk{index}.img"
            with open(image, "wb") as handle:
                handle.truncate(64 * MiB)
            self.devices.append(run(["losetup", "--find", "--show", str(image)], what="attach").stdout.strip())
        (root / "lvm").mkdir()
        (root / "lvm" / "lvm.conf").write_text(lvm.isolated_config(self.devices) + "\n")
        self.settings = lvm.LvmSettings(system_dir=str(root / "lvm"))
        self.vg = f"basalt-ps-{uuid.uuid4().hex[:8]}"

    def lvm(self, *argv: str) -> str:
        return subprocess.run(list(argv), check=True, capture_output=True, text=True,
                              env={**os.environ, **self.settings.env()}).stdout

    def release(self) -> None:
        env = {**os.environ, **self.settings.env()}
        subprocess.run(["vgremove", "-ff", "-y", self.vg], capture_output=True, env=env)
        for device in self.devices:
            subprocess.run(["pvremove", "-ff", "-y", device], capture_output=True, env=env)
            subprocess.run(["losetup", "-d", device], capture_output=True)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    made = Disks(tmp_path, 2)
    try:
        yield made
    finally:
        made.release()


@needs_lvm
def test_lvm_pool_from_blank_disks_with_settings_and_a_sized_metadata_area(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    settings = PoolSettings(alloc="contiguous", activation="loop", snapshot_mode="cow", capacity_limit=40 * MiB)
    planned = pool_setup.ensure_pool(spec, settings, disks=disks.devices, max_volumes=2000, check_mode=True,
                                     lvm_settings=disks.settings)
    assert len(planned) == 1 and "8 MiB of metadata" in planned[0]
    assert disks.vg not in disks.lvm("vgs", "--noheadings", "-o", "vg_name")
    assert pool_setup.ensure_pool(spec, settings, disks=disks.devices, max_volumes=2000,
                                  lvm_settings=disks.settings) == planned
    for mda in disks.lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_mda_size",
                         *disks.devices).split():
        assert int(mda) >= 8 * MiB
    assert pool_setup.ensure_pool(spec, settings, disks=disks.devices, lvm_settings=disks.settings) == []

    pool = open_pool(spec, lvm_settings=disks.settings)  # as a module opens it: no settings given
    assert isinstance(pool, LvmPool) and pool.options == settings and pool.capacity_limit == 40 * MiB
    with pytest.raises(InvalidRequest, match="--lvm-activation dm"):
        open_pool(spec, {"activation": "dm"}, labels={"activation": "--lvm-activation"},
                  lvm_settings=disks.settings)
    state = pool_setup.describe_pool(parse_pool_spec(spec), lvm_settings=disks.settings)
    assert state.exists and state.disks == tuple(sorted(disks.devices)) and state.available_bytes == 40 * MiB

    changed = pool_setup.ensure_pool(spec, PoolSettings(alloc="contiguous", activation="loop"),
                                     lvm_settings=disks.settings)
    assert changed and changed[0].startswith("store settings")
    reopened = open_pool(spec, lvm_settings=disks.settings)
    assert isinstance(reopened, LvmPool) and reopened.options == PoolSettings(alloc="contiguous", activation="loop")


@needs_lvm
def test_a_disk_holding_a_signature_or_data_is_refused_unless_forced(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    run(["mkfs.ext4", "-q", disks.devices[0]], what="mkfs")
    with open(disks.devices[1], "r+b") as handle:  # no signature, but data in its last MiB
        handle.seek(64 * MiB - 4096)
        handle.write(b"precious")
    for device, found in ((disks.devices[0], "a ext4 filesystem"), (disks.devices[1], "data no signature explains")):
        with pytest.raises(Precondition, match=f"disk {device} holds {found}"):
            pool_setup.ensure_pool(spec, DEFAULTS, disks=[device], lvm_settings=disks.settings)
    assert disks.vg not in disks.lvm("vgs", "--noheadings", "-o", "vg_name")
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, force=True, lvm_settings=disks.settings)
    assert stored_settings(parse_pool_spec(spec), lvm_settings=disks.settings) == DEFAULTS


@needs_lvm
def test_an_orphan_pv_left_by_an_interrupted_run_is_taken(disks: Disks) -> None:
    disks.lvm("pvcreate", disks.devices[0])
    actions = pool_setup.ensure_pool(f"lvm:{disks.vg}", DEFAULTS, disks=disks.devices[:1],
                                     lvm_settings=disks.settings)
    assert actions and actions[0].startswith(f"create VG {disks.vg}")


@needs_lvm
def test_existing_vg_is_never_extended(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices[:1], lvm_settings=disks.settings)
    with pytest.raises(Precondition, match="never added"):
        pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, lvm_settings=disks.settings)


@needs_lvm
def test_lvm_pool_removal_refuses_volumes_unless_forced_and_clears_the_disks(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    settings = PoolSettings(alloc="contiguous", activation="loop")
    pool_setup.ensure_pool(spec, settings, disks=disks.devices, lvm_settings=disks.settings)
    pool = open_pool(spec, lvm_settings=disks.settings)
    pool.save_volume(Volume(id=volume_id_for("v"), name="v", size=4 * MiB, pool="lvm"))
    with pytest.raises(InUse, match="holds 1 volumes"):
        pool_setup.remove_pool(spec, lvm_settings=disks.settings)
    planned = pool_setup.remove_pool(spec, force=True, check_mode=True, lvm_settings=disks.settings)
    assert pool.volume_ids() == [volume_id_for("v")]
    assert pool_setup.remove_pool(spec, force=True, lvm_settings=disks.settings) == planned
    assert planned[-2:] == [f"remove the PV label from {d}" for d in sorted(disks.devices)]
    assert disks.lvm("pvs", "--noheadings", "-o", "pv_name").split() == []
    assert pool_setup.remove_pool(spec, lvm_settings=disks.settings) == []


@needs_lvm
def test_removal_leaves_a_vg_holding_lvs_basalt_did_not_make(disks: Disks) -> None:
    spec = f"lvm:{disks.vg}"
    pool_setup.ensure_pool(spec, DEFAULTS, disks=disks.devices, lvm_settings=disks.settings)
    disks.lvm("lvcreate", "--yes", "--zero", "n", "--wipesignatures", "n", "-L", "4m", "-n", "theirs", disks.vg)
    with pytest.raises(InUse):
        pool_setup.remove_pool(spec, force=True, lvm_settings=disks.settings)
    assert "theirs" in disks.lvm("lvs", "--noheadings", "-o", "lv_name", disks.vg)


@needs_lvm
def test_an_lv_with_a_full_record_takes_less_metadata_than_the_area_is_sized_for(disks: Disks) -> None:
    """Keeps pool_setup.LV_METADATA_BYTES honest: measured as the drop of the VG's free metadata space."""
    pool_setup.ensure_pool(f"lvm:{disks.vg}", DEFAULTS, disks=disks.devices[:1], max_volumes=100,
                           lvm_settings=disks.settings)

    def mda_free() -> int:
        return int(disks.lvm("vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_mda_free", disks.vg))

    pool = open_pool(f"lvm:{disks.vg}", lvm_settings=disks.settings)
    before, count = mda_free(), 8
    for index in range(count):
        name = f"pvc-{uuid.uuid4()}"  # the name external-provisioner gives, and the parameters it adds
        volume = Volume(id=volume_id_for(name), name=name, size=4 * MiB, pool="lvm", parameters={
            "csi.storage.k8s.io/pvc/name": f"data-postgres-{index}-with-a-longer-name",
            "csi.storage.k8s.io/pvc/namespace": "production-databases", "csi.storage.k8s.io/pv/name": name})
        pool.save_volume(volume)
        volume.state = "ready"
        volume.publications = {"worker-17.example.internal": Publication(readonly=False,
                                                                         access_mode="SINGLE_NODE_WRITER")}
        pool.save_volume(volume)
    per_lv = (before - mda_free()) / count
    assert 700 < per_lv < pool_setup.LV_METADATA_BYTES, per_lv


# -- lvmthin: scripted (thin pools need device-mapper, which the VM tier has) -----------

RECORDED = Path(__file__).parent / "plugins" / "module_utils" / "lvm_recorded"
REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix", "--options"]
VGS_REC = (["vgs", *REPORT, ",".join(lvm_report.VG_COLUMNS), "basalt-rec"], 0,
           (RECORDED / "vgs_thin.json").read_text(), "")
NO_POOL9 = (["lvs", *REPORT, ",".join(lvm_report.LV_COLUMNS), "basalt-rec/pool9"], 5, "",
            '  Failed to find logical volume "basalt-rec/pool9"\n')
MAKE_POOL9 = ["lvcreate", "--yes", "--type", "thin-pool", "--name", "pool9", "--size", f"{8 * MiB}b", "basalt-rec"]


def test_a_thin_pool_is_made_in_the_vg_then_the_settings_are_stored(script: Any) -> None:
    settings = PoolSettings(overprovision=3.0)
    runner = script([VGS_REC, NO_POOL9, (MAKE_POOL9, 0, "", ""), VGS_REC, VGS_REC,
                     (["vgchange", *[a for t in settings.to_tags() for a in ("--addtag", t)], "basalt-rec"], 0, "",
                      "")])
    actions = pool_setup.ensure_pool("lvmthin:basalt-rec/pool9", settings, thin_pool_size=8 * MiB)
    assert actions == ["create thin pool basalt-rec/pool9 of 8388608 bytes",
                       f"store settings {settings.values('lvmthin')} in the tags of VG basalt-rec"]
    assert runner.script == []


def test_without_device_mapper_the_thin_pool_is_refused_naming_the_module(script: Any) -> None:
    script([VGS_REC, NO_POOL9, (MAKE_POOL9, 5, (RECORDED / "err_lvcreate_thin_pool_no_dm.stdout.txt").read_text(),
                                (RECORDED / "err_lvcreate_thin_pool_no_dm.stderr.txt").read_text())])
    with pytest.raises(Precondition, match="dm_thin_pool"):
        pool_setup.ensure_pool("lvmthin:basalt-rec/pool9", DEFAULTS, thin_pool_size=8 * MiB)
    with pytest.raises(InvalidRequest, match="device-mapper activation"):
        pool_setup.ensure_pool("lvmthin:basalt-rec/pool9", PoolSettings(activation="loop"))
