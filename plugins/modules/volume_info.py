#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: volume_info
short_description: List Basalt volumes or look one up
version_added: 0.1.0
description:
  - Lists the volumes of a Basalt pool, or those of a given id or name, with the fields the Basalt CSI agent
    reports for them (C(basalt volumes list) shows the same names).
  - A volume that does not exist is an empty list, never a failure.
  - Reads the pool only; it never creates a file pool's directories.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes.read_only
  - basalt.csi.pool
options:
  id:
    description:
      - Only the volume of this id (C(vol-...)).
    type: str
  name:
    description:
      - Only the volume of this name.
    type: str
seealso:
  - module: basalt.csi.volume
  - module: basalt.csi.snapshot_info
"""

EXAMPLES = r"""
- name: List every volume of the pool
  basalt.csi.volume_info:
    pool: file:/var/lib/basalt/pools/file
  register: found

- name: Look the volume called pgdata up
  basalt.csi.volume_info:
    pool: lvm:vg0
    name: pgdata
  register: pgdata

- name: Fail when it is published to a node
  ansible.builtin.assert:
    that: pgdata.volumes | map(attribute='published_node_ids') | flatten | length == 0
"""

RETURN = r"""
volumes:
  description: The ready volumes found (all of the pool, or the one asked for), oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    volume_id:
      description: The volume id, the same the CSI agent uses.
      type: str
      sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    name:
      description: The volume's name (the CSI name it was created with).
      type: str
      sample: pgdata
    capacity_bytes:
      description: Size in bytes.
      type: int
      sample: 10737418240
    content_source:
      description: C(snapshot_id) or C(volume_id) of what it was made from; null for a blank volume.
      type: dict
      sample: {"snapshot_id": "snap-0c8e2d4f6a1b3c5d7e9f0a2b4c6d8e0f"}
    published_node_ids:
      description: The nodes it is published to.
      type: list
      elements: str
      sample: [node-1]
    abnormal:
      description: Whether its data has a problem (missing, wrong size, thin pool nearly full).
      type: bool
      sample: false
    condition:
      description: What is wrong with its data, or that it is present.
      type: str
      sample: volume data present
    state:
      description: V(ready).
      type: str
      sample: ready
    copy_method:
      description: How its data was copied from its source (for example V(reflink)); null for a blank volume.
      type: str
      sample: reflink
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.facts import volume_facts
from ansible_collections.basalt.csi.plugins.module_utils.model import volume_id_for
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool
from ansible_collections.basalt.csi.plugins.module_utils.volumes import list_volumes


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            id=dict(type="str"),
            name=dict(type="str"),
        ),
        mutually_exclusive=[("id", "name")],
        supports_check_mode=True,
    )
    wanted_id = volume_id_for(module.params["name"]) if module.params["name"] is not None else module.params["id"]
    try:
        pool = open_pool(module.params["pool"], create_layout=False)
        found = [v for v in list_volumes(pool) if wanted_id is None or v.id == wanted_id]
        problems = pool.volume_problems(found)
        module.exit_json(changed=False, volumes=[volume_facts(v, problems[v.id]) for v in found])
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"volumes of {module.params['pool']}", failure))


if __name__ == "__main__":
    main()
