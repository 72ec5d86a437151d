"""Volumes and snapshots as operators see them, with the field names the CSI agent reports them under.

The ``*_info`` modules return these; ``basalt volumes list`` shows the same
names read over CSI (``volume_id``, ``capacity_bytes``, ``content_source``,
``published_node_ids``, ``abnormal``, ``condition``), and the core adds what
only its records know (``name``, ``state``, ``copy_method``).
"""

from __future__ import annotations

import datetime
from typing import Any, Dict, Optional

from .model import READY, SOURCE_SNAPSHOT, Snapshot, Volume, is_volume_id

#: the condition message of a healthy volume (ListVolumes, ControllerGetVolume)
HEALTHY = "volume data present"


def volume_facts(volume: Volume, problem: Optional[str]) -> Dict[str, Any]:
    source: Optional[Dict[str, str]] = None
    if volume.source is not None:
        key = "snapshot_id" if volume.source.kind == SOURCE_SNAPSHOT else "volume_id"
        source = {key: volume.source.id}
    return dict(volume_id=volume.id, name=volume.name, capacity_bytes=volume.size, content_source=source,
                published_node_ids=sorted(volume.publications), abnormal=bool(problem),
                condition=problem or HEALTHY, state=volume.state, copy_method=volume.copy_method)


def snapshot_facts(snapshot: Snapshot) -> Dict[str, Any]:
    return dict(snapshot_id=snapshot.id, name=snapshot.name, source_volume_id=snapshot.source_volume_id,
                size_bytes=snapshot.size, creation_time=timestamp(snapshot.created_at),
                ready_to_use=snapshot.state == READY, state=snapshot.state)


def timestamp(seconds: float) -> str:
    """RFC 3339 in UTC, whole seconds (as the agent's listings show creation times)."""
    moment = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def volume_id_of_target(target_iqn: str) -> Optional[str]:
    """The volume a Basalt target (``BASE:vol-<hex>``) serves; None for any other name."""
    tail = target_iqn.rpartition(":")[2]
    return tail if is_volume_id(tail) else None
