"""Progress of long operations on the terminal of an agent run by hand (stderr a TTY), drawn by tqdm.

:func:`install` does nothing where stderr is not a terminal (a service, a
pipe, a log file): the agent's output there is the same, byte for byte, as
without it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import IO, Any, Iterator, Optional

from basalt_core import progress

#: how often an operation of unknown size (a format) redraws its elapsed time, in seconds
TICK = 0.5


def install(stream: IO[str]) -> bool:
    """Show long operations' progress on *stream* if it is a terminal; True when so."""
    if not stream.isatty():
        return False
    progress.show_with(lambda what, total: progress_bar(stream, what, total))
    return True


@contextlib.contextmanager
def progress_bar(stream: IO[str], what: str, total: Optional[int]) -> Iterator[progress.Update]:
    """A tqdm bar for one operation: bytes done of *total* with the rate, or (no total) its elapsed time.

    Left on the terminal when the operation ends: at 100 % when it completed (a sparse copy skips
    the holes at its end), where it stopped when it failed.
    """
    from tqdm import tqdm  # only on a terminal

    unknown = total is None
    with tqdm(total=total, desc=what, file=stream, unit="B", unit_scale=True, unit_divisor=1024, leave=True,
              dynamic_ncols=True, bar_format="{desc}: {elapsed}" if unknown else None) as shown:

        def update(done: int) -> None:
            shown.update(done - shown.n)

        stop = threading.Event()
        ticker = threading.Thread(target=_tick, args=(shown, stop), daemon=True) if unknown else None
        if ticker is not None:
            ticker.start()
        try:
            yield update
            if total is not None:
                update(total)
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()


def _tick(shown: Any, stop: threading.Event) -> None:
    while not stop.wait(TICK):
        shown.refresh()
