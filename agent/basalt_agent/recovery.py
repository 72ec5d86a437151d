"""Start-up recovery: converge from whatever an agent killed at any moment left on this host.

It runs before the socket serves, so nothing else acts on the pool meanwhile;
docs/crash-safety.md lists, per call, what each crash point leaves and which
step here (or which retry) takes it back.
"""

from __future__ import annotations

import logging
from typing import Optional

from basalt_core.pool import Pool

from .nodestate import NodeState

log = logging.getLogger("basalt.agent")


def recover(pool: Pool, state: Optional[NodeState], exports: bool) -> None:
    """Thaw recorded freezes, remove temp files, detach devices nothing records a use for.

    *state* is None when this agent does not serve the node service: it then
    cannot tell which devices are in use, and detaches none.  With *exports*
    (a storage host), volumes published to other nodes keep their devices.
    """
    for leftover in pool.clean_leftovers():
        log.warning("removed leftover %s", leftover)
    if state is None:
        return
    for leftover in state.clean_leftovers():
        log.warning("removed leftover %s", leftover)
    wanted = state.local_volume_ids()
    if exports:
        wanted |= {volume.id for volume in pool.all_volumes() if volume.publications}
    for device in pool.detach_strays(wanted):
        log.warning("detached %s: no record wants it (left by an interrupted operation)", device)
