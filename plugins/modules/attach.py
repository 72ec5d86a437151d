#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: attach
short_description: Attach a Basalt volume of a local pool to this host as a block device, or detach it
version_added: 0.1.0
description:
  - Makes a volume of a local pool a block device on this host, as the Basalt CSI agent's NodeStageVolume
    does before it formats and mounts it, on the same core code (C(Pool.attach)) - a loop device over the
    image for a V(file) pool, activation for V(lvm) and V(lvmthin) (device-mapper, or a loop device at the
    LV's offset for a pool stored with loop activation) - or detaches it.
  - Detaching refuses a device that is mounted (a staged volume); unmount it first.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
  - basalt.csi.pool
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff says whether the volume was attached before and after.
options:
  volume_id:
    description:
      - The id (C(vol-...)) of the volume. One of O(volume_id) and O(volume_name) is required.
    type: str
  volume_name:
    description:
      - The name of the volume.
    type: str
  state:
    description:
      - V(attached) makes the volume a block device here; V(detached) undoes it.
    type: str
    choices: [attached, detached]
    default: attached
notes:
  - A volume that does not exist is a failure that names it.
seealso:
  - module: basalt.csi.volume
  - module: basalt.csi.mount
"""

EXAMPLES = r"""
- name: Attach the volume called pgdata
  basalt.csi.attach:
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
  register: attached

- name: Put a filesystem on it
  community.general.filesystem:
    dev: "{{ attached.device }}"
    fstype: ext4

- name: Detach it again
  basalt.csi.attach:
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
    state: detached
"""

RETURN = r"""
device:
  description: The volume's block device after the task; null when detached (and in check mode before the
    first attach, which has no device to name yet).
  returned: always
  type: str
  sample: /dev/loop7
volume_id:
  description: The volume's id.
  returned: always
  type: str
  sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.local_attach import ensure_attached, ensure_detached
from ansible_collections.basalt.csi.plugins.module_utils.model import volume_id_for
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            volume_id=dict(type="str"),
            volume_name=dict(type="str"),
            state=dict(type="str", choices=["attached", "detached"], default="attached"),
        ),
        mutually_exclusive=[("volume_id", "volume_name")],
        required_one_of=[("volume_id", "volume_name")],
        supports_check_mode=True,
    )
    params = module.params
    volume_id = volume_id_for(params["volume_name"]) if params["volume_name"] is not None else params["volume_id"]
    try:
        pool = open_pool(params["pool"], create_layout=not module.check_mode)
        if params["state"] == "attached":
            device, changed = ensure_attached(pool, volume_id, check_mode=module.check_mode)
        else:
            device, changed = None, ensure_detached(pool, volume_id, check_mode=module.check_mode)
        result = dict(changed=changed, device=device, volume_id=volume_id)
        if module._diff:
            wanted = params["state"] == "attached"
            result["diff"] = dict(before=dict(attached=wanted != changed), after=dict(attached=wanted))
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"volume {volume_id}", failure))


if __name__ == "__main__":
    main()
