#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: iscsi_attach
short_description: Log a host in to (or out of) an iSCSI target and find the disk of a Basalt volume
version_added: 0.1.0
description:
  - Makes open-iscsi log this host in to a target on every given portal, with CHAP when given, and waits for the
    SCSI disk whose unit serial number is O(serial); returns its device path. Or logs out and forgets the node
    records.
  - The node records get C(node.startup=automatic), so the host logs in again when it boots.
  - A thin layer over the Basalt storage core (C(iscsi_attach.ensure_attached), C(iscsi_attach.ensure_detached));
    the CSI agent's NodeStageVolume and NodeUnstageVolume run the very same code.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
  - basalt.csi.iscsi.CHAP
attributes:
  check_mode:
    support: full
    details:
      - Reads the node records and the sessions only; a login is predicted for every portal without a session,
        and a portal given by host name never matches a session (sessions show addresses).
  diff_mode:
    description: Returns the portals with a session and the disk before and after the task in C(diff).
    support: full
options:
  target_iqn:
    description:
      - The target to log in to, for example the C(export.target_iqn) that M(basalt.csi.iscsi_export) returns.
    type: str
    required: true
  portals:
    description:
      - The target's C(ADDRESS[:PORT]) portals (IPv6 addresses in brackets; port 3260 when not given). The host
        logs in on each.
    type: list
    elements: str
    required: true
  serial:
    description:
      - The SCSI unit serial number of the volume's LUN (C(export.serial) of M(basalt.csi.iscsi_export)); the disk
        is found by it, whatever its C(/dev/sdX) name. Required for O(state=present).
    type: str
  chap:
    description:
      - CHAP credentials to log in with; they are stored in the node records (mode 0600). Without it, no CHAP.
  state:
    description:
      - V(present) logs in on every portal (creating or updating the node records first) and waits for the disk.
      - V(absent) logs out of every portal's session and deletes the node records; nothing there is no change.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description:
      - Seconds to wait for the disk after the login.
    type: int
    default: 60
requirements:
  - open-iscsi (C(iscsiadm), a running C(iscsid)) and a kernel with the iSCSI initiator (C(iscsi_tcp))
notes:
  - Runs as root on the host that uses the volume.
  - The host's own initiator name (C(/etc/iscsi/initiatorname.iscsi)) is what the target must grant.
seealso:
  - module: basalt.csi.iscsi_export
  - module: basalt.csi.mount
"""

EXAMPLES = r"""
- name: Log in to the volume's target and find its disk
  basalt.csi.iscsi_attach:
    target_iqn: "{{ pgdata_export.export.target_iqn }}"
    portals: "{{ pgdata_export.export.portals }}"
    serial: "{{ pgdata_export.export.serial }}"
    chap:
      user: pgdata
      password: "{{ vault_pgdata_chap_secret }}"
  register: pgdata_disk

- name: Mount it
  basalt.csi.mount:
    device: "{{ pgdata_disk.device }}"
    path: /srv/pgdata

- name: Log out
  basalt.csi.iscsi_attach:
    target_iqn: "{{ pgdata_export.export.target_iqn }}"
    portals: "{{ pgdata_export.export.portals }}"
    state: absent
"""

RETURN = r"""
device:
  description: The volume's disk after the task, for example C(/dev/sdb); null when there is none (after
    O(state=absent), or in check mode before the first login).
  returned: always
  type: str
  sample: /dev/sdb
target_iqn:
  description: The target.
  returned: always
  type: str
  sample: iqn.2026-11.dev.basalt:vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
sessions:
  description: The portals (C(ADDRESS:PORT)) with a session to the target after the task (in check mode, as it
    would be).
  returned: always
  type: list
  elements: str
  sample: [192.0.2.10:3260]
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.basalt.csi.plugins.module_utils import iscsiadm
from ansible_collections.basalt.csi.plugins.module_utils.errors import StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.iscsi_attach import (
    ensure_attached,
    ensure_detached,
    logged_in_portals,
    session_portal,
)
from ansible_collections.basalt.csi.plugins.module_utils.iscsi_target import Chap
from ansible_collections.basalt.csi.plugins.module_utils.module_args import CHAP, argument_spec


def facts(sessions: t.Iterable[str], device: t.Optional[str]) -> t.Dict[str, t.Any]:
    return dict(sessions=sorted(sessions), device=device)


def run(module: AnsibleModule) -> t.Tuple[bool, t.Dict[str, t.Any], t.Dict[str, t.Any]]:
    params = module.params
    target, serial = params["target_iqn"], params["serial"]
    portals = [iscsiadm.check_portal(p) for p in params["portals"]]
    if not portals:
        module.fail_json(msg=f"iSCSI target {target}: portals must name at least one portal")
    if params["timeout"] <= 0:
        module.fail_json(msg=f"iSCSI target {target}: timeout must be a positive number of seconds")
    wanted = {session_portal(p) for p in portals}
    before = facts(logged_in_portals(target), iscsiadm.find_device(serial) if serial else None)
    if params["state"] == "present":
        chap = Chap(**params["chap"]) if params["chap"] else None  # the option's keys are its fields
        device, changed = ensure_attached(target, portals, chap, serial, timeout=params["timeout"],
                                          check_mode=module.check_mode)
        if module.check_mode:
            return changed, before, facts(set(before["sessions"]) | wanted, device)
        return changed, before, facts(logged_in_portals(target), device)
    changed = ensure_detached(target, portals, check_mode=module.check_mode)
    if module.check_mode:
        # the disk goes when its last session does
        left = set(before["sessions"]) - wanted
        return changed, before, facts(left, before["device"] if left else None)
    sessions = logged_in_portals(target)
    return changed, before, facts(sessions, iscsiadm.find_device(serial) if serial and sessions else None)


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            CHAP,
            target_iqn=dict(type="str", required=True),
            portals=dict(type="list", elements="str", required=True),
            serial=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            timeout=dict(type="int", default=60),
        ),
        required_if=[("state", "present", ("serial",))],
        supports_check_mode=True,
    )
    target = module.params["target_iqn"]
    try:
        changed, before, after = run(module)
        result = dict(changed=changed, target_iqn=target, **after)
        if module._diff:
            result["diff"] = dict(before=before, after=after)
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(f"iSCSI target {target}", failure))


if __name__ == "__main__":
    main()
