"""The LVM command layer: exact argv in, real LVM 2.03.16 output (tests/unit/lvm_recorded) parsed out."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import pytest

from basalt_core import lvm
from basalt_core.errors import (
    CommandFailed,
    Conflict,
    InUse,
    InvalidRequest,
    NoSpace,
    NotFound,
    Precondition,
    StorageError,
)

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


# -- the shared scripted runner (conftest), and how LVM must be run ---------------


@pytest.fixture
def script(script: Callable[[List[Call]], Any]) -> Iterator[Callable[[List[Call]], Any]]:
    """conftest's ``script`` (its ScriptedRunner), plus the checks every LVM command must pass."""
    runners: List[Any] = []

    def install(calls: List[Call]) -> Any:
        runners.append(script(calls))
        return runners[-1]

    yield install
    for runner in runners:
        assert runner.stdins == [""] * len(runner.ran), "LVM must see EOF on stdin so that a prompt is answered 'n'"
        assert all(env is not None and env.get("LVM_SUPPRESS_FD_WARNINGS") == "1" for env in runner.envs)


def _commands() -> Dict[str, Tuple[List[str], int]]:
    table = {}
    for line in (RECORDED / "commands.tsv").read_text().splitlines():
        name, rc, argv = line.split("\t")
        table[name] = (argv.split(" "), int(rc))
    return table


COMMANDS = _commands()


def _read(name: str) -> str:
    path = RECORDED / name
    return path.read_text() if path.exists() else ""


def recorded(name: str, argv: Optional[List[str]] = None) -> Call:
    """The call recorded as *name*: its argv (checked against *argv* when given), rc, stdout and stderr."""
    real_argv, rc = COMMANDS[name]
    if argv is not None:
        assert argv == real_argv, f"{name}: the argv under test differs from the recorded one"
    stdout = _read(f"{name}.json") or _read(f"{name}.stdout.txt")
    return (real_argv, rc, stdout, _read(f"{name}.stderr.txt"))


def stderr_of(name: str) -> str:
    return _read(f"{name}.stderr.txt")


# -- settings ------------------------------------------------------------------------


def test_default_settings_add_nothing_but_the_fd_warning_switch() -> None:
    settings = lvm.LvmSettings()
    assert settings.command("lvs", "vg") == ["lvs", "vg"]
    assert settings.env() == {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def test_private_settings_pass_config_and_system_dir(script: Any) -> None:
    settings = lvm.LvmSettings(config="global{activation=0}", system_dir="/tmp/x/etc")
    runner = script([(["vgs", "--config", "global{activation=0}", *REPORT, VG_COLS, VG], 0,
                      _read("vgs.json"), "")])
    lvm.volume_group(VG, settings=settings)
    assert runner.envs == [{"LVM_SUPPRESS_FD_WARNINGS": "1", "LVM_SYSTEM_DIR": "/tmp/x/etc"}]


def test_isolated_config_admits_only_the_given_devices() -> None:
    text = lvm.isolated_config(["/dev/loop3", "/dev/loop12"])
    assert "global { activation = 0 }" in text
    assert 'filter = [ "a|^/dev/loop3$|", "a|^/dev/loop12$|", "r|.*|" ]' in text
    assert "use_devicesfile = 0" in text and 'hints = "none"' in text and "archive = 0" in text
    assert lvm.LvmSettings.isolated(["/dev/loop3"]).config == lvm.isolated_config(["/dev/loop3"])
    with pytest.raises(InvalidRequest):
        lvm.isolated_config(['/dev/loop0|"'])


# -- mutations: exact argv, real output ---------------------------------------------

MUTATIONS: List[Tuple[str, Callable[[], Any], List[str], Any]] = [
    ("pvcreate", lambda: lvm.create_pv("/dev/loop0"), ["pvcreate", "/dev/loop0"], None),
    ("vgcreate", lambda: lvm.create_vg(VG, ["/dev/loop0", "/dev/loop1"]),
     ["vgcreate", VG, "/dev/loop0", "/dev/loop1"], None),
    ("lvcreate_linear", lambda: lvm.create_linear(VG, "vol-normal", 12 * MiB, ["basalt.managed", NAME_TAG]),
     ["lvcreate", "--yes", "--name", "vol-normal", "--size", "12582912b", "--alloc", "normal", "--zero", "y",
      "--wipesignatures", "y", "--addtag", "basalt.managed", "--addtag", NAME_TAG, VG], 12 * MiB),
    ("lvcreate_contiguous",
     lambda: lvm.create_linear(VG, "vol-contig", 8 * MiB - 100, ["basalt.managed"], alloc="contiguous",
                               extent_size=EXTENT, zero=False),
     ["lvcreate", "--yes", "--name", "vol-contig", "--size", "8388608b", "--alloc", "contiguous", "--zero", "n",
      "--wipesignatures", "n", "--addtag", "basalt.managed", VG], 8 * MiB),
    ("lvcreate_other", lambda: lvm.create_linear(VG, "other", 4 * MiB),
     ["lvcreate", "--yes", "--name", "other", "--size", "4194304b", "--alloc", "normal", "--zero", "y",
      "--wipesignatures", "y", VG], 4 * MiB),
    ("lvextend", lambda: lvm.extend(VG, "vol-normal", 24 * MiB),
     ["lvextend", "--yes", "--size", "25165824b", f"{VG}/vol-normal"], True),
    ("lvextend_thin", lambda: lvm.extend(VG, "thin2", 64 * MiB - 1, extent_size=EXTENT),
     ["lvextend", "--yes", "--size", "67108864b", f"{VG}/thin2"], True),
    ("lvchange_addtag", lambda: lvm.add_tags(VG, "vol-contig", ["odd/=!:#&+.-_x", "basalt.clone-of"]),
     ["lvchange", "--addtag", "odd/=!:#&+.-_x", "--addtag", "basalt.clone-of", f"{VG}/vol-contig"], None),
    ("lvchange_deltag", lambda: lvm.remove_tags(VG, "vol-contig", ["basalt.clone-of"]),
     ["lvchange", "--deltag", "basalt.clone-of", f"{VG}/vol-contig"], None),
    ("lvchange_activate", lambda: lvm.activate(VG, "vol-normal"),
     ["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/vol-normal"], None),
    ("lvchange_activate_thin_snapshot", lambda: lvm.activate(VG, "thinsnap1"),
     ["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/thinsnap1"], None),
    ("lvchange_deactivate", lambda: lvm.deactivate(VG, "vol-normal"),
     ["lvchange", "--activate", "n", f"{VG}/vol-normal"], None),
    ("lvremove", lambda: lvm.remove(VG, "scratch"), ["lvremove", "--yes", f"{VG}/scratch"], None),
    ("vgremove_force", lambda: lvm.remove_vg(VG, force=True), ["vgremove", "--force", "--force", VG], None),
]


@pytest.mark.parametrize(("name", "call", "argv", "returns"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_argv_matches_the_recorded_command(
    script: Any, name: str, call: Callable[[], Any], argv: List[str], returns: Any
) -> None:
    script([recorded(name, argv)])
    assert call() == returns


# Commands that only a host with device-mapper completes; here their argv is
# checked against what LVM answered when it could not.
UNRECORDED_SUCCESS: List[Tuple[str, Callable[[], Any], List[str]]] = [
    ("thin", lambda: lvm.create_thin(VG, "pool0", "thin9", 8 * MiB),
     ["lvcreate", "--yes", "--type", "thin", "--name", "thin9", "--virtualsize", "8388608b", "--thinpool", "pool0",
      VG]),
    ("thin-tagged", lambda: lvm.create_thin(VG, "pool0", "vol-1", 10 * MiB + 1, ["basalt.managed"],
                                            extent_size=EXTENT),
     ["lvcreate", "--yes", "--type", "thin", "--name", "vol-1", "--virtualsize", "12582912b", "--thinpool", "pool0",
      "--addtag", "basalt.managed", VG]),
    ("thin-snapshot", lambda: lvm.create_thin_snapshot(VG, "thin1", "snap9"),
     ["lvcreate", "--yes", "--snapshot", "--name", "snap9", "--setactivationskip", "y", f"{VG}/thin1"]),
    ("thin-clone", lambda: lvm.create_thin_snapshot(VG, "snap9", "vol-2", ["basalt.managed"], activation_skip=False),
     ["lvcreate", "--yes", "--snapshot", "--name", "vol-2", "--setactivationskip", "n", "--addtag",
      "basalt.managed", f"{VG}/snap9"]),
    ("cow-snapshot", lambda: lvm.create_cow_snapshot(VG, "vol-contig", "snap9", 4 * MiB),
     ["lvcreate", "--yes", "--snapshot", "--name", "snap9", "--size", "4194304b", f"{VG}/vol-contig"]),
    ("cow-snapshot-tagged", lambda: lvm.create_cow_snapshot(VG, "vol-contig", "snap9", 1, ["basalt.snapshot"]),
     ["lvcreate", "--yes", "--snapshot", "--name", "snap9", "--size", "512b", "--addtag", "basalt.snapshot",
      f"{VG}/vol-contig"]),
    ("activate-shared-respecting-skip", lambda: lvm.activate(VG, "thinsnap1", exclusive=False, ignore_skip=False),
     ["lvchange", "--activate", "y", f"{VG}/thinsnap1"]),
    ("remove-pv", lambda: lvm.remove_pv("/dev/loop0"), ["pvremove", "/dev/loop0"]),
    ("vg-with-extent-size-and-tag", lambda: lvm.create_vg("vg1", ["/dev/loop0"], ["basalt.pool"], extent_size=MiB),
     ["vgcreate", "--physicalextentsize", "1048576b", "--addtag", "basalt.pool", "vg1", "/dev/loop0"]),
    ("vgremove", lambda: lvm.remove_vg("vg1"), ["vgremove", "vg1"]),
    ("change-tags", lambda: lvm.change_tags(VG, "vol-1", add=["basalt.rec:0/1=eA"], remove=["basalt.rec:0/1=eQ"]),
     ["lvchange", "--deltag", "basalt.rec:0/1=eQ", "--addtag", "basalt.rec:0/1=eA", f"{VG}/vol-1"]),
    ("refresh", lambda: lvm.refresh(VG, "vol-1"), ["lvchange", "--refresh", f"{VG}/vol-1"]),
]


@pytest.mark.parametrize(("name", "call", "argv"), UNRECORDED_SUCCESS, ids=[m[0] for m in UNRECORDED_SUCCESS])
def test_mutation_argv(script: Any, name: str, call: Callable[[], Any], argv: List[str]) -> None:
    script([(argv, 0, "", "")])
    call()


def test_failed_thin_commands_were_recorded_with_the_same_argv() -> None:
    assert COMMANDS["err_lvcreate_thin_no_dm"][0] == UNRECORDED_SUCCESS[0][2]
    assert COMMANDS["err_lvcreate_thin_snapshot_no_dm"][0] == [
        "lvcreate", "--yes", "--snapshot", "--name", "snap9", "--setactivationskip", "y", f"{VG}/thin1"]
    assert COMMANDS["err_lvcreate_cow_snapshot_no_dm"][0] == UNRECORDED_SUCCESS[4][2]


def test_tags_none_and_empty_run_nothing(script: Any) -> None:
    script([])
    lvm.add_tags(VG, "vol-1", [])
    lvm.remove_tags(VG, "vol-1", [])
    lvm.change_tags(VG, "vol-1", add=[], remove=[])


@pytest.mark.parametrize(
    ("size", "extent_size", "argument"),
    [
        (1, None, "512b"),
        (5000000, None, "5000192b"),  # LVM refuses 5000000b: err_lvcreate_not_sector
        (4 * MiB, None, "4194304b"),
        (1, EXTENT, "4194304b"),
        (4 * MiB + 1, EXTENT, "8388608b"),
        (12 * MiB, EXTENT, "12582912b"),
    ],
)
def test_sizes_are_bytes_rounded_up(script: Any, size: int, extent_size: Optional[int], argument: str) -> None:
    script([(["lvcreate", "--yes", "--name", "v", "--size", argument, "--alloc", "normal", "--zero", "y",
              "--wipesignatures", "y", VG], 0, "", "")])
    assert lvm.create_linear(VG, "v", size, extent_size=extent_size) == int(argument[:-1])
    assert "Size is not a multiple of 512" in stderr_of("err_lvcreate_not_sector")


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "1M"])
def test_bad_sizes_are_refused_before_running_anything(script: Any, size: Any) -> None:
    script([])
    with pytest.raises(InvalidRequest, match="size"):
        lvm.create_linear(VG, "v", size)


def test_bad_allocation_policy_and_extent_size(script: Any) -> None:
    script([])
    with pytest.raises(InvalidRequest, match="allocation policy"):
        lvm.create_linear(VG, "v", MiB, alloc="striped")
    with pytest.raises(InvalidRequest, match="extent size"):
        lvm.create_linear(VG, "v", MiB, extent_size=1000)
    with pytest.raises(InvalidRequest, match="no physical volumes"):
        lvm.create_vg(VG, [])


def test_extend_to_the_current_size_is_a_no_op(script: Any) -> None:
    script([recorded("err_lvextend_same_size")])
    assert lvm.extend(VG, "vol-normal", 24 * MiB) is False


def test_extend_refuses_to_shrink(script: Any) -> None:
    script([recorded("err_lvextend_shrink")])
    with pytest.raises(InvalidRequest, match=r"cannot shrink.*not larger than existing size"):
        lvm.extend(VG, "vol-normal", 4 * MiB)


# -- reports --------------------------------------------------------------------------


def test_physical_volumes_of_a_vg(script: Any) -> None:
    script([recorded("pvs", ["pvs", *REPORT, PV_COLS, "--select", f'vg_name="{VG}"'])])
    assert lvm.physical_volumes(VG) == [
        lvm.PhysicalVolume("/dev/loop0", VG, 62914560, 25165824, MiB),
        lvm.PhysicalVolume("/dev/loop1", VG, 62914560, 62914560, MiB),
    ]


def test_physical_volumes_all(script: Any) -> None:
    stdout = '  {\n      "report": [\n          {\n              "pv": [\n                  {"pv_name":"/dev/loop5", ' \
             '"vg_name":"", "pv_size":"67108864", "pv_free":"67108864", "pe_start":"1048576"}\n' \
             '              ]\n          }\n      ]\n  }\n'
    script([(["pvs", *REPORT, PV_COLS], 0, stdout, "")])
    assert lvm.physical_volumes() == [lvm.PhysicalVolume("/dev/loop5", None, 64 * MiB, 64 * MiB, MiB)]


def test_volume_group(script: Any) -> None:
    script([recorded("vgs", ["vgs", *REPORT, VG_COLS, VG])])
    group = lvm.volume_group(VG)
    assert group == lvm.VolumeGroup(VG, "1VuOf5-Pvlc-fhky-0nga-Ad6i-0QJv-7MdIQL", 125829120, 88080384, EXTENT,
                                    30, 21, ())
    assert group.free == group.free_count * group.extent_size


def test_volume_group_missing_is_not_found(script: Any) -> None:
    script([recorded("err_vgs_vg_not_found", ["vgs", *REPORT, VG_COLS, "no-such-vg"])])
    with pytest.raises(NotFound, match='read volume group no-such-vg: Volume group "no-such-vg" not found'):
        lvm.volume_group("no-such-vg")


def _by_name(volumes: Sequence[lvm.LogicalVolume]) -> Dict[str, lvm.LogicalVolume]:
    return {volume.name: volume for volume in volumes}


def test_all_lvs_fold_segments_into_one_volume(script: Any) -> None:
    script([recorded("lvs_all", ["lvs", *REPORT, LV_COLS, VG])])
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


def test_managed_lvs_leave_other_lvs_out(script: Any) -> None:
    script([recorded("lvs_managed", ["lvs", *REPORT, LV_COLS, "--select", 'lv_tags={"basalt.managed"}', VG])])
    assert sorted(_by_name(lvm.logical_volumes(VG, "basalt.managed"))) == ["vol-contig", "vol-normal"]


def test_one_contiguous_lv(script: Any) -> None:
    script([recorded("lvs_one", ["lvs", *REPORT, LV_COLS, f"{VG}/vol-contig"])])
    volume = lvm.logical_volume(VG, "vol-contig")
    assert volume is not None
    assert volume.full_name == f"{VG}/vol-contig"
    assert volume.attr.allocation_policy == "contiguous"
    assert volume.tags == ("basalt.managed", "odd/=!:#&+.-_x")
    assert volume.seg_pe_ranges == (lvm.PeRange("/dev/loop0", 3, 4),)


def test_missing_lv_is_none(script: Any) -> None:
    script([recorded("err_lvs_lv_not_found", ["lvs", *REPORT, LV_COLS, f"{VG}/missing"])])
    assert lvm.logical_volume(VG, "missing") is None


def test_lv_in_a_missing_vg_is_not_found(script: Any) -> None:
    script([(["lvs", *REPORT, LV_COLS, "no-such-vg/x"], 5, _read("err_vgs_vg_not_found.json"),
             stderr_of("err_vgs_vg_not_found"))])
    with pytest.raises(NotFound, match="no-such-vg"):
        lvm.logical_volume("no-such-vg", "x")


def test_linear_location_of_a_contiguous_lv(script: Any) -> None:
    script([recorded("lvs_all"), recorded("pvs")])
    volumes = _by_name(lvm.logical_volumes(VG, None))
    pvs = lvm.physical_volumes(VG)
    # pe_start 1 MiB + first extent 3 * 4 MiB
    assert lvm.linear_location(volumes["vol-contig"], pvs, EXTENT) == lvm.DataLocation("/dev/loop0", 13 * MiB, 8 * MiB)
    assert lvm.linear_location(volumes["other"], pvs, EXTENT) == lvm.DataLocation("/dev/loop0", 21 * MiB, 4 * MiB)
    with pytest.raises(Precondition, match="2 segments"):
        lvm.linear_location(volumes["vol-normal"], pvs, EXTENT)
    with pytest.raises(NotFound, match="/dev/loop0"):
        lvm.linear_location(volumes["vol-contig"], pvs[1:], EXTENT)


def test_thin_pool_thin_lvs_and_snapshots(script: Any) -> None:
    script([recorded("lvs_thin", ["lvs", *REPORT, LV_COLS, VG])])
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


def test_thin_managed_selection(script: Any) -> None:
    script([recorded("lvs_thin_managed", ["lvs", *REPORT, LV_COLS, "--select", 'lv_tags={"basalt.managed"}', VG])])
    assert sorted(_by_name(lvm.logical_volumes(VG, "basalt.managed"))) == [
        "cowsnap", "thin1", "thin2", "thinsnap1", "vol-contig", "vol-normal"]


def test_a_failed_thin_remove_still_drops_the_lv(script: Any) -> None:
    script([recorded("err_lvremove_thin_no_dm"), recorded("lvs_thin_after_remove")])
    with pytest.raises(Precondition, match="Cannot activate thin pool basalt-rec/pool0"):
        lvm.remove(VG, "thin2")
    assert "thin2" not in _by_name(lvm.logical_volumes(VG, None))


def test_vgs_after_thin_restore(script: Any) -> None:
    script([recorded("vgs_thin")])
    assert lvm.volume_group(VG).free_count == 14


def test_failed_thin_pool_creation_leaves_nothing_behind() -> None:
    before = {v.name for v in lvm.parse_logical_volumes(_rows("lvs_after_thin_pool_failure.json"))}
    assert before == {"other", "vol-contig", "vol-normal"}


def _rows(name: str) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = json.loads(_read(name))["report"][0]["lv"]
    return rows


def test_unexpected_report_output_is_a_command_failure(script: Any) -> None:
    script([(["vgs", *REPORT, VG_COLS, VG], 0, "not json", "")])
    with pytest.raises(CommandFailed, match="unexpected vgs output"):
        lvm.volume_group(VG)
    script([(["lvs", *REPORT, LV_COLS, VG], 0, '{"report":[{"lv":[{"lv_name":"x"}]}]}', "")])
    with pytest.raises(CommandFailed, match="missing"):
        lvm.logical_volumes(VG, None)
    rows = _rows("lvs_one.json")
    rows[0]["lv_attr"] = "-wi"
    script([(["lvs", *REPORT, LV_COLS, VG], 0, json.dumps({"report": [{"lv": [rows[0]]}]}), "")])
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


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vol-1", "a", "A.b+c_d-e", "lvol0", "mysnapshot", "x_tdat", "pvc-" + "a" * 100,
                                  "_hidden", "+plus", ".dot"])
def test_valid_lv_names(name: str) -> None:
    assert lvm.check_lv_name(name, VG) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "invalid"), ("-a", "invalid"), (".", "invalid"), ("..", "invalid"), ("a b", "invalid"),
        ("a/b", "invalid"), ("é", "invalid"), ("a\n", "invalid"), ("a" * 128, "invalid"),
        ("snapshot", "starts with 'snapshot'"), ("snapshot1", "starts with 'snapshot'"),
        ("pvmove0", "starts with 'pvmove'"),
        ("x_tmeta", "contains '_tmeta'"), ("x_tdata1", "contains '_tdata'"), ("a_mlog", "contains '_mlog'"),
        ("a_mimage_0", "contains '_mimage'"), ("a_rimage", "contains '_rimage'"), ("a_rmeta", "contains '_rmeta'"),
        ("a_cdata", "contains '_cdata'"), ("a_cmeta", "contains '_cmeta'"), ("a_corig", "contains '_corig'"),
        ("a_cpool", "contains '_cpool'"), ("a_cvol", "contains '_cvol'"), ("a_imeta", "contains '_imeta'"),
        ("a_iorig", "contains '_iorig'"), ("a_pmspare", "contains '_pmspare'"), ("a_vdata", "contains '_vdata'"),
        ("a_vorigin", "contains '_vorigin'"), ("a_wcorig", "contains '_wcorig'"),
        ("c" * 122, "too long"),  # "basalt-rec/" + 122 = 133 > 125; LVM: "length 133 is not supported"
    ],
)
def test_invalid_lv_names_are_refused_before_running_anything(script: Any, name: str, reason: str) -> None:
    script([])
    with pytest.raises(InvalidRequest, match=reason.replace("(", r"\(")):
        lvm.create_linear(VG, name, MiB)


def test_full_name_limit_is_vg_plus_lv() -> None:
    assert lvm.check_lv_name("c" * 121, "bvg")  # "bvg/" + 121 = 125: LVM took it
    with pytest.raises(InvalidRequest, match="too long"):
        lvm.check_lv_name("c" * 122, "bvg")  # 126: "length 126 is not supported"
    assert lvm.check_lv_name("c" * 110, "basalt-test-vg")
    with pytest.raises(InvalidRequest, match="too long"):
        lvm.check_lv_name("c" * 111, "basalt-test-vg")
    assert lvm.check_lv_name("c" * 127) == "c" * 127  # no VG given: the name alone


def test_reserved_name_is_what_lvm_refuses() -> None:
    assert 'Names including "_tmeta" are reserved' in stderr_of("err_lvcreate_reserved")
    with pytest.raises(InvalidRequest):
        lvm.check_lv_name("x_tmeta")


@pytest.mark.parametrize("vg", ["", "-vg", ".", "..", "v g", "v/g", "x" * 128])
def test_invalid_vg_names(script: Any, vg: str) -> None:
    script([])
    with pytest.raises(InvalidRequest, match="volume group name"):
        lvm.volume_group(vg)


@pytest.mark.parametrize("name", ["-x", "a/b", "", "x;y"])
def test_lookups_refuse_names_that_are_not_lvm_names(script: Any, name: str) -> None:
    script([])
    with pytest.raises(InvalidRequest):
        lvm.logical_volume(VG, name)
    with pytest.raises(InvalidRequest):
        lvm.remove(VG, name)


# -- tags -------------------------------------------------------------------------------

TAG_ALPHABET = "ABCXYZabcxyz0189_+.-/=!:#&"


def test_tag_alphabet_is_what_lvm_took() -> None:
    for tag in ["odd/=!:#&+.-_x", TAG_ALPHABET, "k=v", "a" * 128, "-leading"]:
        assert lvm.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "a b", "a,b", "a@b", "a~b", "a%b", "a*b", "a$b", "a|b", 'a"b', "a'b", "é",
                                 "a\nb", "a" * 129])
def test_tags_outside_the_alphabet_are_refused(script: Any, tag: str) -> None:
    script([])
    with pytest.raises(InvalidRequest, match="tag"):
        lvm.add_tags(VG, "vol-1", [tag])
    with pytest.raises(InvalidRequest, match="tag"):
        lvm.logical_volumes(VG, tag)


def test_tag_selection_is_quoted() -> None:
    # Unquoted, '#' starts a comment and '&', '|', '!' are operators in --select.
    assert lvm.tag_selection("h#1") == 'lv_tags={"h#1"}'


NAMES = [
    "",
    "pvc-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
    "snap-ü-1",
    "é" * 64,  # 128 bytes of UTF-8
    "名" * 42 + "ab",  # 128 bytes
    "😀" * 32,  # 128 bytes, 4-byte characters
    "".join(chr(c) for c in range(1, 128)),  # every ASCII character but NUL
    " leading and trailing ",
    "a,b;c|d&e#f!g@h$i%j^k*l(m)n[o]p{q}r<s>t?u\"v'w`x~y\\z\n\t",
    "x" * 1000,
]


@pytest.mark.parametrize("text", NAMES, ids=range(len(NAMES)))
def test_tag_value_round_trip(text: str) -> None:
    tags = lvm.encode_tag_value("basalt.name", text)
    assert all(lvm.check_tag(tag) and len(tag) <= 128 for tag in tags)
    assert all(tag.startswith("basalt.name:") for tag in tags)
    mixed = [*tags, "basalt.managed", "basalt.name2:0/1=eA", "basalt.names:0/1=eA", "other"]
    random.Random(7).shuffle(mixed)
    assert lvm.decode_tag_value(mixed, "basalt.name") == text
    assert lvm.decode_tag_value(sorted(mixed), "basalt.name") == text  # LVM reports tags sorted


def test_a_128_byte_name_takes_two_tags() -> None:
    tags = lvm.encode_tag_value("basalt.name", "é" * 64)
    assert [tag[:16] for tag in tags] == ["basalt.name:0/2=", "basalt.name:1/2="]


def test_many_chunks_keep_within_128() -> None:
    tags = lvm.encode_tag_value("k", "x" * 3000)
    assert len(tags) > 10 and max(len(t) for t in tags) <= 128
    assert lvm.decode_tag_value(sorted(tags), "k") == "x" * 3000


def test_absent_key_decodes_to_none() -> None:
    assert lvm.decode_tag_value(["basalt.managed", "basalt.name2:0/1=eA"], "basalt.name") is None
    assert lvm.decode_tag_value([], "basalt.name") is None


@pytest.mark.parametrize(
    "tags",
    [
        ["k:0/2=eA"],  # missing chunk
        ["k:0/1=eA", "k:0/1=eQ"],  # repeated chunk
        ["k:0/2=eA", "k:1/3=eA"],  # counts disagree
        ["k:1/2=eA", "k:2/2=eA"],  # wrong indices
        ["k:0/1=_w"],  # not UTF-8
        ["k:0/1=e"],  # truncated base64
    ],
)
def test_inconsistent_tags_are_a_precondition_failure(tags: List[str]) -> None:
    with pytest.raises(Precondition):
        lvm.decode_tag_value(tags, "k")


@pytest.mark.parametrize("key", ["", "-k", "a:b", "a=b", "a/b", "k" * 65, "é"])
def test_bad_tag_keys(key: str) -> None:
    with pytest.raises(InvalidRequest, match="tag key"):
        lvm.encode_tag_value(key, "x")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        lvm.encode_tag_value("k", "\udc80")


# -- errors -------------------------------------------------------------------------------

ERRORS: List[Tuple[str, Callable[[], Any], Type[StorageError], str]] = [
    ("err_lvremove_not_found", lambda: lvm.remove(VG, "missing"), NotFound,
     'remove LV basalt-rec/missing: Failed to find logical volume "basalt-rec/missing"'),
    ("err_lvextend_not_found", lambda: lvm.extend(VG, "missing", 8 * MiB), NotFound,
     "Logical volume missing not found in volume group basalt-rec."),
    ("err_lvchange_not_found", lambda: lvm.add_tags(VG, "missing", ["basalt.managed"]), NotFound,
     "Failed to find logical volume"),
    ("err_lvcreate_vg_not_found", lambda: lvm.create_linear("no-such-vg", "x", 4 * MiB), NotFound,
     'Volume group "no-such-vg" not found'),
    ("err_lvcreate_thin_pool_missing", lambda: lvm.create_thin(VG, "nopool", "thin9", 8 * MiB), NotFound,
     "Pool nopool not found in Volume group basalt-rec."),
    ("err_lvcreate_exists", lambda: lvm.create_linear(VG, "vol-normal", 4 * MiB), Conflict,
     'Logical Volume "vol-normal" already exists in volume group "basalt-rec"'),
    ("err_lvcreate_no_space", lambda: lvm.create_linear(VG, "big", 1 << 30), NoSpace,
     "insufficient free space (21 extents): 256 required"),
    ("err_lvextend_no_space", lambda: lvm.extend(VG, "vol-normal", 1 << 30), NoSpace,
     "Insufficient free space: 250 extents needed, but only 21 available"),
    ("err_lvextend_no_contiguous", lambda: lvm.extend(VG, "vol-contig", 16 * MiB), NoSpace,
     "Insufficient suitable contiguous allocatable extents for logical volume vol-contig: 2 more required"),
    ("err_lvcreate_thin_no_dm", lambda: lvm.create_thin(VG, "pool0", "thin9", 8 * MiB), Precondition,
     "(dm_thin_pool for thin) is not available on this host: "
     "Can't create thin without using device-mapper kernel driver."),
    ("err_lvcreate_thin_snapshot_no_dm", lambda: lvm.create_thin_snapshot(VG, "thin1", "snap9"), Precondition,
     "(dm_thin_pool for thin) is not available"),
    ("err_lvcreate_cow_snapshot_no_dm", lambda: lvm.create_cow_snapshot(VG, "vol-contig", "snap9", 4 * MiB),
     Precondition, "(dm_snapshot for snapshot) is not available on this host: Can't create snapshot without"),
    ("err_lvremove_thin_no_dm", lambda: lvm.remove(VG, "thin2"), Precondition,
     "(dm_thin_pool for thin-pool) is not available on this host: Cannot activate thin pool basalt-rec/pool0."),
    ("err_pvcreate_signature", lambda: lvm.create_pv("/dev/loop2"), Precondition,
     "create PV on /dev/loop2: 1 existing signature left on the device."),
    ("err_vgremove_has_lvs", lambda: lvm.remove_vg(VG), InUse, "remove VG basalt-rec: it still holds logical volumes"),
]


@pytest.mark.parametrize(("name", "call", "error", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_recorded_failures_become_typed_errors(
    script: Any, name: str, call: Callable[[], Any], error: Type[StorageError], message: str
) -> None:
    script([recorded(name)])
    with pytest.raises(error) as caught:
        call()
    assert message in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, CommandFailed) and cause.rc == COMMANDS[name][1] and cause.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("err_lvchange_activate_no_dm",
         "(dm_mod) is not available on this host: Failure to communicate with kernel device-mapper driver."),
        ("err_lvcreate_linear_no_dm", "(dm_mod for striped) is not available on this host: "
                                      "striped: Required device-mapper target(s) not detected in your kernel."),
        ("err_lvcreate_thin_pool_no_dm", "(dm_thin_pool for thin-pool) is not available on this host: "
                                         "Can't create thin-pool without using device-mapper kernel driver."),
    ],
)
def test_missing_device_mapper_is_a_precondition(name: str, message: str) -> None:
    argv, rc = COMMANDS[name]
    mapped = lvm.classify(CommandFailed(argv, rc, stderr_of(name), "do it"))
    assert isinstance(mapped, Precondition)
    assert str(mapped).startswith("do it: the device-mapper kernel driver ")
    assert message in str(mapped)


def test_activation_without_device_mapper_raises_precondition(script: Any) -> None:
    settings = lvm.LvmSettings(config="global{activation=1}")
    script([recorded("err_lvchange_activate_no_dm")])
    with pytest.raises(Precondition, match="activate LV basalt-rec/vol-normal: the device-mapper kernel driver"):
        lvm.activate(VG, "vol-normal", settings=settings)


def test_unknown_failures_stay_command_failures(script: Any) -> None:
    script([(["lvremove", "--yes", f"{VG}/x"], 5, "", "  Something new went wrong.")])
    with pytest.raises(CommandFailed) as caught:
        lvm.remove(VG, "x")
    assert type(caught.value) is CommandFailed and caught.value.rc == 5
    script([(["lvextend", "--yes", "--size", "512b", f"{VG}/x"], 5, "", "  Something new went wrong.")])
    with pytest.raises(CommandFailed):
        lvm.extend(VG, "x", 1)
    script([(["vgremove", VG], 5, "", "  Something new went wrong.")])
    with pytest.raises(CommandFailed):
        lvm.remove_vg(VG)


def test_warnings_are_not_mistaken_for_the_failure() -> None:
    stderr = ("  WARNING: Device for PV lBVwdB-Ksrx-0z12-GB8E-Kwoy-NMXt-PI57Qs not found or rejected by a filter.\n"
              "  Cannot change VG basalt-rec while PVs are missing.\n")
    error = CommandFailed(["lvcreate"], 5, stderr, "create LV basalt-rec/x")
    assert lvm.classify(error) is error


def test_full_metadata_area_is_no_space() -> None:
    """Measured by bench/bench_lvm_pool.py with LVM's default metadata area: lvcreate number 800 fails so."""
    failure = CommandFailed(["lvcreate"], 5, "  VG basalt-bench metadata on /dev/loop3 (521692 bytes) exceeds "
                            "maximum metadata size (521472 bytes)\n  Failed to write VG basalt-bench.", "create LV")
    assert isinstance(lvm.classify(failure), NoSpace)
