"""pool_spec, pool_setup and pool_factory: the spec and its settings alone, file pools on real files, and the
lvmthin pool scripted against recorded LVM output (thin pools need device-mapper: the VM tier makes them for
real). The LVM pools on real LVM2 and loop devices: tests/unit/test_pool_setup_lvm.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from basalt_core import lvm, lvm_report, pool_setup
from basalt_core.errors import InUse, InvalidRequest, Precondition
from basalt_core.model import Volume, volume_id_for
from basalt_core.pool_factory import open_pool, stored_settings
from basalt_core.pool_spec import (
    DEFAULTS,
    SETTINGS_FILE,
    PoolSettings,
    parse_pool_spec,
    reconcile,
    settings_from_tags,
)
from basalt_core.sizes import MiB

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


# -- lvmthin: scripted (thin pools need device-mapper, which the VM tier has) -----------

RECORDED = Path(__file__).parent / "lvm_recorded"
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
