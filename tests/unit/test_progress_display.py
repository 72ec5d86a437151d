"""The agent's progress display (agent/basalt_agent/terminal.py over basalt_core.progress) on a pseudo-terminal.

The copies themselves, shown by a running agent, are tests/conformance/test_progress.py.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import termios
import threading
from pathlib import Path
from typing import IO, Iterator, List

import pytest

from basalt_agent import terminal
from basalt_core import filesystem, progress


class Terminal:
    """A pseudo-terminal: the agent's side as a text stream, everything it showed read back."""

    def __init__(self) -> None:
        self._master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        self.stream: IO[str] = os.fdopen(slave, "w", encoding="utf-8")
        self._chunks: List[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return
            if not data:
                return
            self._chunks.append(data)

    def shown(self) -> str:
        self.stream.close()
        self._reader.join(10)
        os.close(self._master)
        return b"".join(self._chunks).decode()


@pytest.fixture
def screen() -> Iterator[Terminal]:
    shown = Terminal()
    assert terminal.install(shown.stream)
    try:
        yield shown
    finally:
        progress.show_with(None)


def test_nothing_is_installed_without_a_terminal() -> None:
    read, write = os.pipe()
    with os.fdopen(read) as _reader, os.fdopen(write, "w") as pipe:
        assert not terminal.install(pipe)
        assert not terminal.install(io.StringIO())
    with progress.tracked("copying x", 10) as update:  # reports go nowhere
        update(5)


def test_a_completed_operation_ends_at_100_percent_and_a_failed_one_where_it_stopped(screen: Terminal) -> None:
    with progress.tracked("copying done.img", 8 << 20) as update:
        update(3 << 20)  # a sparse copy: the last data chunk ends before the holes at the end
    with pytest.raises(OSError), progress.tracked("copying broken.img", 8 << 20) as update:
        update(2 << 20)
        raise OSError("disk gone")
    shown = screen.shown()
    last = {what: percent for what, percent in re.findall(r"copying (\S+): +(\d+)%", shown)}
    assert last == {"done.img": "100", "broken.img": "25"}, shown
    assert "8.00M/8.00M" in shown and "2.00M/8.00M" in shown


def test_a_format_shows_that_it_runs_and_for_how_long(screen: Terminal, tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    filesystem.make(str(image), "ext4")
    shown = screen.shown()
    assert re.search(rf"making ext4 on {re.escape(str(image))}: 00:\d\d", shown), shown
