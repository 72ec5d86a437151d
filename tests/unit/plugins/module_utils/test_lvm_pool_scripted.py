"""Pool paths this machine cannot run (no device-mapper): thin pools, COW snapshots, dm activation.

Each case lists the exact LVM commands the pool must run.  Report rows are
real ``lvs``/``vgs`` output recorded on LVM2 2.03.16 (tests/unit/plugins/module_utils/lvm_recorded:
a thin pool, thin LVs and a COW snapshot loaded with vgcfgrestore), adapted
only where a case needs another name, our tags, or what an active LV reports
(``a``/``o`` in lv_attr, data_percent), which LVM shows only with device-mapper.
The same paths run for real in the VM tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from basalt_core import lvm, lvm_report, volumes
from basalt_core.errors import NoSpace, Precondition
from basalt_core.lvm_pool import COW, LvmPool, lv_name
from basalt_core.lvmthin_pool import LvmThinPool
from basalt_core.model import READY, SOURCE_SNAPSHOT, ContentSource, Snapshot, Volume, snapshot_id_for, volume_id_for
from basalt_core.pool_spec import PoolSettings
from basalt_core.sizes import MiB

RECORDED = Path(__file__).parent / "lvm_recorded"
VG = "basalt-rec"
LV_OPTIONS = ",".join(lvm_report.LV_COLUMNS)
VG_OPTIONS = ",".join(lvm_report.VG_COLUMNS)
NOT_FOUND = "  Failed to find logical volume \"basalt-rec/{name}\"\n"


def recorded_rows(name: str) -> Dict[str, Dict[str, str]]:
    report = json.loads((RECORDED / f"{name}.json").read_text())
    return {row["lv_name"]: row for row in report["report"][0]["lv"]}


THIN = recorded_rows("lvs_thin")


def lvs_json(*rows: Dict[str, str]) -> str:
    return json.dumps({"report": [{"lv": list(rows)}]})


def row_like(base: str, name: str, tags: List[str], **changes: str) -> Dict[str, str]:
    row = dict(THIN[base], lv_name=name, lv_path=f"/dev/{VG}/{name}", lv_tags=",".join(sorted(tags)))
    row.update(changes)
    return row


def lvs_one(name: str) -> List[str]:
    return ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--options", LV_OPTIONS, f"{VG}/{name}"]


def lvs_all(managed: bool) -> List[str]:
    select = ["--select", 'lv_tags={"basalt.managed"}'] if managed else []
    return ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--options", LV_OPTIONS, *select, VG]


VGS = (["vgs", "--reportformat", "json", "--units", "b", "--nosuffix", "--options", VG_OPTIONS, VG], 0,
       (RECORDED / "vgs_thin.json").read_text(), "")


def _pvs() -> Any:
    """The recorded ``pvs`` of the VG, its PVs renamed to paths that do not exist here: their headers cannot be
    read, so the VG's seqno is unknown and the pool's index unused (every LV read with lvs, as without one)."""
    report = json.loads((RECORDED / "pvs.json").read_text())
    for row in report["report"][0]["pv"]:
        row["pv_name"] = "/nonexistent" + row["pv_name"]
    return (["pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--options",
             ",".join(lvm_report.PV_COLUMNS), "--select", f'vg_name="{VG}"'], 0, json.dumps(report), "")


PVS = _pvs()  # read once per pool object, by the first seqno read
#: LVM's locking settings with lvmlockd: the VG is not guarded by file locks, so the pool places nothing
LVMLOCKD = (["lvmconfig", "--typeconfig", "full", "global/locking_dir", "global/use_lvmlockd", "global/locking_type",
             "backup/backup", "backup/backup_dir"],
            0, 'locking_dir="/run/lock/lvm"\nuse_lvmlockd=1\nlocking_type=1\nbackup=1\n'
            'backup_dir="/etc/lvm/backup"\n', "")


def missing(name: str) -> Any:
    return (lvs_one(name), 5, "", NOT_FOUND.format(name=name))


def found(row: Dict[str, str]) -> Any:
    return (lvs_one(row["lv_name"]), 0, lvs_json(row), "")


def record_tags(pool: LvmPool, kind: str, record: Any) -> List[str]:
    return LvmPool._record_tags(kind, record)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records carry their creation time; fix it so the expected tags are exact."""
    monkeypatch.setattr("basalt_core.model.now", lambda: 1795580000.0)


@pytest.fixture(autouse=True)
def no_index_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid LV index is read again (one listing) only a second after the last: never within a case here,
    however slowly it runs, so that its commands are exact."""
    monkeypatch.setattr("basalt_core.lvm_index.RELOAD_INTERVAL", 1e9)


def flags(option: str, values: List[str]) -> List[str]:
    return [arg for value in values for arg in (option, value)]


def retag(name: str, old: List[str], new: List[str]) -> Any:
    """The one lvchange that replaces a record: every stale tag out, every new one in."""
    remove = [t for t in sorted(old) if t not in new]  # lvs reports tags sorted
    add = [t for t in new if t not in old]
    return (["lvchange", *flags("--deltag", remove), *flags("--addtag", add),
             f"{VG}/{name}"], 0, "", "")


def thin_pool(**options: Any) -> LvmThinPool:
    return LvmThinPool(VG, "pool0", PoolSettings(**options))


def test_thin_volume_creation_sequence(script: Any) -> None:
    """A blank thin volume is one metadata commit: lvcreate carries the ready record (a thin LV reads zeroes,
    so nothing is left to do after it: a crash leaves either nothing or the finished volume)."""
    pool = thin_pool(overprovision=100.0)
    volume_id = volume_id_for("pvc-thin")
    name = lv_name(volume_id)
    ready = Volume(id=volume_id, name="pvc-thin", size=8 * MiB, pool="lvmthin", created_at=1795580000.0,
                   state=READY)
    runner = script([
        missing(name),  # no earlier attempt (read once per operation)
        PVS,  # (the seqno: which listing of the thin pool's use is current)
        (lvs_all(False), 0, lvs_json(*THIN.values()), ""),  # space: the pool and its thin LVs, one listing
        VGS,
        (["lvcreate", "--yes", "--type", "thin", "--name", name, "--virtualsize", f"{8 * MiB}b", "--thinpool",
          "pool0", *flags("--addtag", record_tags(pool, "volume", ready)), VG], 0, "", ""),
    ])
    volume, changed = volumes.ensure_volume(pool, "pvc-thin", 8 * MiB)
    assert changed and volume.state == READY and runner.script == []


def test_thin_overprovisioning_counts_every_thin_lv_in_the_pool(script: Any) -> None:
    # pool0 holds 16 MiB of data; thin1 (32 MiB), thin2 (8 MiB) and thinsnap1 (32 MiB) are virtual.
    listing = (lvs_all(False), 0, lvs_json(*THIN.values()), "")
    script([PVS, listing, PVS, listing])  # (a pool each: the PVs, for the seqno)
    assert thin_pool(overprovision=1.0).available_bytes() == 0
    assert thin_pool(overprovision=10.0).available_bytes() == 160 * MiB - 72 * MiB


def test_restore_from_a_thin_snapshot_is_a_thin_snapshot_then_extended(script: Any) -> None:
    pool = thin_pool(overprovision=100.0)
    snap = Snapshot(id=snapshot_id_for("s"), name="s", source_volume_id=volume_id_for("o"), size=32 * MiB,
                    pool="lvmthin", state=READY)
    snap_row = row_like("thinsnap1", lv_name(snap.id), record_tags(pool, "snapshot", snap))
    volume_id = volume_id_for("restored")
    name = lv_name(volume_id)
    source = ContentSource(SOURCE_SNAPSHOT, snap.id)
    creating = Volume(id=volume_id, name="restored", size=64 * MiB, pool="lvmthin", source=source,
                      created_at=1795580000.0)
    tags = record_tags(pool, "volume", creating)
    script([
        missing(name),
        found(snap_row),  # the source exists and is ready
        PVS, (lvs_all(False), 0, lvs_json(*THIN.values()), ""),
        (["lvcreate", "--yes", "--snapshot", "--name", name, "--setactivationskip", "n",
          *flags("--addtag", tags), f"{VG}/{snap_row['lv_name']}"], 0, "", ""),
        found(row_like("thinsnap1", name, tags, origin=snap_row["lv_name"])),  # 32 MiB like its origin
        VGS,
        (["lvextend", "--yes", "--size", f"{64 * MiB}b", f"{VG}/{name}"], 0, "", ""),
        found(row_like("thinsnap1", name, tags, lv_size=str(64 * MiB))),
        retag(name, tags, record_tags(pool, "volume", dataclasses.replace(creating, state=READY,
                                                                          copy_method="thin"))),
    ])
    volume = volumes.ensure_volume(pool, "restored", 64 * MiB, source=source)[0]
    assert volume.copy_method == "thin"


def test_thin_snapshot_keeps_the_activation_skip_flag(script: Any) -> None:
    pool = thin_pool(overprovision=100.0)
    origin = Volume(id=volume_id_for("o"), name="o", size=32 * MiB, pool="lvmthin", state=READY)
    origin_row = row_like("thin1", lv_name(origin.id), record_tags(pool, "volume", origin))
    snapshot_id = snapshot_id_for("nightly")
    name = lv_name(snapshot_id)
    creating = Snapshot(id=snapshot_id, name="nightly", source_volume_id=origin.id, size=32 * MiB,
                        pool="lvmthin", created_at=1795580000.0)
    tags = record_tags(pool, "snapshot", creating)
    script([
        missing(name), found(origin_row),
        PVS, (lvs_all(False), 0, lvs_json(*THIN.values()), ""),
        (["lvcreate", "--yes", "--snapshot", "--name", name, "--setactivationskip", "y",
          *flags("--addtag", tags), f"{VG}/{origin_row['lv_name']}"], 0, "", ""),
        found(row_like("thinsnap1", name, tags)),
        retag(name, tags, record_tags(pool, "snapshot", dataclasses.replace(creating, state=READY,
                                                                            copy_method="thin"))),
    ])
    snapshot, changed = volumes.ensure_snapshot(pool, "nightly", origin.id)
    assert changed and snapshot.copy_method == "thin"


@pytest.mark.parametrize(("data", "metadata", "problem"), [
    ("12.50", "3.00", None),
    ("95.10", "3.00", "data is 95.1% full"),
    ("40.00", "91.00", "metadata is 91.0% full"),
])
def test_nearly_full_thin_pool_makes_volumes_abnormal(script: Any, data: str, metadata: str,
                                                      problem: Optional[str]) -> None:
    pool = thin_pool()
    volume = Volume(id=volume_id_for("v"), name="v", size=8 * MiB, pool="lvmthin", state=READY)
    row = row_like("thin2", lv_name(volume.id), record_tags(pool, "volume", volume), lv_attr="Vwi-aotz--")
    active_pool = dict(THIN["pool0"], lv_attr="twi-aotz--", data_percent=data, metadata_percent=metadata)
    script([found(row), found(active_pool)])
    found_problem = pool.volume_problem(volume)
    assert (found_problem is None) if problem is None else (problem in (found_problem or ""))


def test_device_mapper_activation_reads_the_path_from_lvm(script: Any) -> None:
    pool = thin_pool()
    volume = Volume(id=volume_id_for("v"), name="v", size=8 * MiB, pool="lvmthin", state=READY)
    name = lv_name(volume.id)
    inactive = row_like("thin2", name, record_tags(pool, "volume", volume))
    active = dict(inactive, lv_attr="Vwi-a-tz--")
    script([
        found(inactive),
        (["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/{name}"], 0, "", ""),
        found(active),
    ])
    assert pool.attach(volume) == f"/dev/{VG}/{name}"


def test_activation_that_does_nothing_is_an_error_not_a_guess(script: Any) -> None:
    pool = thin_pool()
    volume = Volume(id=volume_id_for("v"), name="v", size=8 * MiB, pool="lvmthin", state=READY)
    name = lv_name(volume.id)
    row = row_like("thin2", name, record_tags(pool, "volume", volume))  # state X: no device-mapper
    script([found(row), (["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/{name}"], 0, "",
                         "  WARNING: Activation disabled. No device-mapper interaction will be attempted.\n"),
            found(row)])
    with pytest.raises(Exception, match="inactive after activating"):
        pool.attach(volume)


def test_cow_snapshot_sequence_and_origin_protection(script: Any) -> None:
    pool = LvmPool(VG, PoolSettings(snapshot_mode=COW, cow_percent=25))
    origin = Volume(id=volume_id_for("db"), name="db", size=8 * MiB, pool="lvm", state=READY)
    origin_row = row_like("vol-contig", lv_name(origin.id), record_tags(pool, "volume", origin))
    snapshot_id = snapshot_id_for("db-snap")
    name = lv_name(snapshot_id)
    creating = Snapshot(id=snapshot_id, name="db-snap", source_volume_id=origin.id, size=8 * MiB, pool="lvm",
                        created_at=1795580000.0)
    tags = record_tags(pool, "snapshot", creating)
    snap_row = row_like("cowsnap", name, tags, origin=origin_row["lv_name"])
    script([
        missing(name), found(origin_row),  # no space check: lvcreate refuses what does not fit
        VGS,  # the extent size
        (["lvcreate", "--yes", "--snapshot", "--name", name, "--size", f"{4 * MiB}b",  # 25%, at least 1 MiB,
          *flags("--addtag", tags), f"{VG}/{origin_row['lv_name']}"], 0, "", ""),  # in extents
        found(snap_row),  # read again after lvcreate, once
        PVS,  # (the seqno around the retag)
        retag(name, tags, record_tags(pool, "snapshot", dataclasses.replace(creating, state=READY,
                                                                            copy_method=COW))),
        # deleting the origin while the snapshot depends on it is refused: its lv_attr says "origin"
        found(origin_row),
        (lvs_all(True), 0, lvs_json(origin_row, snap_row), ""),
    ])
    snapshot = volumes.ensure_snapshot(pool, "db-snap", origin.id, parameters={})[0]
    assert snapshot.copy_method == COW
    with pytest.raises(Exception, match="COW snapshots"):
        volumes.delete_volume(pool, origin.id)


def test_copy_of_a_volume_in_use_goes_through_a_short_lived_cow_snapshot(
        script: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With device-mapper, an origin in use is snapshotted (dm's suspend freezes it) and copied from the snapshot.

    The LVs' device nodes are stand-in files here, so the bytes really move.  We
    must not fsfreeze it ourselves: dm's suspend then fails (seen on a real kernel).
    """
    frozen: List[str] = []

    @contextlib.contextmanager
    def freeze(device: Optional[str], *_args: Any, **_kwargs: Any) -> Iterator[None]:
        frozen.append(f"freeze {device}")
        yield
        frozen.append(f"thaw {device}")

    monkeypatch.setattr("basalt_core.freeze.frozen", freeze)
    pool = LvmPool(VG, PoolSettings(cow_percent=25))
    origin_id, target_id = volume_id_for("db"), snapshot_id_for("db-copy")
    pit = "csi-pit-snap-" + target_id[len("snap-"):]
    files = {name: tmp_path / name for name in ("origin", "pit", "target")}
    files["origin"].write_bytes(b"live" * (2 * MiB // 4))
    files["pit"].write_bytes(b"snap" * (2 * MiB // 4))  # what the origin held when the snapshot was taken
    files["target"].write_bytes(b"\0" * 2 * MiB)
    active = dict(lv_attr="owi-aos---", lv_size=str(2 * MiB))
    origin = lvm.parse_logical_volumes([row_like("vol-contig", lv_name(origin_id), [], **active,
                                                 lv_path=str(files["origin"]))])[0]
    target = lvm.parse_logical_volumes([row_like("vol-normal", lv_name(target_id), [], lv_attr="-wi-a-----",
                                                 lv_size=str(2 * MiB), lv_path=str(files["target"]))])[0]
    pit_row = row_like("cowsnap", pit, ["basalt.point-in-time"], lv_attr="swi-a-s---", lv_size=str(2 * MiB),
                       lv_path=str(files["pit"]), origin=origin.name)
    script([
        missing(pit),  # nothing left from an earlier attempt
        VGS,
        (["lvcreate", "--yes", "--snapshot", "--name", pit, "--size", f"{4 * MiB}b", "--addtag",
          "basalt.point-in-time", f"{VG}/{origin.name}"], 0, "", ""),
        found(pit_row),
        found(pit_row),  # still valid after the copy
        found(pit_row),  # removed while active: deactivating a COW snapshot would take its origin down
        (["lvremove", "--yes", f"{VG}/{pit}"], 0, "", ""),
    ])
    pool._copy(origin, target, Volume(id=origin_id, name="db", size=2 * MiB, pool="lvm", state=READY))
    assert frozen == []
    assert files["target"].read_bytes() == files["pit"].read_bytes()


def test_full_cow_space_during_the_copy_fails_clearly(script: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pool = LvmPool(VG, PoolSettings())
    origin_id, target_id = volume_id_for("busy"), volume_id_for("busy-clone")
    pit = "csi-pit-" + target_id[len("vol-"):]
    for name in ("o", "p", "t"):
        (tmp_path / name).write_bytes(b"\0" * MiB)
    origin = lvm.parse_logical_volumes([row_like("vol-contig", lv_name(origin_id), [], lv_attr="owi-aos---",
                                                 lv_size=str(MiB), lv_path=str(tmp_path / "o"))])[0]
    target = lvm.parse_logical_volumes([row_like("vol-normal", lv_name(target_id), [], lv_attr="-wi-a-----",
                                                 lv_size=str(MiB), lv_path=str(tmp_path / "t"))])[0]
    valid = row_like("cowsnap", pit, ["basalt.point-in-time"], lv_attr="swi-a-s---", lv_size=str(MiB),
                     lv_path=str(tmp_path / "p"))
    script([
        missing(pit), VGS,
        (["lvcreate", "--yes", "--snapshot", "--name", pit, "--size", f"{4 * MiB}b", "--addtag",
          "basalt.point-in-time", f"{VG}/{origin.name}"], 0, "", ""),
        found(valid),
        found(dict(valid, lv_attr="swi-I-s---")),  # invalidated: its COW space filled
        found(valid),
        (["lvremove", "--yes", f"{VG}/{pit}"], 0, "", ""),
    ])
    with pytest.raises(Precondition, match="cow-percent"):
        pool._copy(origin, target, Volume(id=origin_id, name="busy", size=MiB, pool="lvm", state=READY))


def test_restore_from_a_cow_snapshot_copies_the_snapshot_not_its_cow_space(script: Any, tmp_path: Path) -> None:
    """A classic snapshot LV reports its COW space as lv_size (recorded: 4 MiB for an 8 MiB origin).

    The snapshot's size comes from its record, and a restore copies all of it:
    copying lv_size bytes gave restored ext4 volumes without their journal on a
    real kernel (VM tier).  The LVs' device nodes are stand-in files here.
    """
    pool = LvmPool(VG, PoolSettings(cow_percent=25))
    origin_id = volume_id_for("db")
    snap = Snapshot(id=snapshot_id_for("db-snap"), name="db-snap", source_volume_id=origin_id, size=8 * MiB,
                    pool="lvm", state=READY, copy_method=COW, created_at=1795580000.0)
    files = {name: tmp_path / name for name in ("snap", "target")}
    files["snap"].write_bytes(os.urandom(8 * MiB))
    files["target"].write_bytes(b"\0" * 8 * MiB)
    snap_row = row_like("cowsnap", lv_name(snap.id), record_tags(pool, "snapshot", snap), lv_attr="swi-a-s---",
                        origin=lv_name(origin_id), lv_path=str(files["snap"]))
    assert int(snap_row["lv_size"]) == 4 * MiB  # the recorded COW space, unchanged
    volume_id = volume_id_for("restored")
    name = lv_name(volume_id)
    creating = Volume(id=volume_id, name="restored", size=8 * MiB, pool="lvm",
                      source=ContentSource(SOURCE_SNAPSHOT, snap.id), created_at=1795580000.0)
    tags = record_tags(pool, "volume", creating)
    target_row = row_like("vol-normal", name, tags, lv_attr="-wi-a-----", lv_size=str(8 * MiB),
                          lv_path=str(files["target"]))  # dm leaves a new LV active
    script([
        missing(name), found(snap_row),  # no earlier attempt; the source
        VGS,  # the extent size
        LVMLOCKD,  # no placing: LVM chooses
        (["lvcreate", "--yes", "--name", name, "--size", f"{8 * MiB}b", "--alloc", "normal", "--zero", "y",
          "--wipesignatures", "y", *flags("--addtag", tags), VG], 0, "", ""),
        found(target_row), found(snap_row),  # both active: copied with no activation
        PVS,
        retag(name, tags, record_tags(pool, "volume", dataclasses.replace(creating, state=READY,
                                                                          copy_method="copy"))),
    ])
    volume, changed = volumes.ensure_volume(pool, "restored", 8 * MiB, source=creating.source)
    assert changed and volume.state == READY
    assert files["target"].read_bytes() == files["snap"].read_bytes()


def test_thick_create_and_delete_read_each_lv_once_per_operation(script: Any, tmp_path: Path) -> None:
    """Where the pool cannot place the LV (here lvmlockd guards the VG; elsewhere: another create holds the VG's
    lock, a commit by someone else): CreateVolume lvcreate, lvs, lvchange (ready last); DeleteVolume: lvs,
    lvremove (the index unused: the PVs' seqno unknown here).

    No look-up of an earlier attempt before lvcreate (it refuses a name that exists, and only then is the
    name looked up), no free-space read before it (it refuses what does not fit), no
    re-read of an LV the operation already read or only retagged, no listing
    of every LV unless this one is a COW origin, no lvchange -an before
    lvremove (which takes an active, unopened LV down itself), no "deleting" retag before it (the LV is the
    record: lvremove drops both in one commit, so a crash leaves the ready volume or nothing). The new LV's
    first and last MiB are zeroed (LVM zeroes only 4 KiB): a file stands in
    for its device node, which this machine cannot make.
    """
    pool = LvmPool(VG, PoolSettings())
    volume_id = volume_id_for("pvc-thick")
    name = lv_name(volume_id)
    creating = Volume(id=volume_id, name="pvc-thick", size=8 * MiB, pool="lvm", created_at=1795580000.0)
    ready = dataclasses.replace(creating, state=READY)
    tags_creating, tags_ready = record_tags(pool, "volume", creating), record_tags(pool, "volume", ready)
    device = tmp_path / "lv"
    device.write_bytes(b"\xaa" * (8 * MiB))  # old data on the LV's extents
    new_lv = row_like("vol-normal", name, tags_creating, lv_attr="-wi-a-----", lv_size=str(8 * MiB),
                      lv_path=str(device))
    script([
        VGS,  # the extent size, read once per pool object
        LVMLOCKD,
        (["lvcreate", "--yes", "--name", name, "--size", f"{8 * MiB}b", "--alloc", "normal", "--zero", "y",
          "--wipesignatures", "y", *flags("--addtag", tags_creating), VG], 0, "", ""),
        found(new_lv),
        PVS,
        retag(name, tags_creating, tags_ready),
        # DeleteVolume, a new operation: read again
        found(dict(new_lv, lv_tags=",".join(sorted(tags_ready)))),
        (["lvremove", "--yes", f"{VG}/{name}"], 0, "", ""),
    ])
    volume, changed = volumes.ensure_volume(pool, "pvc-thick", 8 * MiB)
    assert changed and volume.state == READY
    data = device.read_bytes()
    assert data[:MiB] == data[-MiB:] == bytes(MiB) and data[MiB:-MiB] == b"\xaa" * (6 * MiB)
    assert volumes.delete_volume(pool, volume_id)


def test_a_capacity_limit_keeps_the_space_check_before_lvcreate(script: Any) -> None:
    pool = LvmPool(VG, PoolSettings(capacity_limit=4 * MiB))
    name = lv_name(volume_id_for("too-big"))
    script([missing(name), VGS, PVS, (lvs_all(True), 0, lvs_json(), "")])  # free space, then what is provisioned
    with pytest.raises(NoSpace, match="4194304 bytes available"):
        volumes.ensure_volume(pool, "too-big", 8 * MiB)


def test_check_mode_keeps_the_space_check_it_cannot_leave_to_lvcreate(script: Any) -> None:
    name = lv_name(volume_id_for("too-big"))
    script([missing(name), VGS])  # the recorded VG has 56 MiB free
    with pytest.raises(NoSpace, match="58720256 bytes available"):
        volumes.ensure_volume(LvmPool(VG, PoolSettings()), "too-big", 64 * MiB, check_mode=True)
