"""The LVM command layer: exact argv in, real LVM 2.03.16 output: settings, changes, errors."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Type

import pytest
from lvm_testlib import (
    COMMANDS,
    EXTENT,
    NAME_TAG,
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
    Conflict,
    InUse,
    InvalidRequest,
    NoSpace,
    NotFound,
    Precondition,
    StorageError,
)

# -- settings ------------------------------------------------------------------------


def test_default_settings_add_nothing_but_the_fd_warning_switch() -> None:
    settings = lvm.LvmSettings()
    assert settings.command("lvs", "vg") == ["lvs", "vg"]
    assert settings.env() == {"LVM_SUPPRESS_FD_WARNINGS": "1"}


def test_private_settings_pass_config_and_system_dir(lvm_script: Any) -> None:
    settings = lvm.LvmSettings(config="global{activation=0}", system_dir="/tmp/x/etc")
    runner = lvm_script([(["vgs", "--config", "global{activation=0}", *REPORT, VG_COLS, VG], 0,
                          read_recorded("vgs.json"), "")])
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
    lvm_script: Any, name: str, call: Callable[[], Any], argv: List[str], returns: Any
) -> None:
    lvm_script([recorded(name, argv)])
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
def test_mutation_argv(lvm_script: Any, name: str, call: Callable[[], Any], argv: List[str]) -> None:
    lvm_script([(argv, 0, "", "")])
    call()


def test_failed_thin_commands_were_recorded_with_the_same_argv() -> None:
    assert COMMANDS["err_lvcreate_thin_no_dm"][0] == UNRECORDED_SUCCESS[0][2]
    assert COMMANDS["err_lvcreate_thin_snapshot_no_dm"][0] == [
        "lvcreate", "--yes", "--snapshot", "--name", "snap9", "--setactivationskip", "y", f"{VG}/thin1"]
    assert COMMANDS["err_lvcreate_cow_snapshot_no_dm"][0] == UNRECORDED_SUCCESS[4][2]


def test_tags_none_and_empty_run_nothing(lvm_script: Any) -> None:
    lvm_script([])
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
def test_sizes_are_bytes_rounded_up(lvm_script: Any, size: int, extent_size: Optional[int], argument: str) -> None:
    lvm_script([(["lvcreate", "--yes", "--name", "v", "--size", argument, "--alloc", "normal", "--zero", "y",
                  "--wipesignatures", "y", VG], 0, "", "")])
    assert lvm.create_linear(VG, "v", size, extent_size=extent_size) == int(argument[:-1])
    assert "Size is not a multiple of 512" in stderr_of("err_lvcreate_not_sector")


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "1M"])
def test_bad_sizes_are_refused_before_running_anything(lvm_script: Any, size: Any) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest, match="size"):
        lvm.create_linear(VG, "v", size)


def test_bad_allocation_policy_and_extent_size(lvm_script: Any) -> None:
    lvm_script([])
    with pytest.raises(InvalidRequest, match="allocation policy"):
        lvm.create_linear(VG, "v", MiB, alloc="striped")
    with pytest.raises(InvalidRequest, match="extent size"):
        lvm.create_linear(VG, "v", MiB, extent_size=1000)
    with pytest.raises(InvalidRequest, match="no physical volumes"):
        lvm.create_vg(VG, [])


def test_extend_to_the_current_size_is_a_no_op(lvm_script: Any) -> None:
    lvm_script([recorded("err_lvextend_same_size")])
    assert lvm.extend(VG, "vol-normal", 24 * MiB) is False


def test_extend_refuses_to_shrink(lvm_script: Any) -> None:
    lvm_script([recorded("err_lvextend_shrink")])
    with pytest.raises(InvalidRequest, match=r"cannot shrink.*not larger than existing size"):
        lvm.extend(VG, "vol-normal", 4 * MiB)


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
    lvm_script: Any, name: str, call: Callable[[], Any], error: Type[StorageError], message: str
) -> None:
    lvm_script([recorded(name)])
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


def test_activation_without_device_mapper_raises_precondition(lvm_script: Any) -> None:
    settings = lvm.LvmSettings(config="global{activation=1}")
    lvm_script([recorded("err_lvchange_activate_no_dm")])
    with pytest.raises(Precondition, match="activate LV basalt-rec/vol-normal: the device-mapper kernel driver"):
        lvm.activate(VG, "vol-normal", settings=settings)


def test_unknown_failures_stay_command_failures(lvm_script: Any) -> None:
    lvm_script([(["lvremove", "--yes", f"{VG}/x"], 5, "", "  Something new went wrong.")])
    with pytest.raises(CommandFailed) as caught:
        lvm.remove(VG, "x")
    assert caught.type is CommandFailed and caught.value.rc == 5
    lvm_script([(["lvextend", "--yes", "--size", "512b", f"{VG}/x"], 5, "", "  Something new went wrong.")])
    with pytest.raises(CommandFailed):
        lvm.extend(VG, "x", 1)
    lvm_script([(["vgremove", VG], 5, "", "  Something new went wrong.")])
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
