"""LVM reports (pvs, vgs, lvs, lv_attr) parsed from real LVM 2.03.16 output (lvm_recorded)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from lvm_testlib import (
    EXTENT,
    LV_COLS,
    NAME_TAG,
    PV_COLS,
    REPORT,
    VG,
    VG_COLS,
    MiB,
    read_recorded,
    recorded,
    stderr_of,
)

from basalt_core import lvm
from basalt_core.errors import (
    CommandFailed,
    NotFound,
    Precondition,
)

# -- reports --------------------------------------------------------------------------


def test_physical_volumes_of_a_vg(lvm_script: Any) -> None:
    lvm_script([recorded("pvs", ["pvs", *REPORT, PV_COLS, "--select", f'vg_name="{VG}"'])])
    assert lvm.physical_volumes(VG) == [
        lvm.PhysicalVolume("/dev/loop0", VG, 62914560, 25165824, MiB),
        lvm.PhysicalVolume("/dev/loop1", VG, 62914560, 62914560, MiB),
    ]


def test_physical_volumes_all(lvm_script: Any) -> None:
    stdout = '  {\n      "report": [\n          {\n              "pv": [\n                  {"pv_name":"/dev/loop5", ' \
             '"vg_name":"", "pv_size":"67108864", "pv_free":"67108864", "pe_start":"1048576"}\n' \
             '              ]\n          }\n      ]\n  }\n'
    lvm_script([(["pvs", *REPORT, PV_COLS], 0, stdout, "")])
    assert lvm.physical_volumes() == [lvm.PhysicalVolume("/dev/loop5", None, 64 * MiB, 64 * MiB, MiB)]


def test_volume_group(lvm_script: Any) -> None:
    lvm_script([recorded("vgs", ["vgs", *REPORT, VG_COLS, VG])])
    group = lvm.volume_group(VG)
    assert group == lvm.VolumeGroup(VG, "1VuOf5-Pvlc-fhky-0nga-Ad6i-0QJv-7MdIQL", 125829120, 88080384, EXTENT,
                                    30, 21, ())
    assert group.free == group.free_count * group.extent_size


def test_volume_group_missing_is_not_found(lvm_script: Any) -> None:
    lvm_script([recorded("err_vgs_vg_not_found", ["vgs", *REPORT, VG_COLS, "no-such-vg"])])
    with pytest.raises(NotFound, match='read volume group no-such-vg: Volume group "no-such-vg" not found'):
        lvm.volume_group("no-such-vg")


def _by_name(volumes: Sequence[lvm.LogicalVolume]) -> Dict[str, lvm.LogicalVolume]:
    return {volume.name: volume for volume in volumes}


def test_all_lvs_fold_segments_into_one_volume(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_all", ["lvs", *REPORT, LV_COLS, VG])])
    volumes = _by_name(lvm.logical_volumes(VG, None))
    assert sorted(volumes) == ["other", "vol-contig", "vol-normal"]
    normal = volumes["vol-normal"]
    assert (normal.size, normal.vg_name, normal.uuid) == (24 * MiB, VG, "IVXZEV-7xfU-EBY1-nMOR-sgdi-OZ76-HaYypk")
    assert normal.tags == ("basalt.managed", NAME_TAG)
    assert lvm.decode_tag_value(normal.tags, "basalt.name") == "pvc-5b1fd0c2-normal"
    assert normal.segments == (
        lvm.Segment("linear", 0, 3, (lvm.PeRange("/dev/loop0", 0, 2),), "/dev/loop0(0)"),
        lvm.Segment("linear", 3, 3, (lvm.PeRange("/dev/loop0", 6, 8),), "/dev/loop0(6)"),
    )
    assert normal.seg_pe_ranges == (lvm.PeRange("/dev/loop0", 0, 2),)
    assert (normal.segtype, normal.devices, normal.path) == ("linear", "/dev/loop0(0)", f"/dev/{VG}/vol-normal")
    assert normal.attr.allocation_policy == "normal" and normal.attr.simple
    assert (normal.pool_lv, normal.origin, normal.data_percent, normal.metadata_percent) == (None, None, None, None)
    assert volumes["other"].tags == ()


def test_managed_lvs_leave_other_lvs_out(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_managed", ["lvs", *REPORT, LV_COLS, "--select", 'lv_tags={"basalt.managed"}', VG])])
    assert sorted(_by_name(lvm.logical_volumes(VG, "basalt.managed"))) == ["vol-contig", "vol-normal"]


def test_one_contiguous_lv(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_one", ["lvs", *REPORT, LV_COLS, f"{VG}/vol-contig"])])
    volume = lvm.logical_volume(VG, "vol-contig")
    assert volume is not None
    assert volume.full_name == f"{VG}/vol-contig"
    assert volume.attr.allocation_policy == "contiguous"
    assert volume.tags == ("basalt.managed", "odd/=!:#&+.-_x")
    assert volume.seg_pe_ranges == (lvm.PeRange("/dev/loop0", 3, 4),)


def test_missing_lv_is_none(lvm_script: Any) -> None:
    lvm_script([recorded("err_lvs_lv_not_found", ["lvs", *REPORT, LV_COLS, f"{VG}/missing"])])
    assert lvm.logical_volume(VG, "missing") is None


def test_lv_in_a_missing_vg_is_not_found(lvm_script: Any) -> None:
    lvm_script([(["lvs", *REPORT, LV_COLS, "no-such-vg/x"], 5, read_recorded("err_vgs_vg_not_found.json"),
                 stderr_of("err_vgs_vg_not_found"))])
    with pytest.raises(NotFound, match="no-such-vg"):
        lvm.logical_volume("no-such-vg", "x")


def test_linear_location_of_a_contiguous_lv(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_all"), recorded("pvs")])
    volumes = _by_name(lvm.logical_volumes(VG, None))
    pvs = lvm.physical_volumes(VG)
    # pe_start 1 MiB + first extent 3 * 4 MiB
    assert lvm.linear_location(volumes["vol-contig"], pvs, EXTENT) == lvm.DataLocation("/dev/loop0", 13 * MiB, 8 * MiB)
    assert lvm.linear_location(volumes["other"], pvs, EXTENT) == lvm.DataLocation("/dev/loop0", 21 * MiB, 4 * MiB)
    with pytest.raises(Precondition, match="2 segments"):
        lvm.linear_location(volumes["vol-normal"], pvs, EXTENT)
    with pytest.raises(NotFound, match="/dev/loop0"):
        lvm.linear_location(volumes["vol-contig"], pvs[1:], EXTENT)


def test_thin_pool_thin_lvs_and_snapshots(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_thin", ["lvs", *REPORT, LV_COLS, VG])])
    volumes = _by_name(lvm.logical_volumes(VG, None))
    assert sorted(volumes) == ["cowsnap", "other", "pool0", "thin1", "thin2", "thinsnap1", "vol-contig", "vol-normal"]

    pool = volumes["pool0"]
    assert pool.attr.thin_pool and not pool.attr.thin_volume and pool.attr.zero
    assert (pool.segtype, pool.size, pool.path, pool.tags) == ("thin-pool", 16 * MiB, None, ("basalt.pool",))
    assert pool.seg_pe_ranges == (lvm.PeRange("pool0_tdata", 0, 3),)

    thin1 = volumes["thin1"]
    assert thin1.attr.thin_volume and not thin1.attr.skip_activation and not thin1.thin_snapshot
    assert (thin1.segtype, thin1.size, thin1.pool_lv, thin1.origin) == ("thin", 32 * MiB, "pool0", None)
    assert thin1.seg_pe_ranges == () and thin1.devices == ""
    assert lvm.decode_tag_value(thin1.tags, "basalt.name") == "pvc-thin-1"

    snap = volumes["thinsnap1"]
    assert snap.thin_snapshot and snap.attr.skip_activation and not snap.attr.snapshot
    assert (snap.origin, snap.pool_lv, snap.size) == ("thin1", "pool0", 32 * MiB)
    assert lvm.decode_tag_value(snap.tags, "basalt.name") == "snap-ü-1"
    assert "basalt.snapshot" in snap.tags

    cow = volumes["cowsnap"]
    assert cow.attr.snapshot and not cow.attr.writeable and cow.attr.target_type == "snapshot"
    assert (cow.origin, cow.size, cow.segtype) == ("vol-contig", 4 * MiB, "linear")
    assert cow.seg_pe_ranges == (lvm.PeRange("/dev/loop1", 6, 6),)
    origin = volumes["vol-contig"]
    assert origin.attr.origin and origin.attr.target_type == "snapshot" and origin.origin is None


def test_thin_managed_selection(lvm_script: Any) -> None:
    lvm_script([recorded("lvs_thin_managed", ["lvs", *REPORT, LV_COLS, "--select", 'lv_tags={"basalt.managed"}', VG])])
    assert sorted(_by_name(lvm.logical_volumes(VG, "basalt.managed"))) == [
        "cowsnap", "thin1", "thin2", "thinsnap1", "vol-contig", "vol-normal"]


def test_a_failed_thin_remove_still_drops_the_lv(lvm_script: Any) -> None:
    lvm_script([recorded("err_lvremove_thin_no_dm"), recorded("lvs_thin_after_remove")])
    with pytest.raises(Precondition, match="Cannot activate thin pool basalt-rec/pool0"):
        lvm.remove(VG, "thin2")
    assert "thin2" not in _by_name(lvm.logical_volumes(VG, None))


def test_vgs_after_thin_restore(lvm_script: Any) -> None:
    lvm_script([recorded("vgs_thin")])
    assert lvm.volume_group(VG).free_count == 14


def test_failed_thin_pool_creation_leaves_nothing_behind() -> None:
    before = {v.name for v in lvm.parse_logical_volumes(_rows("lvs_after_thin_pool_failure.json"))}
    assert before == {"other", "vol-contig", "vol-normal"}


def _rows(name: str) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = json.loads(read_recorded(name))["report"][0]["lv"]
    return rows


def test_unexpected_report_output_is_a_command_failure(lvm_script: Any) -> None:
    lvm_script([(["vgs", *REPORT, VG_COLS, VG], 0, "not json", "")])
    with pytest.raises(CommandFailed, match="unexpected vgs output"):
        lvm.volume_group(VG)
    lvm_script([(["lvs", *REPORT, LV_COLS, VG], 0, '{"report":[{"lv":[{"lv_name":"x"}]}]}', "")])
    with pytest.raises(CommandFailed, match="missing"):
        lvm.logical_volumes(VG, None)
    rows = _rows("lvs_one.json")
    rows[0]["lv_attr"] = "-wi"
    lvm_script([(["lvs", *REPORT, LV_COLS, VG], 0, json.dumps({"report": [{"lv": [rows[0]]}]}), "")])
    with pytest.raises(CommandFailed, match="not 10 characters"):
        lvm.logical_volumes(VG, None)


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("", ()),
        ("/dev/loop0:0-24", (lvm.PeRange("/dev/loop0", 0, 24),)),
        ("/dev/sdb:3-3 /dev/sdc:10-19", (lvm.PeRange("/dev/sdb", 3, 3), lvm.PeRange("/dev/sdc", 10, 19))),
        ("pool0_tdata:0-3", (lvm.PeRange("pool0_tdata", 0, 3),)),
    ],
)
def test_pe_ranges(text: str, ranges: Tuple[lvm.PeRange, ...]) -> None:
    assert lvm.parse_pe_ranges(text) == ranges
    assert sum(r.count for r in ranges) == sum(r.last - r.first + 1 for r in ranges)


@pytest.mark.parametrize("text", ["/dev/loop0", "/dev/loop0:3", "/dev/loop0:a-b"])
def test_bad_pe_ranges(text: str) -> None:
    with pytest.raises(ValueError):
        lvm.parse_pe_ranges(text)


# -- lv_attr ----------------------------------------------------------------------------

# attr -> (volume_type, permissions, allocation, state, open, target, zero, health, skip, flags that are True)
ATTRS: List[Tuple[str, Tuple[str, str, str, str, Optional[bool], str, bool, str, bool], Sequence[str]]] = [
    # recorded here (activation disabled: state and open unknown)
    ("-wn-XX----", ("simple", "writeable", "normal", "unknown", None, "", False, "", False), ["simple", "writeable"]),
    ("-wc-XX----", ("simple", "writeable", "contiguous", "unknown", None, "", False, "", False), ["simple"]),
    ("twi-XXtz--", ("thin pool", "writeable", "inherit", "unknown", None, "thin", True, "", False), ["thin_pool"]),
    ("Vwi-XXtz--", ("thin volume", "writeable", "inherit", "unknown", None, "thin", True, "", False),
     ["thin_volume"]),
    ("Vwi-XXtz-k", ("thin volume", "writeable", "inherit", "unknown", None, "thin", True, "", True),
     ["thin_volume", "skip_activation"]),
    ("sri-XXs---", ("snapshot", "read-only", "inherit", "unknown", None, "snapshot", False, "", False),
     ["snapshot"]),
    ("owc-XXs---", ("origin", "writeable", "contiguous", "unknown", None, "snapshot", False, "", False), ["origin"]),
    ("ewi-XX----", ("metadata", "writeable", "inherit", "unknown", None, "", False, "", False), []),
    ("Twi-XX----", ("thin pool data", "writeable", "inherit", "unknown", None, "", False, "", False), []),
    # as lvs(8) documents them on a host with device-mapper
    ("-wi-a-----", ("simple", "writeable", "inherit", "active", False, "", False, "", False), ["active"]),
    ("-wi-ao----", ("simple", "writeable", "inherit", "active", True, "", False, "", False), ["active"]),
    ("-wi-------", ("simple", "writeable", "inherit", "inactive", False, "", False, "", False), []),
    ("twi-aotz--", ("thin pool", "writeable", "inherit", "active", True, "thin", True, "", False),
     ["thin_pool", "active"]),
    ("twi-aotzD-", ("thin pool", "writeable", "inherit", "active", True, "thin", True, "out of data space", False),
     ["thin_pool", "active"]),
    ("Vwi---tz-k", ("thin volume", "writeable", "inherit", "inactive", False, "thin", True, "", True),
     ["thin_volume", "skip_activation"]),
    ("Vwi-a-tzF-", ("thin volume", "writeable", "inherit", "active", False, "thin", True, "failed", False),
     ["thin_volume", "active", "failed"]),
    ("Swi-a-s---", ("merging snapshot", "writeable", "inherit", "active", False, "snapshot", False, "", False),
     ["snapshot", "active"]),
    ("swi-I-s---", ("snapshot", "writeable", "inherit", "invalid snapshot", False, "snapshot", False, "", False),
     ["snapshot"]),
    ("-wi-s-----", ("simple", "writeable", "inherit", "suspended", False, "", False, "", False), ["suspended"]),
    ("-wima-----", ("simple", "writeable", "inherit", "active", False, "", False, "", False), ["active"]),
    ("-wN-a---p-", ("simple", "writeable", "normal", "active", False, "", False, "partial", False),
     ["active", "partial"]),
    ("vwi-a-v---", ("virtual", "writeable", "inherit", "active", False, "virtual", False, "", False),
     ["virtual", "active"]),
    ("-Ri-a-----", ("simple", "read-only activation", "inherit", "active", False, "", False, "", False), ["active"]),
]
FLAGS = ("active", "suspended", "writeable", "thin_pool", "thin_volume", "origin", "snapshot", "virtual", "simple",
         "partial", "failed", "skip_activation")


@pytest.mark.parametrize(("raw", "fields", "flags"), ATTRS, ids=[a[0] for a in ATTRS])
def test_lv_attr_decoding(raw: str, fields: Tuple[Any, ...], flags: Sequence[str]) -> None:
    attr = lvm.LvAttr.parse(raw)
    assert (attr.volume_type, attr.permissions, attr.allocation_policy, attr.state, attr.device_open,
            attr.target_type, attr.zero, attr.health, attr.skip_activation) == fields
    expected_flags = set(flags) | ({"writeable"} if raw[1] == "w" else set()) | ({"simple"} if raw[0] == "-" else set())
    assert {flag for flag in FLAGS if getattr(attr, flag)} == expected_flags
    assert attr.state_known is (raw[4] != "X")
    assert attr.fixed_minor is (raw[3] == "m")
    assert attr.allocation_locked is raw[2].isupper()


def test_every_recorded_attr_is_in_the_table() -> None:
    table = {a[0] for a in ATTRS}
    for name in ("lvs_all.json", "lvs_thin.json"):
        for row in _rows(name):
            assert row["lv_attr"] in table


@pytest.mark.parametrize("raw", ["", "-wi-a----", "-wi-a------", "Qwi-a-----", "-xi-a-----", "-wq-a-----",
                                 "-wi-Q-----", "-wi-aQ----", "-wi-a-Q---", "-wi-a--Q--", "-wi-a---Q-", "-wi-a----Q"])
def test_bad_lv_attr(raw: str) -> None:
    with pytest.raises(ValueError):
        lvm.LvAttr.parse(raw)
