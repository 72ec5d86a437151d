"""Per-object locks that never make a caller wait.

CSI allows answering ABORTED when an operation is already pending for a
volume; the CO retries with backoff.  That keeps worker threads free instead
of parking them behind a long copy.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Set

import grpc

from .errors import RpcFailure


class ObjectLocks:
    def __init__(self) -> None:
        self._held: Set[str] = set()
        self._mutex = threading.Lock()

    def _take(self, key: str) -> bool:
        with self._mutex:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def _give(self, key: str) -> None:
        with self._mutex:
            self._held.discard(key)

    @contextlib.contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Hold every key or answer ABORTED naming the busy one."""
        taken = []
        try:
            for key in keys:
                if not self._take(key):
                    raise RpcFailure(grpc.StatusCode.ABORTED, f"an operation on {key} is already in progress")
                taken.append(key)
            yield
        finally:
            for key in taken:
                self._give(key)

    @contextlib.contextmanager
    def try_hold(self, key: str) -> Iterator[bool]:
        """Like hold, but yields False instead of failing (for background work)."""
        granted = self._take(key)
        try:
            yield granted
        finally:
            if granted:
                self._give(key)
