"""Loop activation: the pool places new LVs itself (lvm_placing), the exact LVM commands in their order.

A blank volume is one commit: under LVM's VG lock the ends of the chosen extents are zeroed on the PV, then
one ``lvcreate --nolocking`` (under ``timeout``, which keeps the lock) carries the ready record.  A file
stands in for the PV (this machine cannot make device nodes in a test): it carries an LVM2 label and
metadata area whose seqno each scripted commit moves, as LVM would (lvm_index reads it), and the lock
directory is the test's own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from lvm_testlib import lock_free
from test_lvm_pool_scripted import RECORDED, VG, VGS, fixed_clock, flags, found, record_tags, retag, row_like

from basalt_core import lvm_command, lvm_report, volumes
from basalt_core.lvm_pool import LvmPool, lv_name
from basalt_core.model import READY, Volume, volume_id_for
from basalt_core.pool_spec import PoolSettings
from basalt_core.runner import Answer
from basalt_core.sizes import MiB

__all__ = ["fixed_clock"]  # (the autouse fixture: records carry a fixed creation time)

EXTENT = 4 * MiB
COMMITS = ("lvcreate", "lvchange", "lvremove")


class FakePv:
    """A PV image: an LVM2 label and metadata area (what lvm_index reads) before its first extent at 1 MiB,
    old data (0xaa) on its 8 extents; each scripted commit moves the seqno by one."""

    def __init__(self, path: Path, lock_dir: Path) -> None:
        self.path = path
        self.lock_dir = lock_dir  # the VG lock's directory (LVM's locking_dir)
        self.someone_commits_after: List[str] = []
        self.answers: List[Optional[Answer]] = []  # each command's *answered* (runner.run), if any
        path.write_bytes(b"\0" * MiB + b"\xaa" * (8 * EXTENT))
        self.seqno = 0
        self.write_seqno(5)

    def write_seqno(self, seqno: int) -> None:
        self.seqno = seqno
        label = bytearray(512)
        label[0:8] = b"LABELONE"
        struct.pack_into("<I", label, 20, 32)  # the PV header's offset in the label sector
        struct.pack_into("<QQQQQQQQ", label, 72, MiB, 0, 0, 0, 4096, MiB - 4096, 0, 0)  # data, then metadata
        text = f'{VG} {{\nid = "x"\nseqno = {seqno}\n'.encode()
        header = bytearray(512)
        header[4:20] = b" LVM2 x[5A%r0N*>"
        struct.pack_into("<QQII", header, 40, 512, len(text), 0, 0)
        with open(self.path, "r+b") as handle:
            for offset, data in ((512, label), (4096, header), (4096 + 512, text)):
                handle.seek(offset)
                handle.write(data)

    def extent(self, first: int) -> bytes:
        return self.path.read_bytes()[MiB + first * EXTENT:MiB + (first + 1) * EXTENT]


@pytest.fixture
def pv(tmp_path: Path) -> FakePv:
    return FakePv(tmp_path / "pv", tmp_path / "lock")


def install(script: Any, monkeypatch: pytest.MonkeyPatch, pv: FakePv, calls: List[Any],
            after_output: Callable[[], None] = lambda: None) -> Any:
    """``script(calls)``, each successful commit moving the PV's seqno by one, as LVM does (and once more after
    a command *pv.someone_commits_after* names: someone else's commit right then); then its stdout lines go to
    the caller's *on_line* as the tool writes them, and *after_output* runs (the tool has not exited yet), then its
    *ended* (the exit); each call's *answered* goes to *pv.answers* (set: the real runner returns there, before
    the tool's exit)."""
    runner = script(calls)

    def run(argv: Any, on_line: Optional[Callable[[str], None]] = None, answered: Optional[Answer] = None,
            ended: Optional[Callable[[], None]] = None, **kwargs: Any) -> Any:
        try:
            return exits(argv, on_line, answered, **kwargs)
        finally:
            if ended is not None:  # the tool's exit
                ended()

    def exits(argv: Any, on_line: Optional[Callable[[str], None]], answered: Optional[Answer], **kwargs: Any) -> Any:
        pv.answers.append(answered)
        result = runner(argv, **kwargs)
        if result.rc == 0 and any(tool in argv for tool in COMMITS):
            pv.write_seqno(pv.seqno + 1)
        if pv.someone_commits_after and pv.someone_commits_after[0] in argv:
            pv.someone_commits_after.pop(0)
            pv.write_seqno(pv.seqno + 1)
        if on_line is not None:
            for line in result.stdout.splitlines(keepends=True):
                on_line(line)
            after_output()
        return result
    monkeypatch.setattr(lvm_command, "run", run)
    return runner


def lock_settings(pv: FakePv, backup_dir: str = "") -> Any:
    """LVM's locking settings: file locks guard the VG; a metadata backup in *backup_dir* (none without)."""
    return (["lvmconfig", "--typeconfig", "full", "global/locking_dir", "global/use_lvmlockd", "global/locking_type",
             "backup/backup", "backup/backup_dir"], 0,
            f'locking_dir="{pv.lock_dir}"\nuse_lvmlockd=0\nlocking_type=1\nbackup={int(bool(backup_dir))}\n'
            f'backup_dir="{backup_dir or "/etc/lvm/backup"}"\n', "")


def pvs_segments(pv: str, *segments: Any) -> Any:
    """``pvs --segments`` of the VG: (first, count, LV name or '' for free extents) per segment."""
    rows = [{"pv_name": pv, "pvseg_start": str(first), "pvseg_size": str(count), "lv_name": lv}
            for first, count, lv in segments]
    return (["pvs", "--segments", "--reportformat", "json", "--units", "b", "--nosuffix", "--options",
             ",".join(lvm_report.PVSEG_COLUMNS), "--select", f'vg_name="{VG}"'], 0,
            json.dumps({"report": [{"pvseg": rows}]}), "")


def pvs_layout(pv: str) -> Any:
    """The PVs and their data offsets, read once (by the placer; again by the loop activation)."""
    row = {"pv_name": pv, "vg_name": VG, "pv_size": str(33 * MiB), "pv_free": str(32 * MiB), "pe_start": str(MiB)}
    return (["pvs", "--reportformat", "json", "--units", "b", "--nosuffix", "--options",
             ",".join(lvm_report.PV_COLUMNS), "--select", f'vg_name="{VG}"'], 0,
            json.dumps({"report": [{"pv": [row]}]}), "")


def create(name: str, tags: List[str], place: str = "", rc: int = 0, stderr: str = "", locked: bool = True) -> Any:
    """lvcreate of an 8 MiB LV: placed (under the pool's lock: --nolocking, kept alive by timeout; or not
    *locked*: under LVM's own locking) or where LVM chooses; what it prints on success."""
    args = ["--yes", "--name", name, "--size", f"{8 * MiB}b", "--alloc", "contiguous", "--zero", "n",
            "--wipesignatures", "n", *flags("--addtag", tags), VG]
    if not place:
        argv = ["lvcreate", *args]
    elif locked:
        argv = ["timeout", "--signal=KILL", "120", "lvcreate", "--nolocking", *args, place]
    else:
        argv = ["lvcreate", *args, place]
    return (argv, rc, "" if rc else f'  Logical volume "{name}" created.\n', stderr)


def loop_row(name: str, tags: List[str], pv: str, first: int) -> Dict[str, str]:
    return row_like("vol-normal", name, tags, lv_attr="-wc-XX----", lv_size=str(8 * MiB), lv_path=f"/dev/{VG}/{name}",
                    segtype="linear", seg_start_pe="0", seg_size_pe="2", seg_pe_ranges=f"{pv}:{first}-{first + 1}",
                    devices=f"{pv}({first})")


def records(pool: LvmPool, name: str) -> Tuple[Volume, List[str], List[str]]:
    volume = Volume(id=volume_id_for(name), name=name, size=8 * MiB, pool="lvm", created_at=1795580000.0)
    return volume, record_tags(pool, "volume", volume), record_tags(pool, "volume", dataclasses.replace(
        volume, state=READY))


def blank_ends(data: bytes) -> bool:
    """An LV of 2 extents whose first and last MiB are zeroed, the rest old data."""
    return data[:MiB] == data[-MiB:] == bytes(MiB) and data[MiB:-MiB] == b"\xaa" * (2 * EXTENT - 2 * MiB)


def loop_pool() -> LvmPool:
    return LvmPool(VG, PoolSettings(activation="loop", alloc="contiguous"))


def test_a_blank_volume_is_one_placed_lvcreate_carrying_the_ready_record(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """CreateVolume: the settings, PVs and free extents read once per pool; then per volume, under the lock,
    the chosen extents' ends zeroed on the PV and ONE lvcreate there carrying the ready record: no lvchange,
    no read-back. DeleteVolume: lvs, lvremove; the extents are free again in the map (the seqno moved by
    exactly that commit), so the next create takes them without reading anything."""
    pool = loop_pool()
    path = str(pv.path)
    first, ready1 = records(pool, "pvc-1")[0], records(pool, "pvc-1")[2]
    ready2 = records(pool, "pvc-2")[2]
    one, two = lv_name(first.id), lv_name(volume_id_for("pvc-2"))
    install(script, monkeypatch, pv, [
        VGS,  # the extent size, once per pool object
        lock_settings(pv),  # LVM's locking settings: file locks guard the VG
        pvs_layout(path),  # the PVs (their seqno, their data offsets), once
        pvs_segments(path, (0, 8, "")),  # the free extents, once
        create(one, ready1, f"{path}:0-1"),
        create(two, ready2, f"{path}:2-3"),  # the map is the pool's own now: nothing read
        found(loop_row(one, ready1, path, 0)),  # DeleteVolume pvc-1: its record
        VGS, pvs_layout(path),  # the loop activation's layout, once (in use? sysfs: no loop device)
        (["lvremove", "--yes", f"{VG}/{one}"], 0, "", ""),
        create(one, ready1, f"{path}:0-1"),  # its extents are free again: the first fit
    ])
    volume, changed = volumes.ensure_volume(pool, "pvc-1", 8 * MiB)
    assert changed and volume.state == READY and volumes.ensure_volume(pool, "pvc-2", 8 * MiB)[0].state == READY
    assert blank_ends(pv.extent(0) + pv.extent(1)) and blank_ends(pv.extent(2) + pv.extent(3))
    assert pv.extent(4) == b"\xaa" * EXTENT  # never taken, never touched
    assert volumes.delete_volume(pool, first.id)
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    assert not (pv.lock_dir / f"V_{VG}").exists()


def test_a_commit_by_someone_else_before_the_lock_zeroes_nothing_and_lvm_places(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone commits between the read of the free extents and the lock (here: taking extents 0-1): the map
    is not the VG's state any more, so nothing is zeroed there; the map is read again and the volume made
    as where the lock cannot be held: a creating record on extents it places, its ends zeroed, then ready."""
    pool = loop_pool()
    path = str(pv.path)
    volume, creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    pv.someone_commits_after.append("--segments")
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv), pvs_layout(path),
        pvs_segments(path, (0, 8, "")),  # stale as soon as read
        pvs_segments(path, (0, 2, "theirs"), (2, 6, "")),  # read again (creating record, no zeroing)
        create(name, creating, f"{path}:2-3"),
        VGS, pvs_layout(path),  # the loop activation's layout: the ends zeroed where the LV lies
        retag(name, creating, ready),
    ])
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    assert pv.extent(0) + pv.extent(1) == b"\xaa" * (2 * EXTENT), "someone else's extents were zeroed"
    assert blank_ends(pv.extent(2) + pv.extent(3))


def test_no_space_or_an_existing_name_under_the_lock(script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """lvcreate refuses the placed range (NoSpace, e.g. the metadata area full): the map is forgotten and LVM
    chooses, as without placing (where it went is read back). A name that exists (an earlier attempt) gives
    the range back and is looked up: its creating record is completed."""
    pool = loop_pool()
    path = str(pv.path)
    volume, creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    no_space = (RECORDED / "err_lvcreate_no_space.stderr.txt").read_text()
    exists = (RECORDED / "err_lvcreate_exists.stderr.txt").read_text()
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv), pvs_layout(path), pvs_segments(path, (0, 8, "")),
        create(name, ready, f"{path}:0-1", rc=5, stderr=no_space),
        pvs_segments(path, (0, 8, "")),  # forgotten: read again, then placed as a creating record
        create(name, creating, f"{path}:0-1", rc=5, stderr=no_space),
        create(name, creating),  # LVM chooses
        found(loop_row(name, creating, path, 4)),  # so where it went is read back
        VGS, pvs_layout(path),
        retag(name, creating, ready),
    ])
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    assert blank_ends(pv.extent(4) + pv.extent(5))

    other, other_creating, other_ready = records(pool, "pvc-2")
    other_name = lv_name(other.id)
    install(script, monkeypatch, pv, [
        pvs_segments(path, (0, 4, ""), (4, 2, name), (6, 2, "")),  # read again: it was forgotten
        create(other_name, other_ready, f"{path}:0-1", rc=5, stderr=exists),
        found(loop_row(other_name, other_creating, path, 6)),  # the earlier attempt: completed
        retag(other_name, other_creating, other_ready),
    ])
    assert volumes.ensure_volume(pool, "pvc-2", 8 * MiB)[1]
    assert blank_ends(pv.extent(6) + pv.extent(7))


def test_with_lvmlockd_nothing_is_placed(script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """use_lvmlockd=1: the lock files may not be what guards the VG, so the pool takes no lock and places
    nothing: LVM chooses, the LV is read back, its ends zeroed, then ready (two commits)."""
    pool = loop_pool()
    path = str(pv.path)
    volume, creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    settings: List[Any] = list(lock_settings(pv))
    settings[2] = settings[2].replace("use_lvmlockd=0", "use_lvmlockd=1")
    install(script, monkeypatch, pv, [
        VGS, tuple(settings), create(name, creating), found(loop_row(name, creating, path, 0)),
        VGS, pvs_layout(path),  # the loop activation's layout: the ends zeroed where the LV lies
        pvs_layout(path),  # the PVs, whose seqno the index follows around the retag
        retag(name, creating, ready),
    ])
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    assert blank_ends(pv.extent(0) + pv.extent(1))


def test_while_another_create_holds_the_lock_lvm_places(script: Any, pv: FakePv,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another of the agent's creates holds the VG lock and the pool knows no map yet: this one does not queue
    behind it but runs the two commits where LVM chooses, under LVM's own locking, which lets both run at once."""
    pool = loop_pool()
    path = str(pv.path)
    volume, creating, ready = records(pool, "pvc-1")
    name = lv_name(volume.id)
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv), pvs_layout(path),
        create(name, creating), found(loop_row(name, creating, path, 0)),
        VGS, pvs_layout(path),  # the loop activation's layout: the ends zeroed where the LV lies
        retag(name, creating, ready),
    ])
    assert pool._placer.lock._threads.acquire(blocking=False)
    try:
        assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    finally:
        pool._placer.lock._threads.release()
    assert blank_ends(pv.extent(0) + pv.extent(1))


def vg_lock_free(pv: FakePv) -> bool:
    """Whether someone else (LVM) could take the VG's lock now."""
    return lock_free(pv.lock_dir / f"V_{VG}")


def answered(pv: FakePv) -> bool:
    """Whether the last command was answered for (the caller returns then, the tool's exit awaited aside)."""
    last = pv.answers[-1]
    return last is not None and last.is_set()


def test_the_lock_goes_once_lvcreate_says_created_not_at_its_exit(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """LVM keeps no backup: the pool lets the lock go as soon as lvcreate prints that it created the LV (its
    commit is done), while the tool still runs its teardown, and the create answers there; the pool's map and
    index followed the commit first (the next create reads nothing)."""
    pool = loop_pool()
    path = str(pv.path)
    ready1, ready2 = records(pool, "pvc-1")[2], records(pool, "pvc-2")[2]
    one, two = lv_name(volume_id_for("pvc-1")), lv_name(volume_id_for("pvc-2"))
    free_before_exit: List[bool] = []
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv), pvs_layout(path), pvs_segments(path, (0, 8, "")),
        create(one, ready1, f"{path}:0-1"),
        create(two, ready2, f"{path}:2-3"),
    ], after_output=lambda: free_before_exit.append(vg_lock_free(pv) and answered(pv)))
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    assert volumes.ensure_volume(pool, "pvc-2", 8 * MiB)[0].state == READY
    assert free_before_exit == [True, True]  # the lock free, and each create answered before lvcreate's exit


def test_with_backups_the_lock_goes_once_the_vg_backup_is_at_the_new_seqno(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LVM keeps a metadata backup (backup/backup=1): it writes it after printing "created", under the lock it
    believes it holds, so the create answers at the line but the lock lasts until the VG's backup file is at
    the seqno of that commit (a backup file replaced at an older one, as LVM repairs a stale backup when it
    reads, is not it), lvcreate still running."""
    pool = loop_pool()
    path = str(pv.path)
    backups = tmp_path / "backup"
    backups.mkdir()
    ready = records(pool, "pvc-1")[2]
    name = lv_name(volume_id_for("pvc-1"))
    seen: List[Tuple[bool, bool]] = []  # (answered, the lock free)

    def backup(seqno: int) -> None:  # as LVM writes it: a new file renamed over the old one
        (backups / f"{VG}.tmp").write_text(f'# Generated by LVM2\ncontents = "Text Format Volume Group"\n\n'
                                           f'{VG} {{\n\tid = "x"\n\tseqno = {seqno}\n')
        os.rename(backups / f"{VG}.tmp", backups / VG)

    def backed_up() -> None:
        seen.append((answered(pv), vg_lock_free(pv)))  # created, no backup yet
        backup(pv.seqno - 1)
        time.sleep(0.05)
        seen.append((answered(pv), vg_lock_free(pv)))  # the backup of the seqno before: still held
        backup(pv.seqno)
        deadline = time.monotonic() + 10
        while not vg_lock_free(pv) and time.monotonic() < deadline:
            time.sleep(0.001)
        seen.append((answered(pv), vg_lock_free(pv)))  # released before the exit
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv, str(backups)), pvs_layout(path), pvs_segments(path, (0, 8, "")),
        create(name, ready, f"{path}:0-1"),
    ], after_output=backed_up)
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[0].state == READY
    assert seen == [(True, False), (True, False), (True, True)]


def test_beside_a_create_holding_the_lock_a_create_places_on_the_known_map(
        script: Any, pv: FakePv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another of the agent's creates holds the VG lock: this one does not queue behind it but places its LV
    on the map as the pool knows it, under LVM's own locking (LVM refuses extents in use), as a creating
    record; its ends are zeroed where the pool put it (nothing read back), then it is ready. Its commit the only
    one meanwhile, the map stays the VG's state: the next create, under the lock, reads nothing."""
    pool = loop_pool()
    path = str(pv.path)
    ready1 = records(pool, "pvc-1")[2]
    creating2, ready2 = records(pool, "pvc-2")[1:]
    ready3 = records(pool, "pvc-3")[2]
    one, two, three = (lv_name(volume_id_for(f"pvc-{i}")) for i in (1, 2, 3))
    install(script, monkeypatch, pv, [
        VGS, lock_settings(pv), pvs_layout(path), pvs_segments(path, (0, 8, "")),
        create(one, ready1, f"{path}:0-1"),
        create(two, creating2, f"{path}:2-3", locked=False),
        VGS, pvs_layout(path),  # the loop activation's layout: the ends zeroed where the LV lies
        retag(two, creating2, ready2),
        create(three, ready3, f"{path}:4-5"),
    ])
    assert volumes.ensure_volume(pool, "pvc-1", 8 * MiB)[1]
    assert pool._placer.lock._threads.acquire(blocking=False)
    try:
        assert volumes.ensure_volume(pool, "pvc-2", 8 * MiB)[0].state == READY
    finally:
        pool._placer.lock._threads.release()
    # the lvcreate beside answered at its commit line (LVM's own lock, held by the tool for its backup, orders
    # what comes next); the reads and the retag that follow wait for their exit
    assert [a is not None and a.is_set() for a in pv.answers[-4:]] == [True, False, False, False]
    assert blank_ends(pv.extent(2) + pv.extent(3))
    assert volumes.ensure_volume(pool, "pvc-3", 8 * MiB)[0].state == READY
