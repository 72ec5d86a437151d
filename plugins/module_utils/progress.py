"""Progress of long operations (a copy by bytes, a format): the core reports it, a face with a terminal shows it.

Nothing is shown, and nothing logged beyond what each operation logs itself,
until a face installs a display with :func:`show_with`: the agent does when
it runs in the foreground with a terminal on stderr, never as a service, in a
pipe or in an Ansible module.  Copies report after each chunk they copy
anyway, so the report costs nothing measurable and the fast paths (reflink)
report nothing at all.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator, Optional

#: told the bytes done so far (the total is given when the operation starts)
Update = Callable[[int], None]
#: (what, total bytes or None when unknown) -> a context whose value is the operation's Update; leaving it
#: normally means the operation completed
Display = Callable[[str, Optional[int]], ContextManager[Update]]


class _Shown:
    """Where this process's operations report to: the display a face installed, if any."""

    display: Optional[Display] = None


def show_with(display: Optional[Display]) -> None:
    """Install *display* for every later operation of this process (None: show nothing again)."""
    _Shown.display = display


def _ignore(_done: int) -> None:
    """What an operation reports to when nothing is shown."""


@contextlib.contextmanager
def tracked(what: str, total: Optional[int] = None) -> Iterator[Update]:
    """Report the progress of *what* (bytes of *total*; None: only that it runs) to the display, if any."""
    display = _Shown.display
    if display is None:
        yield _ignore
        return
    with display(what, total) as update:
        yield update
