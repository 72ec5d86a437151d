"""lvm_lock: LVM's file lock on a VG, taken by LVM's own protocol (lib/misc/lvm-flock.c)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest
from lvm_testlib import lock_free

from basalt_core import lvm_lock
from basalt_core.errors import CommandFailed, InvalidRequest
from basalt_core.lvm_command import LvmSettings
from basalt_core.runner import Answer

SETTINGS = ["lvmconfig", "--typeconfig", "full", "global/locking_dir", "global/use_lvmlockd", "global/locking_type",
            "backup/backup", "backup/backup_dir"]


def configured(script: Any, tmp_path: Path, lvmlockd: str = "0", backup: str = "0") -> lvm_lock.VgLock:
    script([(SETTINGS, 0, f'locking_dir="{tmp_path}/lock"\nuse_lvmlockd={lvmlockd}\nlocking_type=1\n'
             f'backup={backup}\nbackup_dir="{tmp_path}/backup"\n', "")])
    return lvm_lock.VgLock("vg0", LvmSettings())


def test_the_vg_lock_is_taken_as_lvm_takes_it_and_unlinked_on_release(script: Any, tmp_path: Path) -> None:
    lock = configured(script, tmp_path)
    path = tmp_path / "lock" / "V_vg0"
    with lock.held() as fd:
        assert os.fstat(fd).st_ino == path.stat().st_ino
        other = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):  # LVM's shared (read) lock must wait
            fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(other)
        assert not (tmp_path / "lock" / "V_vg0:aux").exists()  # the writer's aux lock: dropped once it holds
    assert not path.exists()


def test_a_lock_file_its_holder_unlinked_meanwhile_is_taken_again(script: Any, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """LVM unlinks the file when it releases it: a lock got on the unlinked file protects nothing."""
    lock = configured(script, tmp_path)
    checks = []
    real = lvm_lock._same_file

    def same_file(path: str, fd: int) -> bool:
        checks.append((os.path.basename(path), real(path, fd)))
        return checks[-1][1]
    monkeypatch.setattr(lvm_lock, "_same_file", same_file)
    (tmp_path / "lock").mkdir()
    path = tmp_path / "lock" / "V_vg0"
    holder = os.open(path, os.O_CREAT | os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    got = []

    def take() -> None:
        with lock.held() as fd:
            got.append((os.fstat(fd).st_ino, path.stat().st_ino))
    waiter = threading.Thread(target=take)
    waiter.start()
    time.sleep(0.2)
    assert got == []
    os.unlink(path)  # released as LVM releases: unlink, then close
    os.close(holder)
    waiter.join(10)
    assert got and got[0][0] == got[0][1]
    assert checks[:3] == [("V_vg0:aux", True), ("V_vg0", False), ("V_vg0", True)]  # the unlinked one, then anew


def test_a_lock_kept_too_long_fails_like_a_command_timing_out(script: Any, tmp_path: Path) -> None:
    lock = configured(script, tmp_path)
    (tmp_path / "lock").mkdir()
    holder = os.open(tmp_path / "lock" / "V_vg0", os.O_CREAT | os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    with pytest.raises(CommandFailed, match="kept the VG locked"):
        with lock.held(wait=0.2):
            pass
    os.close(holder)
    assert not (tmp_path / "lock" / "V_vg0:aux").exists()


def test_with_lvmlockd_the_files_guard_nothing(script: Any, tmp_path: Path) -> None:
    lock = configured(script, tmp_path, lvmlockd="1")
    assert not lock.usable and not lock.usable  # read once
    with pytest.raises(InvalidRequest):
        with lock.held():
            pass


def busy(lock: lvm_lock.VgLock) -> bool:
    """Whether another of the agent's threads would find the lock held now (Busy, or a hold handed off that it
    waited for in vain)."""
    try:
        with lock.held(wait=0.05, queue=False):
            return False
    except (lvm_lock.Busy, CommandFailed):
        return True


def test_a_thread_finds_a_hold_busy_but_waits_for_one_handed_off_to_its_command(
        script: Any, tmp_path: Path) -> None:
    lock = configured(script, tmp_path)
    got: List[str] = []
    with lock.held() as fd:
        with pytest.raises(lvm_lock.Busy):
            with lock.held(queue=False):
                pass
        exited = lock.at_exit(fd)
        lock.hand_off(fd, None)

        def take() -> None:
            with lock.held(queue=False):
                got.append("held")
        waiting = threading.Thread(target=take)
        waiting.start()
        time.sleep(0.05)
        assert got == []
    time.sleep(0.05)
    assert got == []  # the block is over, the hold is the command's
    exited()
    waiting.join(10)
    assert got == ["held"]


def test_a_hold_handed_off_without_backups_ends_at_once_unless_the_seqno_is_unknown(
        script: Any, tmp_path: Path) -> None:
    """No backup kept: hand_off ends the hold at once (unlinked, unlocked on the description a command's
    ``timeout`` shares: here a dup; the next holder let in); with the commit's seqno unknown the hold outlives
    its block until the command's exit (``at_exit``), and only then."""
    lock = configured(script, tmp_path)
    path = tmp_path / "lock" / "V_vg0"
    with lock.held() as fd:
        kept = os.dup(fd)  # the command's copy
        lock.hand_off(fd, 7)
        assert not path.exists() or os.stat(path).st_ino != os.fstat(kept).st_ino
        assert lock_free(path)
        assert not busy(lock)
    os.close(kept)
    with lock.held() as fd:
        kept = os.dup(fd)
        exited = lock.at_exit(fd)
        lock.hand_off(fd, None)
    assert not lock_free(path) and busy(lock)  # its block is over, the hold is the command's
    exited()
    assert lock_free(path) and not busy(lock)
    exited()  # once
    os.close(kept)


def test_a_hold_not_handed_off_ends_with_its_block_whatever_the_command_says_at_its_exit(
        script: Any, tmp_path: Path) -> None:
    lock = configured(script, tmp_path)
    path = tmp_path / "lock" / "V_vg0"
    with lock.held() as fd:
        exited = lock.at_exit(fd)
        exited()  # the command ended before any line: the hold stays the block's
        assert not lock_free(path)
    assert lock_free(path) and not busy(lock)
    with pytest.raises(InvalidRequest):
        lock.at_exit(fd)


def test_device_mapper_without_backups_keeps_the_hold_until_the_commands_exit(script: Any, tmp_path: Path) -> None:
    """Device-mapper (*unbacked* False): with no backup to wait for, nothing says udev is done but the exit."""
    lock = configured(script, tmp_path)
    path = tmp_path / "lock" / "V_vg0"
    released = Answer()
    with lock.held() as fd:
        exited = lock.at_exit(fd)
        lock.hand_off(fd, 7, released, unbacked=False)
    assert not lock_free(path) and not released.is_set()
    exited()
    assert lock_free(path) and not released.is_set()  # ended at the exit: the caller's run returned there
    released.close()


def test_a_hold_handed_off_with_backups_ends_at_the_backup_of_its_seqno_or_at_the_exit(
        script: Any, tmp_path: Path) -> None:
    """LVM keeps backups: the hold ends once the VG's backup file is at the commit's seqno (not an older one),
    from a thread, *released* said then; a command that exits first ends it at its exit."""
    lock = configured(script, tmp_path, backup="1")
    path = tmp_path / "lock" / "V_vg0"
    (tmp_path / "backup").mkdir()
    backup = tmp_path / "backup" / "vg0"
    backup.write_text('vg0 {\n\tid = "x"\n\tseqno = 6\n')
    released = Answer()
    with lock.held() as fd:
        lock.hand_off(fd, 7, released, unbacked=False)
    time.sleep(0.05)
    assert not lock_free(path) and not released.is_set()  # the backup of the seqno before
    backup.write_text('vg0 {\n\tid = "x"\n\tseqno = 7\n')
    deadline = time.monotonic() + 10
    while not released.is_set() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert released.is_set() and lock_free(path) and not busy(lock)
    released.close()
    with lock.held() as fd:
        exited = lock.at_exit(fd)
        lock.hand_off(fd, 8)
    assert not lock_free(path)
    exited()  # lvcreate killed, say, before its backup
    assert lock_free(path) and not busy(lock)
