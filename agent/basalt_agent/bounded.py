"""Reads that must answer within a bound (Probe, metrics scrapes) without piling up threads.

A read that overruns its bound keeps running in its one worker thread; callers
meanwhile get ``TimeoutError`` and the next call waits on that same read
rather than starting another, so a hung tool costs one thread, not one per call.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Callable, Generic, Optional, Tuple, TypeVar

T = TypeVar("T")


class BoundedRead(Generic[T]):
    def __init__(self, read: Callable[[], T], bound: float, max_age: float = 0.0, name: str = "bounded") -> None:
        self.read = read
        self.bound = bound
        #: a result younger than this is answered again without reading (0: always read)
        self.max_age = max_age
        self._worker = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._running: Optional["futures.Future[T]"] = None
        self._last: Optional[Tuple[float, T]] = None

    def __call__(self) -> T:
        """The read's result (or its exception); TimeoutError when it did not finish within the bound."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.max_age:
                return self._last[1]
            if self._running is None or self._running.done():
                self._running = self._worker.submit(self._timed)
            running = self._running
        try:
            return running.result(timeout=self.bound)
        except futures.TimeoutError:
            raise TimeoutError(f"no answer within {self.bound:g}s") from None

    def _timed(self) -> T:
        value = self.read()
        with self._lock:
            self._last = (time.monotonic(), value)
        return value
