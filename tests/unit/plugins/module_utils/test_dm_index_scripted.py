"""Device-mapper activation and thin pools: the placed one-commit create, and the index that saves each look-up.

The exact LVM commands, as in test_lvm_placing_scripted.py (its fake PV carries the seqno each scripted commit
moves).  What lvs would read from the kernel (is the LV mapped, is it open) comes from device-mapper's
``DM_DEV_STATUS`` ioctl (dm_status): this machine has no device-mapper, so that one function is replaced by the
test's own table; the same paths run for real in the VM tier (tests/conformance on lvm-dm and lvmthin).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from test_lvm_placing_scripted import (
    EXTENT,
    FakePv,
    blank_ends,
    create,
    install,
    lock_settings,
    pv,
    pvs_layout,
    pvs_segments,
    records,
    vg_lock_free,
)
from test_lvm_pool_scripted import (
    THIN,
    VG,
    VGS,
    fixed_clock,
    flags,
    found,
    lvs_all,
    lvs_json,
    missing,
    no_index_reload,
    record_tags,
    row_like,
)

from basalt_core import dm_status, lvm, lvm_command, runner, volumes
from basalt_core.activation import DeviceMapperActivator
from basalt_core.errors import InUse
from basalt_core.lvm_pool import LvmPool, lv_name
from basalt_core.lvmthin_pool import LvmThinPool
from basalt_core.model import READY, Volume, volume_id_for
from basalt_core.pool_spec import PoolSettings
from basalt_core.runner import Answer
from basalt_core.sizes import MiB

__all__ = ["fixed_clock", "no_index_reload", "pv"]  # (fixtures)


class Kernel:
    """device-mapper's devices by name (absent: not mapped; None: it cannot tell), and the names asked."""

    def __init__(self) -> None:
        self.devices: Dict[str, Optional[dm_status.DmState]] = {}
        self.asked: List[str] = []

    def state(self, name: str) -> Optional[dm_status.DmState]:
        self.asked.append(name)
        return self.devices.get(name, dm_status.DmState(False, 0))

    def __setitem__(self, lv: str, state: Optional[dm_status.DmState]) -> None:
        self.devices[dm_status.dm_name(VG, lv)] = state


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    fake = Kernel()
    monkeypatch.setattr(dm_status, "state", fake.state)
    return fake


def remove(name: str) -> Any:
    return (["lvremove", "--yes", f"{VG}/{name}"], 0, f'  Logical volume "{name}" successfully removed.\n', "")


def dm_start_and_place(pv: FakePv, backup_dir: str = "") -> List[Any]:
    """An empty dm pool's start-up (one listing loads its index), then what its first placed create reads: the
    VG, LVM's locking settings (a metadata backup in *backup_dir*, none without), the free extents."""
    path = str(pv.path)
    return [pvs_layout(path), (lvs_all(True), 0, lvs_json(), ""), VGS, lock_settings(pv, backup_dir),
            pvs_segments(path, (0, 8, ""))]


def test_dm_blank_volume_is_one_placed_lvcreate_and_delete_one_lvremove(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    """lvm pool, device-mapper activation: CreateVolume is one ``lvcreate --nolocking`` on extents the pool chose,
    their ends zeroed on the PV first, carrying the ready record (LVM maps the new LV in that same command);
    DeleteVolume is ``lvremove`` alone: the record comes from the index (kept by the seqno), whether the LV is
    open from the kernel.  An open LV is refused before anything runs."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    first, _creating, ready1 = records(pool, "pvc-1")
    second, _creating2, ready2 = records(pool, "pvc-2")
    one, two = lv_name(first.id), lv_name(second.id)
    held_at_line: List[bool] = []
    install(script, monkeypatch, pv, [
        *dm_start_and_place(pv),
        create(one, ready1, f"{path}:0-1"),
        create(two, ready2, f"{path}:2-3"),
        remove(one),  # nothing read: the index has its record, the kernel says it is mapped and unopened
        create(one, ready1, f"{path}:0-1"),  # its extents are free again
    ], after_output=lambda: held_at_line.append(not vg_lock_free(pv)))
    assert pool.volume_ids() == []
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    assert volumes.ensure_volume(pool, "pvc-2", 8 * MiB)[0].state == READY
    assert blank_ends(pv.extent(0) + pv.extent(1)) and blank_ends(pv.extent(2) + pv.extent(3))
    assert pv.extent(4) == b"\xaa" * EXTENT
    kernel[one] = dm_status.DmState(True, 0)
    assert volumes.delete_volume(pool, first.id)
    assert kernel.asked == ["basalt--rec-" + one.replace("-", "--")]  # LVM's dm name: each "-" doubled
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    kernel[two] = dm_status.DmState(True, 1)  # mounted on this host, say
    with pytest.raises(InUse, match=f"in use as /dev/{VG}/{two}"):
        volumes.delete_volume(pool, second.id)
    # each lvcreate and the lvremove answered at its commit line; LVM keeping no backup, the pool's lock lasted
    # until each placed lvcreate's exit (udev makes the device names after the line, under the lock)
    answers = [answered is not None and answered.is_set() for answered in pv.answers]
    assert answers == [False] * 5 + [True] * 4  # (the reads of start-up and the first create not answered)
    assert held_at_line == [True, True, False, True]  # (lvremove: under LVM's own lock, the tool's)


def test_dm_create_answers_at_its_line_and_the_lock_goes_once_lvm_backed_up_the_vg(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, kernel: Kernel, tmp_path: Path) -> None:
    """Device-mapper: lvcreate prints ``created`` before it waits for udev to make the LV's device names, and
    writes the VG's backup after that (``lvcreate -vvvv`` in the VM tier): a ready LV needs neither, so the
    create answers at the line, but the lock lasts until the backup file is at the commit's seqno (the next LVM
    command, a NodeStage's activation say, waits for the device names)."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    backups = tmp_path / "backup"
    backups.mkdir()
    volume, _creating, ready = records(pool, "pvc-1")
    seen: List[Tuple[bool, bool]] = []  # (answered, the lock free)

    def answered() -> bool:
        last = pv.answers[-1]
        return last is not None and last.is_set()

    def udev_then_backup() -> None:
        seen.append((answered(), vg_lock_free(pv)))  # created: the device names not made yet
        time.sleep(0.05)
        seen.append((answered(), vg_lock_free(pv)))  # (udev still at work)
        (backups / VG).write_text(f'{VG} {{\n\tid = "x"\n\tseqno = {pv.seqno}\n')
        deadline = time.monotonic() + 10
        while not vg_lock_free(pv) and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append((answered(), vg_lock_free(pv)))
    install(script, monkeypatch, pv, [
        *dm_start_and_place(pv, str(backups)),
        create(lv_name(volume.id), ready, f"{path}:0-1"),
    ], after_output=udev_then_backup)
    assert pool.volume_ids() == []
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    assert seen == [(True, False), (True, False), (True, True)]


def test_a_creating_dm_lv_the_placer_makes_answers_only_once_the_lock_went(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A creating LV (a clone's, filled next through its device name, no LVM command first) placed with
    device-mapper: the create waits for the backup (udev done), not for the line, nor for the exit."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    backups = tmp_path / "backup"
    backups.mkdir()
    _volume, creating, _ready = records(pool, "pvc-1")
    name = lv_name(volume_id_for("pvc-1"))
    seen: List[Tuple[bool, bool]] = []

    def udev_then_backup() -> None:
        last = pv.answers[-1]
        seen.append((last is not None and last.is_set(), vg_lock_free(pv)))
        (backups / VG).write_text(f'{VG} {{\n\tid = "x"\n\tseqno = {pv.seqno}\n')
        deadline = time.monotonic() + 10
        while not (last is not None and last.is_set()) and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append((last is not None and last.is_set(), vg_lock_free(pv)))
    install(script, monkeypatch, pv, [
        lock_settings(pv, str(backups)), pvs_layout(path), pvs_segments(path, (0, 8, "")),
        create(name, creating, f"{path}:0-1"),
    ], after_output=udev_then_backup)
    made = pool._placer.create(name, 8 * MiB, creating, extent=EXTENT, zero_ends=False, active=True,
                               committed=lambda *_: None)
    assert made is not None and made.attr.active
    assert seen == [(False, False), (True, True)]


def test_dm_index_falls_back_to_lvs_when_the_kernel_cannot_tell(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    """No answer from device-mapper (a suspended device, say): the LV is read with lvs, as without an index."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    volume, _creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    row = dict(THIN["vol-normal"], lv_name=name, lv_path=f"/dev/{VG}/{name}", lv_tags=",".join(sorted(ready)),
               lv_attr="-wc-a-----", lv_size=str(8 * MiB), seg_pe_ranges=f"{path}:0-1", devices=f"{path}(0)",
               seg_size_pe="2")
    install(script, monkeypatch, pv, [
        pvs_layout(path), (lvs_all(True), 0, lvs_json(row), ""),
        ([*lvs_all(False)[:-1], f"{VG}/{name}"], 0, lvs_json(row), ""),
        remove(name),
    ])
    assert pool.volume_ids() == [volume.id]
    kernel[name] = None
    assert volumes.delete_volume(pool, volume.id)


def thin_commits_twice(monkeypatch: pytest.MonkeyPatch, pv: FakePv) -> None:
    """A thin LV's lvcreate and lvremove commit twice (the LV, then the thin pool's transaction): one more seqno
    after each, beside the one ``install`` moves (measured on lvm2 2.03.16)."""
    inner = lvm_command.run

    def run(argv: Any, **kwargs: Any) -> Any:
        result = inner(argv, **kwargs)
        if result.rc == 0 and ("--thinpool" in argv or "lvremove" in argv):
            pv.write_seqno(pv.seqno + 1)
        return result
    monkeypatch.setattr(lvm_command, "run", run)


def create_thin(pool: LvmThinPool, what: str) -> Tuple[str, Any]:
    ready = Volume(id=volume_id_for(what), name=what, size=8 * MiB, pool="lvmthin", created_at=1795580000.0,
                   state=READY)
    name = lv_name(ready.id)
    return name, (["lvcreate", "--yes", "--type", "thin", "--name", name, "--virtualsize", f"{8 * MiB}b",
                   "--thinpool", "pool0", *flags("--addtag", record_tags(pool, "volume", ready)), VG], 0,
                  f'  Logical volume "{name}" created.\n', "")


def test_thin_create_and_delete_are_one_command_each_while_the_pool_is_the_vgs_only_writer(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    """lvmthin: no look-up of an earlier attempt (the index says there is none), the over-provisioning check
    from the thin pool's use as one listing read it and the pool's own commands since changed it, one lvcreate;
    DeleteVolume lvremove alone.  Each makes two commits, which the index follows as the pool's own.  Someone
    else's commit: the LV is looked up and the thin pool's use listed again."""
    pool = LvmThinPool(VG, "pool0", PoolSettings(overprovision=100.0))
    path = str(pv.path)
    (one, create_one), (_two, create_two), (three, create_three) = (
        create_thin(pool, what) for what in ("thin-1", "thin-2", "thin-3"))
    install(script, monkeypatch, pv, [
        pvs_layout(path), (lvs_all(True), 0, lvs_json(), ""),
        (lvs_all(False), 0, lvs_json(*THIN.values()), ""), VGS,
        create_one, remove(one), create_two,
        missing(three), (lvs_all(False), 0, lvs_json(*THIN.values()), ""), create_three,  # after someone's commit
    ])
    thin_commits_twice(monkeypatch, pv)
    assert pool.volume_ids() == []
    virtual = 72 * MiB  # thin1, thin2, thinsnap1 in pool0 (16 MiB of data)
    assert volumes.ensure_volume(pool, "thin-1", 8 * MiB)[0].state == READY
    assert pool.available_bytes() == 1600 * MiB - virtual - 8 * MiB  # followed, not read
    kernel[one] = dm_status.DmState(True, 0)
    assert volumes.delete_volume(pool, volume_id_for("thin-1"))
    assert volumes.ensure_volume(pool, "thin-2", 8 * MiB)[1]
    assert pool.available_bytes() == 1600 * MiB - virtual - 8 * MiB
    pv.write_seqno(pv.seqno + 1)  # someone else commits
    assert volumes.ensure_volume(pool, "thin-3", 8 * MiB)[1]
    # each lvcreate and the lvremove answered at its line (both commits done), nothing else
    assert sum(answered is not None and answered.is_set() for answered in pv.answers) == 4
    assert sum(answered is not None for answered in pv.answers) == 4


def test_a_thin_command_beside_someone_elses_commit_is_not_followed(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seqno moved by three across a thin lvcreate (its two commits and someone else's): the index and the
    thin pool's use are read again, not followed."""
    pool = LvmThinPool(VG, "pool0", PoolSettings(overprovision=100.0))
    path = str(pv.path)
    name, create_one = create_thin(pool, "thin-1")
    pv.someone_commits_after.append(name)
    install(script, monkeypatch, pv, [
        pvs_layout(path), (lvs_all(True), 0, lvs_json(), ""), (lvs_all(False), 0, lvs_json(*THIN.values()), ""),
        VGS, create_one,
        (lvs_all(False), 0, lvs_json(*THIN.values()), ""),  # the pool's use: read again
    ])
    thin_commits_twice(monkeypatch, pv)
    assert pool.volume_ids() == []
    assert volumes.ensure_volume(pool, "thin-1", 8 * MiB)[1]
    assert not pool._index.valid()
    pool.available_bytes()


def test_a_placed_dm_lv_as_the_index_holds_it(script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch,
                                              kernel: Kernel) -> None:
    """What the index holds of a placed LV with device-mapper is what lvs reports: active, unopened, its range."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    volume, _creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    install(script, monkeypatch, pv, [
        *dm_start_and_place(pv), create(name, ready, f"{path}:0-1"),
    ])
    pool.volume_ids()
    volumes.ensure_volume(pool, "pvc-1", 8 * MiB)
    known, lv = pool._index.lookup(name)
    assert known and lv is not None
    assert lv.attr.raw == "-wc-a-----" and lv.path == f"/dev/{VG}/{name}" and lv.size == 8 * MiB
    assert [(r.device, r.first, r.last) for r in lv.seg_pe_ranges] == [(path, 0, 1)]
    assert lv.tags == tuple(sorted(ready))


def test_dm_activation_asks_the_kernel_first_and_reads_nothing_back(
        script: Any, monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    """NodeStage's activation with device-mapper: an LV the kernel maps already (LVM maps a new LV) needs no
    ``lvchange``; one it does not map gets ``lvchange -aey``, and the kernel's word that it is mapped now is
    enough, the path the one LVM reports (no ``lvs`` read-back); where the kernel cannot tell, ``lvs`` says."""
    name = "csi-" + "a" * 32
    lv = lvm.LogicalVolume(name=name, vg_name=VG, uuid="", size=8 * MiB, attr=lvm.LvAttr.parse("-wi-------"),
                           tags=(), pool_lv=None, origin=None, data_percent=None, metadata_percent=None,
                           path=f"/dev/{VG}/{name}", segments=())
    activator = DeviceMapperActivator(lvm_command.LvmSettings())
    activation = (["lvchange", "--activate", "ey", "--ignoreactivationskip", f"{VG}/{name}"], 0, "", "")
    mapped = row_like("vol-normal", name, [], lv_attr="-wi-a-----", lv_path=f"/dev/{VG}/{name}")
    runner = script([activation, activation, found(mapped)])
    kernel[name] = dm_status.DmState(True, 0)
    assert activator.activate(lv) == f"/dev/{VG}/{name}"  # nothing run
    assert runner.ran == []
    states = iter([dm_status.DmState(False, 0), dm_status.DmState(True, 0)])
    monkeypatch.setattr(dm_status, "state", lambda _name: next(states))
    assert activator.activate(lv) == f"/dev/{VG}/{name}"
    assert len(runner.ran) == 1  # lvchange alone
    monkeypatch.setattr(dm_status, "state", lambda _name: None)  # (no device-mapper control: it cannot tell)
    assert activator.activate(lv) == f"/dev/{VG}/{name}"
    assert len(runner.ran) == 3 and not runner.script  # lvchange, lvs


def test_an_lv_udev_still_reads_is_not_in_use_once_the_tool_answered_before_its_exit_has_ended(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    """Device-mapper: CreateVolume answers at lvcreate's line, while udev still reads the new LV (blkid: the
    kernel says it is open) and lvcreate waits for it. A DeleteVolume then is not refused as in use: it waits
    for the tools answered before their exit, and asks the kernel again (seen in the VM tier, lvmthin)."""
    pool = LvmPool(VG, PoolSettings(activation="dm", alloc="contiguous"))
    path = str(pv.path)
    volume, _creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    install(script, monkeypatch, pv, [
        *dm_start_and_place(pv),
        create(name, ready, f"{path}:0-1"),
        remove(name),
    ])
    assert pool.volume_ids() == []
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    kernel[name] = dm_status.DmState(True, 1)  # udev's blkid
    with Answer() as answered:  # a tool answered at its line, ending 0.3 s later: udev done then
        runner.run(["sh", "-c", "echo created; sleep 0.3"], answered=answered,
                   on_line=lambda _line: answered.set(),
                   ended=lambda: kernel.__setitem__(name, dm_status.DmState(True, 0)))
    assert volumes.delete_volume(pool, volume.id)  # (an LV open for good: InUse, the first test of this file)
