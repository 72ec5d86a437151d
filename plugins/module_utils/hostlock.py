"""One writer at a time for a piece of host-wide state: threads of this process and other processes.

The target service's state (tgt's targets, accounts, grant record and config
file; LIO's objects and saved configuration) is shared by every volume, so
per-volume locks do not cover it.  A :class:`HostLock` is a re-entrant lock
per path inside the process and an exclusive ``flock`` on that path across
processes (the agent and an ``iscsi_export`` task on the same host), taken
once by the outermost holder.
"""

from __future__ import annotations

import fcntl
import os
import threading
from types import TracebackType
from typing import Dict, Optional, Type


class _PathLock:
    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.depth = 0
        self.fd = -1


_LOCKS: Dict[str, _PathLock] = {}
_LOCKS_MUTEX = threading.Lock()


class HostLock:
    """``with HostLock(path):`` holds *path*'s lock (re-entrant in the holding thread)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        with _LOCKS_MUTEX:
            self._lock = _LOCKS.setdefault(self.path, _PathLock())

    def __enter__(self) -> None:
        lock = self._lock
        lock.mutex.acquire()
        if lock.depth == 0:
            try:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            except BaseException:
                lock.mutex.release()
                raise
            lock.fd = fd
        lock.depth += 1

    def __exit__(self, kind: Optional[Type[BaseException]], value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        lock = self._lock
        lock.depth -= 1
        if lock.depth == 0:
            os.close(lock.fd)  # releases the flock
            lock.fd = -1
        lock.mutex.release()
