#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pool
short_description: Create and remove Basalt pools, and store the settings the agent and the modules read
version_added: 0.1.0
description:
  - Makes sure a Basalt pool exists with the given settings, or does not exist.
  - A V(file) pool is a directory. An V(lvm) pool is a volume group made from O(disks) (each disk becomes a
    physical volume in the same C(vgcreate)); an V(lvmthin) pool is such a volume group plus a thin pool in it.
  - The pool's settings are stored with the pool itself (tags of the volume group, or C(pool-settings.json) in
    a file pool's directory). The Basalt agent and the other modules read them from there, so every face
    opening the pool agrees on its capacity and behaviour; an agent started with a flag that contradicts a
    stored setting refuses to start.
  - A thin layer over the Basalt storage core (C(pool_setup.ensure_pool), C(pool_setup.remove_pool)).
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
attributes:
  check_mode:
    description: Can run in check mode and return the changed status and the actions it predicts without
      changing the host.
    support: full
  diff_mode:
    description: Returns the pool as it was and as it is (or would be) in C(diff).
    support: full
options:
  pool:
    description:
      - The pool, as the spec string the agent and the other modules take, for example
        V(file:/var/lib/basalt/pools/file), V(lvm:basalt) or V(lvmthin:basalt/thin).
    type: str
    required: true
  state:
    description:
      - V(present) creates what is missing of the pool and stores its settings.
      - V(absent) removes the pool. It is refused while the pool holds volumes or snapshots, unless O(force).
        An LVM pool's Basalt volumes and snapshots, thin pool, volume group and physical volume labels are
        removed; a volume group that also holds logical volumes Basalt did not make is refused, even with
        O(force). A file pool's C(volumes/), C(snapshots/) and settings file are removed, and its directory
        too when nothing else is left in it.
    type: str
    choices: [present, absent]
    default: present
  disks:
    description:
      - Block devices for a new LVM volume group (V(lvm) and V(lvmthin) pools only).
      - Each must be blank, by the rule every Basalt face uses before it claims or formats a device
        (C(blkid.examine)) - C(blkid --probe) finds no signature on it, AND its first and last MiB read as
        zeros - or be a physical volume in no volume group (what an interrupted run leaves). Anything else
        is refused unless O(force).
      - An existing volume group is kept as it is; disks are never added to it, and a listed disk that is
        not one of its physical volumes is an error.
      - With O(state=absent), disks left as physical volumes in no volume group are cleared too.
    type: list
    elements: path
    default: []
  force:
    description:
      - With O(state=present), lets LVM wipe the signatures it finds on O(disks) and skips the blank test.
        B(Whatever the disks held is lost.)
      - With O(state=absent), deletes the pool's Basalt volumes and snapshots with it.
    type: bool
    default: false
  max_volumes:
    description:
      - How many logical volumes (volumes and snapshots) the pool is meant to hold; sizes each new physical
        volume's metadata area. LVM keeps two copies of its metadata text in the area, and each Basalt LV
        takes about 750 bytes of it (1.2 KiB with the CSI parameters and a publication, as measured); the
        area is sized at 2 KiB per LV, twice, at least LVM's own 1 MiB (which stops near 800 LVs).
      - Only used when the volume group is created.
    type: int
    default: 1000
  thin_pool_size:
    description:
      - Size of a new thin pool (V(lvmthin)), in bytes or as a quantity such as V(100Gi); by default 90% of
        the volume group's free space, which leaves room for LVM's spare metadata volume.
      - Only used when the thin pool is created.
    type: raw
  allocation:
    description:
      - LVM allocation policy of new volumes (V(contiguous) is needed with O(activation=loop)).
      - Not given - the value stored with the pool, or V(normal) for a pool that stores none.
    type: str
    choices: [normal, contiguous, cling, anywhere]
  activation:
    description:
      - How the agent makes an LVM volume a block device. V(dm) - device-mapper (C(lvchange)); V(loop) - a
        loop device over the volume's extents, for kernels without device-mapper (V(lvm) pools only).
      - Not given - the value stored with the pool, or V(dm) for a pool that stores none.
    type: str
    choices: [dm, loop]
  snapshot_mode:
    description:
      - V(lvm) pools - snapshots are independent V(copy) volumes or classic V(cow) snapshots.
      - Not given - the value stored with the pool, or V(copy) for a pool that stores none.
    type: str
    choices: [copy, cow]
  cow_percent:
    description:
      - COW space of a classic snapshot, as a percentage of its origin.
      - Not given - the value stored with the pool, or 25 for a pool that stores none.
    type: int
  overprovision:
    description:
      - V(lvmthin) pools - virtual bytes allowed per byte of thin pool.
      - Not given - the value stored with the pool, or 1.0 for a pool that stores none.
    type: float
  thin_full_percent:
    description:
      - V(lvmthin) pools - thin pool data or metadata use (percent) at which its volumes report abnormal.
      - Not given - the value stored with the pool, or 90 for a pool that stores none.
    type: float
  capacity_limit:
    description:
      - Cap on the bytes provisioned from the pool, in bytes or as a quantity such as V(100Gi); V(0) for none.
      - Not given - the value stored with the pool, or no cap for a pool that stores none.
    type: raw
notes:
  - Runs on the host that holds the pool, as root.
seealso:
  - module: basalt.csi.volume
  - module: basalt.csi.snapshot
"""

EXAMPLES = r"""
- name: The default file pool, capped at 200 GiB
  basalt.csi.pool:
    pool: file:/var/lib/basalt/pools/file
    capacity_limit: 200Gi

- name: A thin pool on two blank disks, for up to 5000 volumes and snapshots
  basalt.csi.pool:
    pool: lvmthin:basalt/thin
    disks: [/dev/sdb, /dev/sdc]
    max_volumes: 5000
    overprovision: 4.0

- name: Remove an empty pool
  basalt.csi.pool:
    pool: lvm:basalt
    state: absent
"""

RETURN = r"""
actions:
  description: What the task did (in check mode, would do), one line each.
  returned: always
  type: list
  elements: str
  sample: ["create VG basalt on /dev/sdb with 4 MiB of metadata per disk (max_volumes 1000) and settings {...}"]
pool:
  description: The pool after the task (in check mode, as it was, with the settings it would store).
  returned: always
  type: dict
  contains:
    spec:
      description: The pool spec.
      type: str
      sample: lvmthin:basalt/thin
    exists:
      description: Whether the pool exists.
      type: bool
    settings:
      description: The settings stored with the pool (null when it stores none).
      type: dict
    disks:
      description: The physical volumes of an LVM pool's volume group.
      type: list
      elements: str
    volumes:
      description: How many Basalt volumes it holds.
      type: int
    snapshots:
      description: How many Basalt snapshots it holds.
      type: int
    available_bytes:
      description: The capacity the agent reports for this pool (GetCapacity), in bytes; null when absent.
      type: int
"""

import dataclasses
import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils.errors import (
    InvalidRequest,
    StorageError,
    failure_details,
)
from ansible_collections.basalt.csi.plugins.module_utils.module_args import POOL, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import stored_settings
from ansible_collections.basalt.csi.plugins.module_utils.pool_setup import (
    DEFAULT_MAX_VOLUMES,
    PoolState,
    describe_pool,
    ensure_pool,
    remove_pool,
)
from ansible_collections.basalt.csi.plugins.module_utils.pool_spec import (
    ACTIVATIONS,
    ALLOCATION_POLICIES,
    DEFAULTS,
    LVM,
    SNAPSHOT_MODES,
    PoolSettings,
    parse_pool_spec,
)
from ansible_collections.basalt.csi.plugins.module_utils.sizes import parse_size

#: module option -> pool setting (pool_spec.PoolSettings)
SETTING_OPTIONS = {
    "allocation": "alloc",
    "activation": "activation",
    "snapshot_mode": "snapshot_mode",
    "cow_percent": "cow_percent",
    "overprovision": "overprovision",
    "thin_full_percent": "full_percent",
    "capacity_limit": "capacity_limit",
}


def size_option(name: str, raw: t.Any) -> t.Optional[int]:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise InvalidRequest(f"{name} must be a number of bytes or a quantity such as 10Gi, got {raw!r}")
    size = raw if isinstance(raw, int) else parse_size(raw)
    if size < 0:
        raise InvalidRequest(f"{name} must not be negative, got {raw!r}")
    return size


def wanted_settings(params: t.Dict[str, t.Any], stored: t.Optional[PoolSettings]) -> PoolSettings:
    """The stored settings (or the defaults) with every option the task gives applied."""
    given = {key: params[option] for option, key in SETTING_OPTIONS.items() if params[option] is not None}
    if "capacity_limit" in given:
        given["capacity_limit"] = size_option("capacity_limit", given["capacity_limit"])
    return PoolSettings.from_values({**(stored or DEFAULTS).values(LVM), **given})


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL,
            state=dict(type="str", choices=["present", "absent"], default="present"),
            disks=dict(type="list", elements="path", default=[]),
            force=dict(type="bool", default=False),
            max_volumes=dict(type="int", default=DEFAULT_MAX_VOLUMES),
            thin_pool_size=dict(type="raw"),
            allocation=dict(type="str", choices=list(ALLOCATION_POLICIES)),
            activation=dict(type="str", choices=list(ACTIVATIONS)),
            snapshot_mode=dict(type="str", choices=list(SNAPSHOT_MODES)),
            cow_percent=dict(type="int"),
            overprovision=dict(type="float"),
            thin_full_percent=dict(type="float"),
            capacity_limit=dict(type="raw"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    spec = params["pool"]
    try:
        parsed = parse_pool_spec(spec)
        before = describe_pool(parsed)
        if params["state"] == "present":
            settings = wanted_settings(params, stored_settings(parsed))
            actions = ensure_pool(spec, settings, disks=params["disks"], max_volumes=params["max_volumes"],
                                  thin_pool_size=size_option("thin_pool_size", params["thin_pool_size"]),
                                  force=params["force"], check_mode=module.check_mode)
            after = (dataclasses.replace(before, exists=True, settings=settings.values(parsed.kind))
                     if module.check_mode else describe_pool(parsed))
        else:
            actions = remove_pool(spec, disks=params["disks"], force=params["force"], check_mode=module.check_mode)
            if not module.check_mode:
                after = describe_pool(parsed)
            else:
                after = PoolState(parsed.text, exists=False, settings=None) if actions else before
        result: t.Dict[str, t.Any] = dict(changed=bool(actions), actions=actions, pool=after.to_dict())
        if module._diff:
            result["diff"] = dict(before=before.to_dict(), after=after.to_dict())
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"pool {spec!r}", failure))


if __name__ == "__main__":
    main()
