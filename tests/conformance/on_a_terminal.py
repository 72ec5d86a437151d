#!/usr/bin/env python3
"""Run COMMAND... with its stderr on a new pseudo-terminal (120 columns), as an operator's shell gives it.

What the terminal shows is copied to this process's stderr (the agent's log file in the suite: the
pty's line discipline turns each newline into CR LF there); SIGTERM is passed on, and the exit status
is the command's.  A launcher for the conformance ``Agent`` (tests/conformance/test_progress.py).
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios


def main(argv: list[str]) -> int:
    terminal, screen = pty.openpty()
    fcntl.ioctl(screen, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    child = subprocess.Popen(argv, stderr=screen)
    os.close(screen)
    signal.signal(signal.SIGTERM, lambda _signal, _frame: child.send_signal(signal.SIGTERM))
    while True:
        try:
            shown = os.read(terminal, 65536)
        except OSError:  # EIO: the command closed its end of the terminal
            break
        if not shown:
            break
        os.write(2, shown)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
