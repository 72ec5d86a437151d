#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: volume
short_description: Create, grow and delete Basalt volumes in a pool
version_added: 0.1.0
description:
  - Makes sure a Basalt volume of a given name exists in a pool with at least a given size, or does not exist.
    A volume larger than O(size) (grown by a later task or by a PVC expansion) is fine and left unchanged.
  - The volume id is derived from the name exactly as the Basalt CSI agent derives it, so a volume made by
    this module is the volume the agent lists (and the other way round).
  - A thin layer over the Basalt storage core (C(volumes.ensure_volume), C(volumes.expand_volume),
    C(volumes.delete_volume)); the CSI agent runs the very same code.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
  - basalt.csi.pool
attributes:
  check_mode:
    support: full
    details:
      - Nothing on the host changes, not even a file pool's missing directories (C(volumes/) and C(snapshots/),
        which a real run creates as the agent does when it starts); a missing pool reads as an empty one.
  diff_mode:
    support: full
options:
  name:
    description:
      - The volume's name (the CSI name, for volumes the agent made), any Unicode text of 1 to 128 bytes in
        UTF-8 without control characters (the rule the agent applies).
    type: str
    required: true
  state:
    description:
      - V(present) creates the volume when it is missing and grows it when O(size) is larger than it is.
      - V(absent) deletes the volume and its data; a volume that is attached (a loop device) or published
        to a node is refused.
    type: str
    choices: [present, absent]
    default: present
  size:
    description:
      - The volume's least size, in bytes (an integer) or as a Kubernetes quantity, read exactly as Kubernetes
        reads it. Suffixes are case-sensitive. Binary V(Ki), V(Mi), V(Gi), V(Ti), V(Pi), V(Ei) are powers of
        1024 (V(10Gi) is 10737418240 bytes); decimal V(k), V(M), V(G), V(T), V(P), V(E) are powers of 1000
        (V(10G) is 10000000000 bytes); an exponent is allowed (V(1e9)); a fraction must come to whole bytes
        (V(1.5Gi)). V(m) means thousandths and is refused, as are V(10gi), V(10GB) and V(10MiB).
      - Rounded up to the pool's allocation unit (1 MiB).
      - Required to create a volume. A larger size than the volume has grows it; a smaller one leaves it as it
        is (see O(allow_shrink)).
    type: raw
  source_snapshot:
    description:
      - Create the volume as a copy of this snapshot (a snapshot id, C(snap-...)).
      - Only used when the volume is created; an existing volume with another source is a conflict.
    type: str
  source_volume:
    description:
      - Create the volume as a clone of this volume (a volume id, C(vol-...)).
      - Only used when the volume is created; an existing volume with another source is a conflict.
    type: str
  allow_shrink:
    description:
      - Whether O(size) is the exact size, so that a smaller one than the volume's asks to shrink it.
      - No pool supports shrinking yet (the file pool never shrinks an image that may hold a filesystem), so
        with this option a smaller size fails, naming the pool; without it (the default) a volume larger than
        O(size) is left as it is, unchanged.
    type: bool
    default: false
notes:
  - Runs on the host that holds the pool, as root.
seealso:
  - module: basalt.csi.snapshot
  - module: basalt.csi.mount
"""

EXAMPLES = r"""
- name: A 10 GiB volume in the file pool
  basalt.csi.volume:
    name: pgdata
    pool: file:/var/lib/basalt/pools/file
    size: 10Gi

- name: Grow it to 20 GiB
  basalt.csi.volume:
    name: pgdata
    pool: file:/var/lib/basalt/pools/file
    size: 20Gi

- name: Restore a snapshot into a new volume
  basalt.csi.volume:
    name: pgdata-restored
    pool: file:/var/lib/basalt/pools/file
    size: 20Gi
    source_snapshot: "{{ snap.snapshot.id }}"

- name: Delete the volume
  basalt.csi.volume:
    name: pgdata
    pool: file:/var/lib/basalt/pools/file
    state: absent
"""

RETURN = r"""
volume:
  description: The volume after the task (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    id:
      description: The volume id (C(vol-) and 32 hex digits), the same the CSI agent uses.
      type: str
      sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    name:
      description: The volume's name.
      type: str
      sample: pgdata
    size:
      description: Size in bytes; null when the volume is absent.
      type: int
      sample: 10737418240
    pool:
      description: The pool spec the task was given.
      type: str
      sample: file:/var/lib/basalt/pools/file
    path:
      description: Where the volume's data lives (the image file for the file pool); null when absent.
      type: str
      sample: /var/lib/basalt/pools/file/volumes/vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21.img
    source:
      description: What the volume was created from, or null.
      type: dict
      contains:
        kind:
          description: V(snapshot) or V(volume).
          type: str
        id:
          description: The snapshot or volume id.
          type: str
    state:
      description: V(ready) for an existing volume, V(absent) when there is none.
      type: str
      sample: ready
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import (
    Conflict,
    InvalidRequest,
    StorageError,
    failure_details,
)
from ansible_collections.basalt.csi.plugins.module_utils.model import (
    SOURCE_SNAPSHOT,
    SOURCE_VOLUME,
    ContentSource,
    Volume,
    check_name,
    volume_id_for,
)
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool import Pool
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool
from ansible_collections.basalt.csi.plugins.module_utils.sizes import parse_size, round_up
from ansible_collections.basalt.csi.plugins.module_utils.volumes import (
    delete_volume,
    ensure_volume,
    expand_volume,
    find_volume_by_name,
)

# (changed, the volume before, the volume after)
Outcome = t.Tuple[bool, t.Optional[Volume], t.Optional[Volume]]


def describe(pool: t.Any, spec: str, name: str, volume: t.Optional[Volume]) -> t.Dict[str, t.Any]:
    """The volume as the module returns it (and shows in diffs)."""
    if volume is None:
        return dict(id=volume_id_for(name), name=name, size=None, pool=spec, path=None, source=None, state="absent")
    image_path = getattr(pool, "image_path", None)
    return dict(
        id=volume.id,
        name=volume.name,
        size=volume.size,
        pool=spec,
        path=image_path(volume.id) if image_path else None,
        source=dict(kind=volume.source.kind, id=volume.source.id) if volume.source else None,
        state=volume.state,
    )


def wanted_size(module: AnsibleModule, pool: Pool) -> t.Optional[int]:
    raw = module.params["size"]
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise InvalidRequest(f"size must be a number of bytes or a quantity such as 10Gi, got {raw!r}")
    size = raw if isinstance(raw, int) else parse_size(raw)
    if size <= 0:
        raise InvalidRequest(f"size must be positive, got {raw!r}")
    return round_up(size, pool.unit)


def wanted_source(module: AnsibleModule) -> t.Optional[ContentSource]:
    if module.params["source_snapshot"]:
        return ContentSource(SOURCE_SNAPSHOT, module.params["source_snapshot"])
    if module.params["source_volume"]:
        return ContentSource(SOURCE_VOLUME, module.params["source_volume"])
    return None


def present(module: AnsibleModule, pool: Pool, name: str) -> Outcome:
    """Create or grow; returns (changed, volume before, volume after)."""
    size = wanted_size(module, pool)
    source = wanted_source(module)
    existing = find_volume_by_name(pool, name)
    if existing is None:
        if size is None:
            raise InvalidRequest("it does not exist and size is needed to create it")
        created, changed = ensure_volume(pool, name, size, source=source, check_mode=module.check_mode)
        return changed, None, created
    if source is not None and existing.source != source:
        had = f"{existing.source.kind} {existing.source.id}" if existing.source else "none"
        raise Conflict(f"{existing.id} already exists with another content source ({had})")
    if size is None or size == existing.size or (size < existing.size and not module.params["allow_shrink"]):
        return False, existing, existing  # at least the size asked for: a larger volume is fine as it is
    if size < existing.size:
        raise InvalidRequest(f"{existing.id} cannot shrink from {existing.size} to {size} bytes: "
                             f"the {pool.kind} pool does not shrink volumes")
    grown, changed = expand_volume(pool, existing.id, size, check_mode=module.check_mode)
    return changed, existing, grown


def absent(module: AnsibleModule, pool: Pool, name: str) -> Outcome:
    existing = find_volume_by_name(pool, name)
    changed = delete_volume(pool, volume_id_for(name), check_mode=module.check_mode)
    return changed, existing, None


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            size=dict(type="raw"),
            source_snapshot=dict(type="str"),
            source_volume=dict(type="str"),
            allow_shrink=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("source_snapshot", "source_volume")],
        supports_check_mode=True,
    )
    name = module.params["name"]
    spec = module.params["pool"]
    try:
        check_name(name, "volume name")
        pool = open_pool(spec, create_layout=not module.check_mode)
        action = present if module.params["state"] == "present" else absent
        changed, before, after = action(module, pool, name)
        result = dict(changed=changed, volume=describe(pool, spec, name, after))
        if module._diff:
            result["diff"] = dict(before=describe(pool, spec, name, before), after=result["volume"])
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"volume {name!r}", failure))


if __name__ == "__main__":
    main()
