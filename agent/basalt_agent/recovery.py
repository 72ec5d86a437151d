"""Start-up recovery: converge from whatever an agent killed at any moment left on this host.

It runs before the socket serves, so nothing else acts on the pool meanwhile;
docs/crash-safety.md lists, per call, what each crash point leaves and which
step here (or which retry) takes it back.
"""

from __future__ import annotations

import logging
from typing import List, Optional

from basalt_core.pool import Pool

from .nodestate import NodeState, volume_instance

log = logging.getLogger("basalt.agent")


def recover(pool: Pool, state: Optional[NodeState], exports: bool) -> List[str]:
    """Thaw recorded freezes, remove temp files, release devices nothing records a use for; return what.

    Released: loop devices over the pool's storage, and (dm activation) the pool's LVs left active.

    *state* is None when this agent does not serve the node service: it then
    cannot tell which devices are in use, and detaches none.  With *exports*
    (a storage host), volumes published to other nodes keep their devices.
    """
    repaired = pool.clean_leftovers()
    if state is not None:
        repaired += state.clean_leftovers()
        repaired += state.drop_stray_grows({state.grow_mark(v.id, volume_instance(v)) for v in pool.all_volumes()})
    for leftover in repaired:
        log.warning("removed leftover %s", leftover)
    if state is None:
        return repaired
    wanted = state.local_volume_ids()
    if exports:
        wanted |= {volume.id for volume in pool.all_volumes() if volume.publications}
    for device in pool.detach_strays(wanted):
        log.warning("released %s: no record wants it (left by an interrupted operation)", device)
        repaired.append(device)
    return repaired
