"""basalt_core.hostlock: one holder at a time among threads (re-entrant for the holder) and among processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import List

from basalt_core.hostlock import HostLock

WAIT = 10.0  # upper bound for what must happen; nothing here waits for it unless something is wrong


def test_reentrant_for_its_holder_exclusive_for_other_threads(tmp_path: Path) -> None:
    lock, other = HostLock(str(tmp_path / "a" / "state.lock")), HostLock(str(tmp_path / "a" / "state.lock"))
    events: List[str] = []
    inside, release = threading.Event(), threading.Event()

    def second() -> None:
        inside.wait(WAIT)
        with other:  # another instance, same path: the same lock
            events.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with lock:
        with lock:  # re-entered by its holder
            events.append("first")
            inside.set()
            release.wait(0.2)  # the second thread is blocked meanwhile
            events.append("first done")
    thread.join(WAIT)
    assert events == ["first", "first done", "second"]
    assert (tmp_path / "a" / "state.lock").exists()


def test_another_process_holding_it_blocks_until_it_lets_go(tmp_path: Path) -> None:
    path = str(tmp_path / "state.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from basalt_core.hostlock import HostLock\n"
         f"with HostLock({path!r}):\n    print('held', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    acquired = threading.Event()

    def take() -> None:
        with HostLock(path):
            acquired.set()

    thread = threading.Thread(target=take)
    thread.start()
    assert not acquired.wait(0.3), "taken while another process holds it"
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(WAIT) == 0
    assert acquired.wait(WAIT)
    thread.join(WAIT)
