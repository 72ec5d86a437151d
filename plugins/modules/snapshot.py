#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take and delete snapshots of Basalt volumes
version_added: 0.1.0
description:
  - Makes sure a snapshot of a given name of a Basalt volume exists in a pool, or does not exist.
  - The snapshot id is derived from the name exactly as the Basalt CSI agent derives it, so snapshots made
    here and over CSI (CreateSnapshot) are the same objects.
  - A thin layer over the Basalt storage core (C(volumes.ensure_snapshot), C(volumes.delete_snapshot)).
  - A volume that is mounted on this host is frozen (C(fsfreeze)) while it is copied.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
  - basalt.csi.pool
attributes:
  check_mode:
    support: full
    details:
      - Nothing on the host changes, not even a file pool's missing directories (a real run creates them as
        the agent does when it starts); a missing pool reads as an empty one.
  diff_mode:
    support: full
options:
  name:
    description:
      - The snapshot's name, any Unicode text of 1 to 128 bytes in UTF-8 without control characters (the rule
        the agent applies to CSI names).
    type: str
    required: true
  state:
    description:
      - V(present) takes the snapshot when it is missing. V(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  volume_id:
    description:
      - The id (C(vol-...)) of the volume to snapshot.
      - One of O(volume_id) and O(volume_name) is required when O(state=present).
    type: str
  volume_name:
    description:
      - The name of the volume to snapshot.
    type: str
notes:
  - An existing snapshot of that name taken of another volume is a conflict, reported as a failure.
seealso:
  - module: basalt.csi.volume
"""

EXAMPLES = r"""
- name: Snapshot the volume called pgdata
  basalt.csi.snapshot:
    name: pgdata-nightly
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
  register: snap

- name: Snapshot a volume the CSI agent made, by its id
  basalt.csi.snapshot:
    name: before-upgrade
    pool: file:/var/lib/basalt/pools/file
    volume_id: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21

- name: Delete the snapshot
  basalt.csi.snapshot:
    name: pgdata-nightly
    pool: file:/var/lib/basalt/pools/file
    state: absent
"""

RETURN = r"""
snapshot:
  description: The snapshot after the task (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    id:
      description: The snapshot id (C(snap-) and 32 hex digits), the same the CSI agent uses.
      type: str
      sample: snap-0c8e2d4f6a1b3c5d7e9f0a2b4c6d8e0f
    name:
      description: The snapshot's name.
      type: str
      sample: pgdata-nightly
    source_volume_id:
      description: The id of the volume it was taken of; null when absent.
      type: str
      sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    size:
      description: Size in bytes (the volume's size when it was taken); null when absent.
      type: int
      sample: 10737418240
    state:
      description: V(ready) for an existing snapshot, V(absent) when there is none.
      type: str
      sample: ready
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import NotFound, StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.model import Snapshot, check_name, snapshot_id_for
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool import Pool
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool
from ansible_collections.basalt.csi.plugins.module_utils.volumes import (
    delete_snapshot,
    ensure_snapshot,
    find_volume_by_name,
    get_snapshot,
)


def describe(name: str, snapshot: t.Optional[Snapshot]) -> t.Dict[str, t.Any]:
    if snapshot is None:
        return dict(id=snapshot_id_for(name), name=name, source_volume_id=None, size=None, state="absent")
    return dict(id=snapshot.id, name=snapshot.name, source_volume_id=snapshot.source_volume_id,
                size=snapshot.size, state=snapshot.state)


def current(pool: Pool, name: str) -> t.Optional[Snapshot]:
    try:
        return get_snapshot(pool, snapshot_id_for(name))
    except NotFound:
        return None


def source_volume_id(module: AnsibleModule, pool: Pool) -> str:
    if module.params["volume_id"]:
        return module.params["volume_id"]
    volume_name = check_name(module.params["volume_name"], "volume_name")
    volume = find_volume_by_name(pool, volume_name)
    if volume is None:
        raise NotFound(f"there is no volume named {volume_name!r} in the {pool.kind} pool at {pool.location}")
    return volume.id


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            volume_id=dict(type="str"),
            volume_name=dict(type="str"),
        ),
        mutually_exclusive=[("volume_id", "volume_name")],
        required_if=[("state", "present", ("volume_id", "volume_name"), True)],
        supports_check_mode=True,
    )
    name = module.params["name"]
    try:
        check_name(name, "snapshot name")
        pool = open_pool(module.params["pool"], create_layout=not module.check_mode)
        before = current(pool, name)
        if module.params["state"] == "present":
            after, changed = ensure_snapshot(pool, name, source_volume_id(module, pool),
                                             check_mode=module.check_mode)
        else:
            changed = delete_snapshot(pool, snapshot_id_for(name), check_mode=module.check_mode)
            after = None
        result = dict(changed=changed, snapshot=describe(name, after))
        if module._diff:
            result["diff"] = dict(before=describe(name, before), after=result["snapshot"])
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"snapshot {name!r}", failure))


if __name__ == "__main__":
    main()
