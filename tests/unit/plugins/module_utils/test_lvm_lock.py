"""lvm_lock: LVM's file lock on a VG, taken by LVM's own protocol (lib/misc/lvm-flock.c)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lvm_testlib import lock_free

from basalt_core import lvm_lock
from basalt_core.errors import CommandFailed, InvalidRequest
from basalt_core.lvm_command import LvmSettings

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


def test_a_hold_ends_early_once_its_command_committed_not_when_the_seqno_is_unknown(
        script: Any, tmp_path: Path) -> None:
    """No backup kept: release_when_backed_up ends the hold at once (unlinked, unlocked on the description a
    command's ``timeout`` shares: here a dup), though its descriptor stays open until the hold's end; with the
    commit's seqno unknown it keeps the hold."""
    lock = configured(script, tmp_path)
    path = tmp_path / "lock" / "V_vg0"
    with lock.held() as fd:
        kept = os.dup(fd)  # the command's copy
        lock.release_when_backed_up(fd, None)
        assert not lock_free(path)
        lock.release_when_backed_up(fd, 7)
        assert not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino
        assert lock_free(path)
        os.fstat(fd)  # still open
    os.close(kept)
