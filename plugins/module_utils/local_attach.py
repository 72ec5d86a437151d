"""A local pool's volume as a block device on this host, for playbooks: what NodeStage does first.

The pool attaches and detaches (a loop device for a file pool, activation for
lvm and lvmthin), exactly as the agent's node service does through
``Pool.attach``; these wrappers add idempotence reports and check mode, and
refuse to detach a device that is mounted (a staged volume).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from .errors import InUse
from .mount import mounts
from .pool import Pool
from .volumes import get_volume


def ensure_attached(pool: Pool, volume_id: str, *, check_mode: bool = False) -> Tuple[Optional[str], bool]:
    """The volume's device (None in check mode when it is not attached yet), and whether that changed."""
    volume = get_volume(pool, volume_id)
    device = pool.attached_device(volume)
    if device is not None:
        return device, False
    if check_mode:
        return None, True
    return pool.attach(volume), True


def ensure_detached(pool: Pool, volume_id: str, *, check_mode: bool = False) -> bool:
    """Detach the volume's device; False when it was not attached. InUse while it is mounted."""
    volume = get_volume(pool, volume_id)
    device = pool.attached_device(volume)
    if device is None:
        return False
    real = os.path.realpath(device)  # /dev/VG/LV is a link; mountinfo names /dev/mapper/VG-LV or /dev/dm-N
    mounted = sorted(entry.mount_point for entry in mounts() if os.path.realpath(entry.source) == real)
    if mounted:
        raise InUse(f"volume {volume_id} ({device}) is mounted at {', '.join(mounted)}: unmount it first")
    if not check_mode:
        pool.detach(volume)
    return True
