"""The lvm pool on real LVM2: loop-device PV, private config, activation disabled, loop activation.

What this machine cannot run (thin pools, COW snapshots, device-mapper
activation) is covered in test_lvm_pool_scripted.py against recorded output
and for real in the VM tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from basalt_core import blkid, losetup, lvm, lvm_index, lvm_lock, runner, volumes
from basalt_core.errors import Conflict, InUse, NoSpace, Precondition
from basalt_core.lvm_extents import placed_lv
from basalt_core.lvm_pool import LvmPool, lv_name
from basalt_core.model import CREATING, SOURCE_SNAPSHOT, SOURCE_VOLUME, ContentSource
from basalt_core.pool_spec import PoolSettings
from basalt_core.sizes import MiB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop devices and LVM")


class Crash(Exception):
    pass


@pytest.fixture
def vg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    image = tmp_path / "pv.img"
    with open(image, "wb") as handle:
        handle.truncate(256 * MiB)
    pv = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                        text=True).stdout.strip()
    conf = tmp_path / "lvm"
    conf.mkdir()
    (conf / "lvm.conf").write_text(lvm.isolated_config([pv]))
    monkeypatch.setenv("LVM_SYSTEM_DIR", str(conf))  # the runner passes the environment on
    name = "basalt-ut-" + uuid.uuid4().hex[:8]
    try:
        lvm.create_pv(pv)
        lvm.create_vg(name, [pv])
        yield name, pv
    finally:
        for device in losetup.list_devices():
            if device.backing_file == pv:
                losetup.detach(device.device)
        subprocess.run(["vgremove", "-ff", name], capture_output=True, env={**os.environ})
        subprocess.run(["pvremove", "-ff", "-y", pv], capture_output=True, env={**os.environ})
        losetup.detach(pv)


def pool_of(vg: Any, **options: Any) -> LvmPool:
    return LvmPool(vg[0], PoolSettings(activation="loop", alloc="contiguous", **options))


def read_lv(vg: Any, pool: LvmPool, object_id: str, offset: int, length: int) -> bytes:
    found = lvm.logical_volume(vg[0], lv_name(object_id))
    assert found is not None
    where = lvm.linear_location(found, lvm.physical_volumes(vg[0]), lvm.volume_group(vg[0]).extent_size)
    with open(vg[1], "rb") as pv:
        pv.seek(where.offset + offset)
        return pv.read(length)


def write_through_device(pool: LvmPool, volume: Any, offset: int, data: bytes) -> None:
    device = pool.attach(volume)
    try:
        with open(device, "r+b", buffering=0) as handle:
            handle.seek(offset)
            handle.write(data)
            os.fsync(handle.fileno())
    finally:
        pool.detach(volume)


def test_records_live_in_tags_and_survive_a_new_pool_object(vg: Any) -> None:
    volume, changed = volumes.ensure_volume(pool_of(vg), "pvc-ünï✓ " + "x" * 100, 8 * MiB,
                                            parameters={"csi.storage.k8s.io/pvc/name": "data"})
    assert changed
    found = lvm.logical_volume(vg[0], lv_name(volume.id))
    assert found is not None and lvm.MANAGED_TAG in found.tags and "basalt.state=ready" in found.tags
    again = volumes.find_volume_by_name(pool_of(vg), "pvc-ünï✓ " + "x" * 100)
    assert again is not None and (again.id, again.size, again.parameters) == (
        volume.id, 8 * MiB, {"csi.storage.k8s.io/pvc/name": "data"})
    assert volumes.ensure_volume(pool_of(vg), "pvc-ünï✓ " + "x" * 100, 8 * MiB,
                                 parameters={"csi.storage.k8s.io/pvc/name": "data"})[1] is False
    with pytest.raises(Conflict):
        volumes.ensure_volume(pool_of(vg), "pvc-ünï✓ " + "x" * 100, 16 * MiB)


def test_new_volumes_read_blank_even_over_old_data(vg: Any) -> None:
    pool = pool_of(vg)
    first, _ = volumes.ensure_volume(pool, "first", 4 * MiB)
    write_through_device(pool, first, 0, b"\xaa" * MiB)
    write_through_device(pool, first, 3 * MiB, b"\xbb" * MiB)
    volumes.delete_volume(pool, first.id)
    second, _ = volumes.ensure_volume(pool, "second", 4 * MiB)  # same extents, reused
    assert read_lv(vg, pool, second.id, 0, MiB) == b"\0" * MiB
    assert read_lv(vg, pool, second.id, 3 * MiB, MiB) == b"\0" * MiB


def test_new_grown_and_restored_volumes_stay_formattable_over_old_data(vg: Any) -> None:
    """The never-reformat rule reads both ends: every volume the pool hands out must read blank there."""
    pool = pool_of(vg)
    old, _ = volumes.ensure_volume(pool, "old", 64 * MiB)
    write_through_device(pool, old, 0, b"\xaa" * (64 * MiB))
    volumes.delete_volume(pool, old.id)
    fresh, _ = volumes.ensure_volume(pool, "fresh", 4 * MiB)
    grown, _ = volumes.ensure_volume(pool, "grown", 4 * MiB)
    volumes.expand_volume(pool, grown.id, 12 * MiB)  # onto old extents
    snap, _ = volumes.ensure_snapshot(pool, "snap", fresh.id)
    restored, _ = volumes.ensure_volume(pool, "restored", 8 * MiB, source=ContentSource(SOURCE_SNAPSHOT, snap.id))
    for volume in (fresh, grown, restored):
        device = pool.attach(volume)
        try:
            found = blkid.examine(device)
            assert found.blank, f"{volume.name}: {found.describe()}"
        finally:
            pool.detach(volume)
    assert read_lv(vg, pool, restored.id, 4 * MiB, MiB) == b"\xaa" * MiB  # the middle is not rewritten


def test_snapshot_restore_and_clone_copy_the_bytes(vg: Any) -> None:
    pool = pool_of(vg)
    origin, _ = volumes.ensure_volume(pool, "origin", 4 * MiB)
    write_through_device(pool, origin, MiB, b"basalt")
    snap, _ = volumes.ensure_snapshot(pool, "snap", origin.id)
    write_through_device(pool, origin, MiB, b"CHANGE")
    restored, _ = volumes.ensure_volume(pool, "restored", 8 * MiB, source=ContentSource(SOURCE_SNAPSHOT, snap.id))
    clone, _ = volumes.ensure_volume(pool, "clone", 4 * MiB, source=ContentSource(SOURCE_VOLUME, origin.id))
    assert read_lv(vg, pool, restored.id, MiB, 6) == b"basalt"
    assert read_lv(vg, pool, clone.id, MiB, 6) == b"CHANGE"
    assert restored.size == 8 * MiB and snap.copy_method == "copy"


def test_snapshot_of_a_volume_in_use_needs_device_mapper(vg: Any) -> None:
    pool = pool_of(vg)
    origin, _ = volumes.ensure_volume(pool, "busy", 4 * MiB)
    pool.attach(origin)
    try:
        with pytest.raises(Precondition, match="dm_snapshot"):
            volumes.ensure_snapshot(pool, "snap", origin.id)
        with pytest.raises(InUse, match="in use as /dev/loop"):
            volumes.delete_volume(pool, origin.id)
    finally:
        pool.detach(origin)
    assert [s.id for s in pool.all_snapshots()] == []  # nothing claimed for the refused snapshot


def test_attached_volume_grows_in_place(vg: Any) -> None:
    pool = pool_of(vg)
    volume, _ = volumes.ensure_volume(pool, "grow", 4 * MiB)
    device = pool.attach(volume)
    try:
        volumes.expand_volume(pool, volume.id, 12 * MiB)
        pool.refresh(volume)
        with open(device, "rb") as handle:
            assert handle.seek(0, os.SEEK_END) == 12 * MiB
    finally:
        pool.detach(volume)


def test_crash_after_lvcreate_is_completed_by_retry_or_cleaned(vg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the pool cannot hold LVM's VG lock (lvmlockd), a blank volume takes two commits: a creating record,
    then ready once its ends are zeroed. A crash between them is completed by the retry or cleaned up."""
    pool = pool_of(vg)
    monkeypatch.setattr(pool._placer.lock, "_usable", False)  # as lvmconfig says with use_lvmlockd=1

    def crash(*_: Any) -> None:
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(pool, "provision_volume", crash)
        with pytest.raises(Crash):
            volumes.ensure_volume(pool, "retried", 4 * MiB)
        with pytest.raises(Crash):
            volumes.ensure_volume(pool, "abandoned", 4 * MiB)
    records = {v.name: v for v in pool.all_volumes()}
    assert records["retried"].state == records["abandoned"].state == CREATING
    assert "basalt.state=creating" in lvm.logical_volume(vg[0], lv_name(records["abandoned"].id)).tags  # type: ignore[union-attr]
    assert volumes.ensure_volume(pool, "retried", 4 * MiB)[1] is True
    created = records["abandoned"].created_at
    assert volumes.clean_up(pool, 600, now=created + 10) == []
    assert volumes.clean_up(pool, 600, now=created + 601) == [records["abandoned"].id]
    assert lvm.logical_volume(vg[0], lv_name(records["abandoned"].id)) is None
    assert [v.name for v in volumes.list_volumes(pool)] == ["retried"]


def test_foreign_lvs_are_never_listed_counted_or_touched(vg: Any) -> None:
    lvm.create_linear(vg[0], "database", 8 * MiB, zero=False)
    pool = pool_of(vg)
    volumes.ensure_volume(pool, "ours", 4 * MiB)
    assert [v.name for v in volumes.list_volumes(pool)] == ["ours"]
    assert pool.provisioned_bytes() == 4 * MiB
    volumes.clean_up(pool, 0)
    assert lvm.logical_volume(vg[0], "database") is not None


def test_no_space_is_reported_before_anything_changes(vg: Any) -> None:
    pool = pool_of(vg)
    with pytest.raises(NoSpace):
        volumes.ensure_volume(pool, "huge", 1024 * MiB)
    assert pool.all_volumes() == []


def lvm_tools_run(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """From now on, the name of each LVM tool the core runs (through lvm_command.run), in order."""
    from basalt_core import lvm_command
    ran: List[str] = []
    real = lvm_command.run

    def counting(argv: Any, **kwargs: Any) -> Any:
        ran.append(argv[0])
        return real(argv, **kwargs)
    monkeypatch.setattr(lvm_command, "run", counting)
    return ran


def test_the_pool_answers_from_its_own_index_until_someone_else_commits(vg: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a full listing (start-up, the periodic clean-up) the pool knows its LVs while the VG's seqno,
    read off the PV, moves only by its own commits: DeleteVolume is one lvremove, CreateVolume one lvcreate.
    A commit by anyone else (here the lvm tools run by hand) makes it read LVM again."""
    pool = pool_of(vg)
    first, second = (volumes.ensure_volume(pool, name, 8 * MiB)[0] for name in ("first", "second"))
    pool.all_volumes()
    assert pool.attached_device(first) is None  # (the loop activation reads the PVs' offsets once)
    ran = lvm_tools_run(monkeypatch)
    assert volumes.delete_volume(pool, first.id)
    third = volumes.ensure_volume(pool, "third", 8 * MiB)[0]
    assert ran == ["lvremove", "timeout"]  # lvcreate, under the pool's VG lock (lvm_placing)
    assert volumes.get_volume(pool, third.id).state == "ready" and ran[3:] == []  # from the index too
    listed = lvm.logical_volume(vg[0], lv_name(third.id))  # what the index holds is what lvs reports
    assert listed is not None and dataclasses.replace(listed, uuid="") == placed_lv(
        vg[0], listed.name, listed.seg_pe_ranges[0], lvm.volume_group(vg[0]).extent_size, listed.tags, "contiguous")

    subprocess.run(["lvchange", "--addtag", "outside", f"{vg[0]}/{lv_name(second.id)}"], check=True,
                   capture_output=True)
    del ran[:]
    assert lvm.logical_volume(vg[0], lv_name(second.id)) is not None and ran == ["lvs"]  # (by hand)
    del ran[:]
    assert volumes.delete_volume(pool, second.id)
    assert ran == ["lvs", "lvremove"], "the outside commit made the pool read LVM again"
    pool.all_volumes()
    subprocess.run(["lvremove", "--yes", f"{vg[0]}/{lv_name(third.id)}"], check=True, capture_output=True)
    assert volumes.delete_volume(pool, third.id) is False  # gone behind its back: not answered from the index
    monkeypatch.setattr(lvm_index, "RELOAD_INTERVAL", 0.0)  # (1 s: not a full listing per look-up under churn)
    del ran[:]
    assert volumes.delete_volume(pool, third.id) is False and ran == ["lvs"]  # read all again: valid again
    assert volumes.delete_volume(pool, third.id) is False and ran == ["lvs"]  # answered from the index


def test_listings_come_from_the_index_while_the_pool_is_the_only_writer(vg: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ListVolumes, GetCapacity, the metrics and the clean-up list all of the pool's LVs: once the index holds
    them, each listing reads LVM again only after someone else's commit (an lvs is 2 s at 10,000 LVs)."""
    pool = pool_of(vg)
    made = [volumes.ensure_volume(pool, name, 4 * MiB)[0] for name in ("one", "two")]
    listed = pool.all_volumes()
    assert pool.attached_device(made[0]) is None  # (the loop activation reads the PVs' offsets once)
    ran = lvm_tools_run(monkeypatch)
    assert pool.all_volumes() == listed and ran == []
    assert pool.volume_ids() == sorted(v.id for v in made) and pool.provisioned_bytes() == 8 * MiB and ran == []
    volumes.delete_volume(pool, made[0].id)
    assert [v.name for v in volumes.list_volumes(pool)] == ["two"] and ran == ["lvremove"]
    subprocess.run(["lvchange", "--addtag", "outside", f"{vg[0]}/{lv_name(made[1].id)}"], check=True,
                   capture_output=True)
    del ran[:]
    assert [v.name for v in pool.all_volumes()] == ["two"] and ran == ["lvs"]  # someone else committed
    assert [v.name for v in pool.all_volumes()] == ["two"] and ran == ["lvs"]  # and the index holds it again


def test_a_blank_volume_is_one_commit_its_ends_zeroed_foreign_data_intact(
        vg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CreateVolume (loop activation): under LVM's VG lock, the ends of the extents the pool chose are zeroed on
    the PV, then one lvcreate --nolocking makes the LV there carrying the ready record. An LV of someone else's
    right after it keeps its data; the lock file is gone afterwards (unlinked on release, as LVM does)."""
    from basalt_core import lvm_command
    pool = pool_of(vg)
    old, _ = volumes.ensure_volume(pool, "old", 8 * MiB)
    write_through_device(pool, old, 0, b"\xaa" * (8 * MiB))
    lvm.create_linear(vg[0], "database", 4 * MiB, alloc="contiguous", zero=False)  # right after "old"
    found = lvm.logical_volume(vg[0], "database")
    assert found is not None
    where = lvm.linear_location(found, lvm.physical_volumes(vg[0]), lvm.volume_group(vg[0]).extent_size)
    with open(vg[1], "r+b") as pv:
        pv.seek(where.offset)
        pv.write(b"\xdb" * (4 * MiB))
    volumes.delete_volume(pool, old.id)
    ran = []
    real = lvm_command.run

    def counting(argv: Any, **kwargs: Any) -> Any:
        ran.append(argv)
        return real(argv, **kwargs)
    monkeypatch.setattr(lvm_command, "run", counting)
    fresh, changed = volumes.ensure_volume(pool, "fresh", 8 * MiB)
    assert changed and fresh.state == "ready"
    lvcreates = [argv for argv in ran if "lvcreate" in argv]
    assert len(lvcreates) == 1 and [argv for argv in ran if "lvchange" in argv] == []
    assert lvcreates[0][:4] == ["timeout", "--signal=KILL", "120", "lvcreate"] and "--nolocking" in lvcreates[0]
    assert "basalt.state=ready" in lvcreates[0]
    listed = lvm.logical_volume(vg[0], lv_name(fresh.id))
    assert listed is not None and "basalt.state=ready" in listed.tags
    assert listed.seg_pe_ranges == old_ranges(vg, listed)  # on the old volume's extents: its ends were old data
    assert read_lv(vg, pool, fresh.id, 0, MiB) == read_lv(vg, pool, fresh.id, 7 * MiB, MiB) == bytes(MiB)
    assert read_lv(vg, pool, fresh.id, MiB, 6 * MiB) == b"\xaa" * (6 * MiB)  # (only the ends are zeroed)
    with open(vg[1], "rb") as device:
        device.seek(where.offset)
        assert device.read(4 * MiB) == b"\xdb" * (4 * MiB)
    assert not os.path.exists(os.path.join(lvm_lock.DEFAULT_LOCKING_DIR, f"V_{vg[0]}"))


def old_ranges(vg: Any, listed: Any) -> Any:
    """The extents the first LV of the VG took: 0 to its size (what the pool's first fit chose again)."""
    count = listed.size // lvm.volume_group(vg[0]).extent_size
    return (lvm.PeRange(vg[1], 0, count - 1),)


def test_while_the_pool_holds_the_vg_lock_lvm_waits(vg: Any) -> None:
    """The lock is LVM's own: a plain lvcreate and an lvs wait until the pool releases it, then run."""
    pool = pool_of(vg)
    with pool._placer.lock.held():
        waiting = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for argv in (
            ["lvcreate", "-an", "-Zn", "-Wn", "-y", "-L", "4m", "-n", "waits", vg[0]], ["lvs", vg[0]])]
        time.sleep(1.0)
        assert [proc.poll() for proc in waiting] == [None, None], "LVM did not wait for the pool's lock"
    assert [proc.wait(60) for proc in waiting] == [0, 0]
    assert lvm.logical_volume(vg[0], "waits") is not None


def test_the_lock_lasts_while_its_command_runs_even_when_its_holder_is_killed(vg: Any, tmp_path: Path) -> None:
    """The command run under the pool's lock keeps it (through timeout, which inherits its descriptor): the
    holder SIGKILLed mid-command, LVM still waits until the command ends."""
    tools = tmp_path / "bin"
    tools.mkdir()
    slow = tools / "lvcreate"  # stands in for an lvcreate that is slow to commit
    started = tmp_path / "started"
    slow.write_text(f"#!/bin/sh\n: > {started}\nsleep 3\n")
    slow.chmod(0o755)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom basalt_core import lvm_command, lvm_lock\n"
        "lock = lvm_lock.VgLock(sys.argv[1], lvm_command.DEFAULT_SETTINGS)\n"
        "with lock.held() as fd:\n"
        "    print('held', flush=True)\n"
        "    lvm_command.run_lvm(lock.settings, 'lvcreate', [], what='slow', timeout=60, vg_lock=fd)\n"), vg[0]],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"})
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    deadline = time.monotonic() + 30
    while not started.exists():  # the slow command runs
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    holder.kill()
    holder.wait(10)
    before = time.monotonic()
    subprocess.run(["lvs", vg[0]], check=True, capture_output=True, timeout=60)
    assert time.monotonic() - before > 1.0, "lvs ran while the command the lock was held for still ran"


def test_concurrent_creates_each_get_blank_extents_of_their_own(vg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creates at once: one holds the VG lock (one commit), the others do not queue behind it and run the two
    commits under LVM's own locking, placed on the map as the pool knows it. Every volume is ready, on extents
    of its own, blank at both ends, though every extent held old data."""
    from basalt_core import lvm_command
    pool = pool_of(vg)
    old, _ = volumes.ensure_volume(pool, "old", 200 * MiB)
    write_through_device(pool, old, 0, b"\xaa" * (200 * MiB))
    volumes.delete_volume(pool, old.id)
    ran: List[str] = []
    real = lvm_command.run

    def counting(argv: Any, **kwargs: Any) -> Any:
        ran.append(argv[0])  # (list.append: atomic)
        return real(argv, **kwargs)
    monkeypatch.setattr(lvm_command, "run", counting)
    made: List[Any] = []
    errors: List[BaseException] = []

    def create(name: str) -> None:
        try:
            made.append(volumes.ensure_volume(pool, name, 8 * MiB)[0])
        except BaseException as error:  # reported below
            errors.append(error)
    threads = [threading.Thread(target=create, args=(f"burst-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(made) == 6
    ranges = []
    for volume in made:
        listed = lvm.logical_volume(vg[0], lv_name(volume.id))
        assert listed is not None and "basalt.state=ready" in listed.tags
        ranges += [(r.first, r.last) for r in listed.seg_pe_ranges]
        assert read_lv(vg, pool, volume.id, 0, MiB) == read_lv(vg, pool, volume.id, 7 * MiB, MiB) == bytes(MiB)
    assert len(ranges) == 6 and all(a[1] < b[0] for a, b in zip(sorted(ranges), sorted(ranges)[1:]))
    assert sorted(v.name for v in volumes.list_volumes(pool)) == sorted(f"burst-{i}" for i in range(6))
    # one lvcreate each (placed under the lock, or where LVM chose); a retag for each one made creating
    assert ran.count("lvcreate") + ran.count("timeout") == 6 and ran.count("lvcreate") <= ran.count("lvchange") <= 6


def _running_children() -> List[str]:
    """The names of this process's children that have not exited (zombies left out)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # a thread that ended since the listing (the holds' own threads do)
            continue
        for pid in children:
            with contextlib.suppress(FileNotFoundError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    names.append(stat.split("(", 1)[1].rsplit(")", 1)[0])
    return names


def test_the_lock_goes_once_lvcreate_committed_and_backed_up_before_it_exits(
        vg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real lvcreate, LVM's metadata backup on: the create answers at lvcreate's line, and the pool's hold of the
    VG lock ends once the commit is on the PV and LVM replaced the VG's backup file with that seqno's, while the
    lvcreate still runs (its teardown; here made 1 s longer, so that a loaded host cannot let it end first)."""
    conf = Path(os.environ["LVM_SYSTEM_DIR"]) / "lvm.conf"
    backups = tmp_path / "backup"
    conf.write_text(conf.read_text().replace("backup = 0 archive = 0",
                                             f'backup = 1 archive = 0 backup_dir = "{backups}"'))
    pool = pool_of(vg)
    seen: List[Any] = []
    real_end = lvm_lock.VgLock._end

    def end(self: lvm_lock.VgLock, hold: Any) -> None:
        if self._hold is hold:
            text = (backups / vg[0]).read_text()
            backed_up = int(text.split("seqno = ", 1)[1].split()[0])
            seen.append((_running_children(), backed_up, lvm_index.vg_seqno([vg[1]], vg[0])))
        real_end(self, hold)
    monkeypatch.setattr(lvm_lock.VgLock, "_end", end)
    volumes.ensure_volume(pool, "early-0", 8 * MiB)  # the first reads the map (one hold finds it stale)
    base = lvm_index.vg_seqno([vg[1]], vg[0])
    assert base is not None
    seen.clear()
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "lvcreate").write_text(f'#!/bin/sh\n{shutil.which("lvcreate")} "$@"\nrc=$?\nsleep 1\nexit $rc\n')
    (tools / "lvcreate").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    for name in ("early-1", "early-2"):
        volume, changed = volumes.ensure_volume(pool, name, 8 * MiB)
        assert changed and volume.state == "ready"
        assert _running_children()  # answered at its line, lvcreate still running
    assert runner.settle(30)  # (the holds end on their own meanwhile)
    first: Dict[Any, Any] = {}  # the first release at each seqno: the one after the commit that made it
    for running, backed_up, seqno in seen:  # (a hold that found the map stale releases at the seqno it found)
        first.setdefault(seqno, (running, backed_up))
    assert sorted(seqno for seqno in first if seqno != base) == [base + 1, base + 2]  # one commit each
    for seqno in (base + 1, base + 2):
        running, backed_up = first[seqno]
        assert "timeout" in running, "the lock was held until lvcreate exited"
        assert backed_up == seqno, "the lock went before LVM wrote the VG's backup"
