"""LVM's own lock on a VG, taken by the pool so that one ``lvcreate --nolocking`` can follow its own writes.

LVM2 (2.03, ``lib/locking/file_locking.c``, ``lib/misc/lvm-flock.c``) guards
a local VG with ``flock`` on ``<global/locking_dir>/V_<vg>``: shared to read,
exclusive to change it.  A writer first takes ``V_<vg>:aux`` exclusively,
then the VG's lock, then drops the aux lock (``global/prioritise_write_locks``,
so that a stream of readers cannot starve it).  Whoever releases a lock it
holds exclusively unlinks the file; so a lock taken on a file that is no
longer at that path (``stat`` and ``fstat`` differ) protects nothing and is
taken again.  This module does exactly that.  While the pool holds the lock,
every other LVM command on the VG waits (measured on lvm2 2.03.16: a plain
``lvcreate`` blocks until it is released), and only commands run with
``--nolocking`` proceed: the pool's own, which must therefore be the only
LVM commands it runs meanwhile (any other would wait for itself).  Those run
under ``timeout``, which inherits the lock's descriptor (LVM closes what it
inherits: seen with strace), so the lock lasts as long as the command even
when the agent is killed meanwhile.

The pool need not hold it until the command's exit: lvcreate says the LV is created
once its commit is done, then (with device-mapper) waits for udev to make the
device names, writes the VG's metadata backup (when LVM keeps one), unlocks and
tears down (30-90 ms here, most of it in ``io_destroy``).  ``hand_off`` gives
the hold's end to the command at its line: the pool answers there, and the hold
ends at once when LVM writes no backup and nothing else follows (loop
activation), else once the backup file is at the new seqno, else at the
command's exit.  It releases the lock itself (``LOCK_UN`` on the open file
description that ``timeout`` shares), so a killed agent's case is unchanged: its
lock lasts until the command has committed and backed up, or has ended.

It applies only where file locks are what protects the VG: ``use_lvmlockd=0``
(lvmlockd's shared VGs are locked across hosts, not by these files) and
``locking_type=1``; ``VgLock.usable`` says so, read once from ``lvmconfig``.
A killed agent's locks go with its file descriptors (the kernel drops them), once
the command it ran under the lock (if any) has ended too.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import threading
import time
from typing import Callable, Dict, Iterator, Optional

from .errors import CommandFailed, InvalidRequest
from .lvm_command import CHANGE_TIMEOUT, REPORT_TIMEOUT, LvmSettings, run_lvm
from .lvm_names import check_vg_name
from .runner import Answer

#: LVM's defaults for the settings read (lvm2 2.03.16, ``lib/config/defaults.h``)
DEFAULT_LOCKING_DIR = "/run/lock/lvm"
_SETTINGS = ("global/locking_dir", "global/use_lvmlockd", "global/locking_type", "backup/backup", "backup/backup_dir")
#: how often the VG's backup file is looked at while the lock waits for it: at first (with loop activation LVM
#: writes it about a millisecond after its line), then less and less often up to the last (with device-mapper
#: LVM first waits for udev, 0.2-0.4 s in the VM tier, and each look is an open and a read)
BACKUP_POLL = 0.0005
BACKUP_POLL_MAX = 0.008
#: the VG's seqno in its backup file (lvm2's text format: the first ``seqno = N``, in the VG's section's head)
_BACKUP_SEQNO = re.compile(rb"^\s*seqno = (\d+)\s*$", re.MULTILINE)
_BACKUP_HEAD = 8192
_LINE = re.compile(r'^(\w+)=(?:"(.*)"|(-?\d+))$')


def lock_settings(settings: LvmSettings) -> Dict[str, str]:
    """The locking settings LVM runs with under *settings* (``lvmconfig --typeconfig full``: defaults included)."""
    result = run_lvm(settings, "lvmconfig", ["--typeconfig", "full", *_SETTINGS], what="read LVM's locking settings",
                     timeout=REPORT_TIMEOUT)
    found = {}
    for line in result.stdout.splitlines():
        match = _LINE.match(line.strip())
        if match:
            found[match.group(1)] = match.group(2) if match.group(2) is not None else match.group(3)
    return found


class _Hold:
    """One hold of the VG's lock: the lock file's path and the descriptor it is held on; *handed_off* once its
    end is the command's (``VgLock.hand_off``), *over* once ended, its descriptor closed."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.handed_off = False
        self.over = False


class Busy(Exception):
    """Another of the agent's threads holds the VG's lock."""


class VgLock:
    """LVM's exclusive lock on one VG, taken as LVM takes it; one holder per agent at a time (a thread lock first:
    the agent's own creates queue here rather than in the kernel)."""

    def __init__(self, vg: str, settings: LvmSettings) -> None:
        self.vg = check_vg_name(vg)
        self.settings = settings
        self._threads = threading.Lock()  # held from a hold's start to its end
        self._directory: Optional[str] = None
        self._backup: Optional[str] = None
        self._usable: Optional[bool] = None
        self._hold: Optional[_Hold] = None  # the current hold, until it ends
        self._ending = threading.Lock()

    @property
    def usable(self) -> bool:
        """Whether LVM guards this VG with these file locks (read once: LVM's configuration does not change under a
        running agent)."""
        if self._usable is None:
            found = lock_settings(self.settings)
            self._directory = found.get("locking_dir") or DEFAULT_LOCKING_DIR
            if found.get("backup", "1") != "0":
                self._backup = os.path.join(found.get("backup_dir") or "/etc/lvm/backup", self.vg)
            self._usable = found.get("use_lvmlockd", "0") == "0" and found.get("locking_type", "1") == "1"
        return self._usable

    @contextlib.contextmanager
    def held(self, wait: float = CHANGE_TIMEOUT, *, queue: bool = True) -> Iterator[int]:
        """Hold the VG's lock exclusively (``usable`` must be True) and give its descriptor, for the LVM commands
        run meanwhile (``lvm_command.run_lvm``'s *vg_lock*); CommandFailed when another holder keeps it longer
        than *wait* seconds; Busy, without *queue*, when another of the agent's threads holds it (not when that
        hold is handed off: it is nearly over, so this waits for it).  The hold ends
        with the block unless it was handed off to the command run under it (``hand_off``)."""
        if not self.usable or self._directory is None:
            raise InvalidRequest(f"LVM does not guard VG {self.vg} with file locks")
        path = os.path.join(self._directory, f"V_{self.vg}")
        deadline = time.monotonic() + wait
        with self._ending:  # (a hold ending meanwhile has released the thread lock, or not yet started its end)
            got = self._threads.acquire(blocking=False)
            # a hold handed off to its command lasts only until that command's backup or exit: wait for it
            tail = not got and self._hold is not None and self._hold.handed_off
        if not got:
            if not (queue or tail):
                raise Busy(f"another thread holds the lock on VG {self.vg}")
            if not self._threads.acquire(timeout=max(deadline - time.monotonic(), 0)):
                raise CommandFailed(["flock", path], 1, "another of the agent's LVM commands kept the VG locked",
                                    f"lock {path}")
        try:
            os.makedirs(self._directory, mode=0o700, exist_ok=True)  # as LVM does (dm_create_dir)
            aux = _lock(path + ":aux", deadline)
            try:
                fd = _lock(path, deadline)
            finally:
                _release(path + ":aux", aux)
        except BaseException:
            self._threads.release()
            raise
        hold = self._hold = _Hold(path, fd)
        try:
            yield fd
        finally:
            self._end_if(hold, handed_off=False)

    def _end(self, hold: _Hold) -> None:
        """End *hold* now, once: the lock file unlinked as LVM does, the lock released on its open file description
        (the copy a command's ``timeout`` shares too), the descriptor closed, the next holder let in."""
        with self._ending:
            if hold.over:
                return
            hold.over = True
            if self._hold is hold:
                self._hold = None
            try:
                if _same_file(hold.path, hold.fd):  # unlinked while still held (lvm-flock.c _undo_flock)
                    os.unlink(hold.path)
            finally:
                fcntl.flock(hold.fd, fcntl.LOCK_UN)
                os.close(hold.fd)
                self._threads.release()

    def at_exit(self, fd: int) -> Callable[[], None]:
        """What the command run under the hold on *fd* calls at its exit (``runner.run``'s *ended*): the end of
        that hold, if it was handed off to the command and is not over yet."""
        hold = self._hold
        if hold is None or hold.fd != fd:
            raise InvalidRequest(f"no hold of VG {self.vg}'s lock on descriptor {fd}")
        return functools.partial(self._end_if, hold, handed_off=True)

    def _end_if(self, hold: _Hold, *, handed_off: bool) -> None:
        """End *hold* if its end is its block's (not *handed_off*) or its command's (*handed_off*)."""
        with self._ending:
            if hold.handed_off != handed_off:
                return
        self._end(hold)

    def hand_off(self, fd: int, seqno: Optional[int], released: Optional[Answer] = None, *,
                 unbacked: bool = True) -> None:
        """The command run under the hold on *fd* has committed, the VG now at *seqno*: from now on the hold
        outlives its ``held`` block (the caller may answer) and ends at once when LVM keeps no backup (only if
        *unbacked*), else (a thread) as soon as the VG's backup file is at that seqno (LVM writes it under its
        lock, its last act before it unlocks), or at the command's exit (``at_exit``), whichever comes first;
        never before that exit when *seqno* is not known.  *released* is set once the hold ended before that exit
        (the command's work is then all done: ``runner.run``'s *answered*)."""
        hold = self._hold
        if hold is None or hold.fd != fd:
            return
        with self._ending:
            hold.handed_off = True

        def release() -> None:
            self._end(hold)
            if released is not None:
                released.set()
        if seqno is None or (self._backup is None and not unbacked):
            return
        if self._backup is None:
            release()
            return

        def wait() -> None:
            pause = BACKUP_POLL
            while not hold.over:
                found = self.backup_seqno()
                if found is not None and found >= seqno:
                    release()
                    return
                time.sleep(pause)
                pause = min(pause * 2, BACKUP_POLL_MAX)
        threading.Thread(target=wait, name=f"release {self.vg}", daemon=True).start()

    def backup_seqno(self) -> Optional[int]:
        """The seqno of the VG's metadata backup as it is now (None: none, unreadable, or LVM keeps none)."""
        if self._backup is None:
            return None
        try:
            with open(self._backup, "rb") as backup:
                found = _BACKUP_SEQNO.search(backup.read(_BACKUP_HEAD))
        except FileNotFoundError:
            return None
        return int(found.group(1)) if found else None


def _lock(path: str, deadline: float) -> int:
    """An exclusive flock on the file at *path* now (lvm-flock.c ``_do_flock``): taken again when the file was
    unlinked (released by its holder) between our open and our lock."""
    pause = 0.0005
    while True:
        fd = os.open(path, os.O_CREAT | os.O_APPEND | os.O_RDWR | os.O_CLOEXEC, 0o777)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CommandFailed(["flock", path], 1, "another LVM command kept the VG locked",
                                            f"lock {path}") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.01)
            if _same_file(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _same_file(path: str, fd: int) -> bool:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino)


def _release(path: str, fd: int) -> None:
    """Unlink the file while still holding it, then close (lvm-flock.c ``_undo_flock``)."""
    try:
        if _same_file(path, fd):
            os.unlink(path)
    finally:
        os.close(fd)
