#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: snapshot_info
short_description: List Basalt snapshots or look one up
version_added: 0.1.0
description:
  - Lists the snapshots of a Basalt pool, or those of a given id, name or source volume, with the fields the
    Basalt CSI agent reports for them (C(basalt snapshots list) shows the same names).
  - A snapshot that does not exist is an empty list, never a failure.
  - Reads the pool only; it never creates a file pool's directories.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes.read_only
  - basalt.csi.pool
options:
  id:
    description:
      - Only the snapshot of this id (C(snap-...)).
    type: str
  name:
    description:
      - Only the snapshot of this name.
    type: str
  source_volume_id:
    description:
      - Only snapshots of the volume of this id.
    type: str
seealso:
  - module: basalt.csi.snapshot
  - module: basalt.csi.volume_info
"""

EXAMPLES = r"""
- name: The snapshots of one volume
  basalt.csi.snapshot_info:
    pool: file:/var/lib/basalt/pools/file
    source_volume_id: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
  register: found

- name: Whether the nightly snapshot exists
  basalt.csi.snapshot_info:
    pool: file:/var/lib/basalt/pools/file
    name: pgdata-nightly
  register: nightly
"""

RETURN = r"""
snapshots:
  description: The ready snapshots found, oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    snapshot_id:
      description: The snapshot id, the same the CSI agent uses.
      type: str
      sample: snap-0c8e2d4f6a1b3c5d7e9f0a2b4c6d8e0f
    name:
      description: The snapshot's name.
      type: str
      sample: pgdata-nightly
    source_volume_id:
      description: The id of the volume it was taken of.
      type: str
      sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    size_bytes:
      description: Size in bytes (the volume's size when it was taken).
      type: int
      sample: 10737418240
    creation_time:
      description: When it was taken (RFC 3339, UTC).
      type: str
      sample: "2026-12-04T17:30:00Z"
    ready_to_use:
      description: Whether a volume can be made from it.
      type: bool
      sample: true
    state:
      description: V(ready).
      type: str
      sample: ready
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.facts import snapshot_facts
from ansible_collections.basalt.csi.plugins.module_utils.model import snapshot_id_for
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool
from ansible_collections.basalt.csi.plugins.module_utils.volumes import list_snapshots


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            id=dict(type="str"),
            name=dict(type="str"),
            source_volume_id=dict(type="str"),
        ),
        mutually_exclusive=[("id", "name")],
        supports_check_mode=True,
    )
    params = module.params
    wanted_id = snapshot_id_for(params["name"]) if params["name"] is not None else params["id"]
    try:
        pool = open_pool(params["pool"], create_layout=False)
        found = [s for s in list_snapshots(pool) if (wanted_id is None or s.id == wanted_id)
                 and (params["source_volume_id"] is None or s.source_volume_id == params["source_volume_id"])]
        module.exit_json(changed=False, snapshots=[snapshot_facts(s) for s in found])
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"snapshots of {params['pool']}", failure))


if __name__ == "__main__":
    main()
