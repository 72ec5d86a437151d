#!/usr/bin/python
# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: iscsi_export
short_description: Export Basalt volumes over iSCSI to given initiators, or withdraw the export
version_added: 0.1.0
description:
  - Makes a Basalt volume the LUN of its own iSCSI target and lets the listed initiator IQNs (and no other host)
    log in, optionally with CHAP and mutual CHAP; or withdraws that access.
  - The target is named exactly as the Basalt CSI agent names it (O(base_iqn), a colon, the volume id) and the
    LUN carries the same unit serial, so an export made here is the one the agent's ControllerPublish makes
    (and the other way round).
  - Grants for initiators that are not listed are left alone unless O(exclusive=true); they may be the CSI
    agent's publications to other nodes, or another play's.
  - A thin layer over the Basalt storage core (C(exports.ensure_exported), C(exports.ensure_unexported),
    C(exports.ensure_withdrawn)) and its target backends (C(tgt), C(lio)); the CSI agent runs the very same code.
  - The target configuration is persisted after every change (tgt's O(tgt_conf), LIO's O(lio_save_file)), so
    exports survive a restart of the target service and of the host.
author:
  - Basalt developers (@basalt)
extends_documentation_fragment:
  - basalt.csi.attributes
  - basalt.csi.pool
  - basalt.csi.iscsi.CHAP
  - basalt.csi.iscsi.TARGET_BACKEND
attributes:
  check_mode:
    support: full
    details:
      - Only reads the target's state; a file pool's missing directories are not created either.
  diff_mode:
    description: Returns the export before and after the task (its grants, with initiators and CHAP user names,
      never secrets) in C(diff).
    support: full
options:
  volume_name:
    description:
      - The volume's name (its CSI name for volumes the agent made). Exactly one of O(volume_name) and O(volume_id)
        is required.
    type: str
  volume_id:
    description:
      - The volume's id (C(vol-...)).
    type: str
  state:
    description:
      - V(present) exports the volume (when it is not yet) and grants each of O(initiators) access with O(chap).
        A listed initiator whose CHAP differs gets the new credentials.
      - V(absent) withdraws access. With O(initiators), only theirs; the target (and the volume's device) go with
        the last grant. Without O(initiators), every grant, the target and the device go.
    type: str
    choices: [present, absent]
    default: present
  initiators:
    description:
      - Initiator IQNs (C(iqn.), C(eui.) or C(naa.) names; C(iqn.) names in lower case) allowed to log in.
      - Required for O(state=present).
    type: list
    elements: str
  exclusive:
    description:
      - With O(state=present), also withdraw the grants of initiators that are not in O(initiators), so that the
        list is exactly who may log in.
    type: bool
    default: false
  chap:
    description:
      - CHAP credentials the initiators must log in with (the same for every listed initiator). Without it, the
        initiator IQN alone admits a host.
      - Secrets are 1-255 printable ASCII characters without blanks (RFC 3720 recommends 12 to 16 bytes).
      - Both backends apply CHAP per target, so all grants on one target use CHAP or none does, and all mutual
        grants share one mutual user; a mix fails.
  read_only:
    description:
      - Export the LUN read-only (writes fail with DATA PROTECT). An existing export with the other mode fails
        (changing it under logged-in initiators is unsafe); withdraw it first.
    type: bool
    default: false
  portals:
    description:
      - The C(ADDRESS:PORT) portals initiators log in to, returned for O(state=present) (required then). With
        O(backend=lio) the target also listens there; C(tgtd) listens where it was started.
    type: list
    elements: str
notes:
  - Runs as root on the storage host, the host that holds the pool.
  - A file pool volume is attached as a loop device while it is exported.
seealso:
  - module: basalt.csi.volume
  - module: basalt.csi.iscsi_attach
"""

EXAMPLES = r"""
- name: Export pgdata to two nodes with CHAP
  basalt.csi.iscsi_export:
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
    initiators:
      - iqn.1993-08.org.debian:01:node-a
      - iqn.1993-08.org.debian:01:node-b
    chap:
      user: pgdata
      password: "{{ vault_pgdata_chap_secret }}"
    portals: [192.0.2.10:3260]
  register: pgdata_export

- name: Read-only to exactly one node, through LIO, with mutual CHAP
  basalt.csi.iscsi_export:
    pool: lvm:vg0
    volume_id: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    backend: lio
    read_only: true
    exclusive: true
    initiators: [iqn.1993-08.org.debian:01:node-c]
    chap:
      user: node-c
      password: "{{ vault_chap_secret }}"
      mutual_user: storage
      mutual_password: "{{ vault_mutual_chap_secret }}"
    portals: [192.0.2.10:3260]

- name: Withdraw one node's access
  basalt.csi.iscsi_export:
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
    initiators: [iqn.1993-08.org.debian:01:node-b]
    state: absent

- name: Withdraw the whole export
  basalt.csi.iscsi_export:
    pool: file:/var/lib/basalt/pools/file
    volume_name: pgdata
    state: absent
"""

RETURN = r"""
export:
  description: The export after the task (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    target_iqn:
      description: The volume's target IQN, what an initiator logs in to.
      type: str
      sample: iqn.2026-11.dev.basalt:vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    lun:
      description: The LUN of the volume's data (tgt 1, LIO 0).
      type: int
      sample: 1
    serial:
      description: The LUN's SCSI unit serial number, by which a node finds its disk (the C(serial) option of
        M(basalt.csi.iscsi_attach)).
      type: str
      sample: 5c1e0f4a9b3d7e21
    portals:
      description: The portals given in O(portals).
      type: list
      elements: str
      sample: [192.0.2.10:3260]
    volume_id:
      description: The exported volume's id.
      type: str
      sample: vol-3f0e4b1c9a6d4c1b8e2f7a5d6c4b3a21
    exported:
      description: Whether the target exists.
      type: bool
    read_only:
      description: Whether the LUN is read-only; null when not exported.
      type: bool
    grants:
      description: Who may log in, sorted by initiator; CHAP user names only, never secrets.
      type: list
      elements: dict
      contains:
        initiator:
          description: The initiator IQN.
          type: str
        chap_user:
          description: The CHAP user it logs in with, or null.
          type: str
        mutual_chap_user:
          description: The mutual CHAP user the target answers with, or null.
          type: str
"""

import dataclasses
import traceback
import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.basalt.csi.plugins.module_utils.errors import NotFound, StorageError, failure_details
from ansible_collections.basalt.csi.plugins.module_utils.exports import (
    ExportSettings,
    ensure_exported,
    ensure_unexported,
    ensure_withdrawn,
    info_for,
)
from ansible_collections.basalt.csi.plugins.module_utils.iscsi_target import (
    Chap,
    Export,
    Grant,
    TargetBackend,
    check_iqn,
)
from ansible_collections.basalt.csi.plugins.module_utils.model import check_name, volume_id_for
from ansible_collections.basalt.csi.plugins.module_utils.module_args import CHAP, POOL, TARGET_BACKEND, argument_spec
from ansible_collections.basalt.csi.plugins.module_utils.pool import Pool
from ansible_collections.basalt.csi.plugins.module_utils.pool_factory import open_pool
from ansible_collections.basalt.csi.plugins.module_utils.target_backends import open_target_backend
from ansible_collections.basalt.csi.plugins.module_utils.volumes import find_volume_by_name, get_volume

try:
    import rtslib_fb
except ImportError:
    rtslib_fb = None
    RTSLIB_IMPORT_ERROR: t.Optional[str] = traceback.format_exc()
else:
    RTSLIB_IMPORT_ERROR = None


def make_backend(module: AnsibleModule) -> TargetBackend:
    params = module.params
    if params["backend"] == "lio":
        if rtslib_fb is None:
            module.fail_json(msg=missing_required_lib("rtslib-fb"), exception=RTSLIB_IMPORT_ERROR)
    return open_target_backend(params["backend"], base_iqn=params["base_iqn"], portals=params["portals"] or (),
                               tgt_control_port=params["tgt_control_port"], tgt_conf=params["tgt_conf"],
                               tgt_record=params["tgt_record"], lio_save_file=params["lio_save_file"],
                               rtslib=rtslib_fb)


def volume_id(module: AnsibleModule) -> str:
    return module.params["volume_id"] or volume_id_for(check_name(module.params["volume_name"], "volume_name"))


def describe(export: t.Optional[Export], settings: ExportSettings, backend: TargetBackend,
             vid: str) -> t.Dict[str, t.Any]:
    """The export as the module returns it (and shows in diffs): CHAP user names, never secrets."""
    info = info_for(backend, settings, vid)
    grants = sorted(export.grants, key=lambda g: g.initiator_iqn) if export else []
    return dict(
        target_iqn=info.target_iqn,
        lun=info.lun,
        serial=info.serial,
        portals=list(info.portals),
        volume_id=vid,
        exported=export is not None,
        read_only=export.read_only if export else None,
        grants=[dict(initiator=g.initiator_iqn, chap_user=g.chap.user if g.chap else None,
                     mutual_chap_user=g.chap.mutual_user if g.chap else None) for g in grants],
    )


def predicted(before: t.Optional[Export], target_iqn: str, granted: t.Dict[str, t.Optional[Chap]],
              revoked: t.Iterable[str], read_only: bool) -> t.Optional[Export]:
    """The export a real run would leave (check mode): *granted* added or replaced, *revoked* gone."""
    grants = {g.initiator_iqn: g for g in before.grants} if before else {}
    grants.update({iqn: Grant(iqn, chap) for iqn, chap in granted.items()})
    for iqn in revoked:
        grants.pop(iqn, None)
    if not grants:
        return None  # the target goes with its last grant
    base = before or Export(target_iqn, 0, "", "", read_only)
    return dataclasses.replace(base, grants=tuple(grants.values()))


def present(module: AnsibleModule, pool: Pool, backend: TargetBackend, settings: ExportSettings,
            before: t.Optional[Export]) -> t.Tuple[bool, t.Optional[Export]]:
    params = module.params
    if params["volume_id"]:
        volume = get_volume(pool, params["volume_id"])
    else:
        found = find_volume_by_name(pool, params["volume_name"])
        if found is None:
            raise NotFound(f"there is no volume named {params['volume_name']!r} in the {pool.kind} pool at "
                           f"{pool.location}")
        volume = found
    chap = Chap(**params["chap"]) if params["chap"] else None  # the option's keys are its fields
    initiators = list(dict.fromkeys(params["initiators"]))  # once each, in order
    target_iqn = info_for(backend, settings, volume.id).target_iqn
    changed = False
    for initiator in initiators:
        _info, granted = ensure_exported(pool, backend, settings, volume, initiator, chap, params["read_only"],
                                         check_mode=module.check_mode)
        changed = granted or changed
    others = [g.initiator_iqn for g in before.grants if g.initiator_iqn not in initiators] if before else []
    revoked = others if params["exclusive"] else []
    for initiator in revoked:
        changed = ensure_unexported(pool, backend, settings, volume.id, initiator,
                                    check_mode=module.check_mode) or changed
    if module.check_mode:
        return changed, predicted(before, target_iqn, dict.fromkeys(initiators, chap), revoked, params["read_only"])
    return changed, backend.export(target_iqn)


def absent(module: AnsibleModule, pool: Pool, backend: TargetBackend, settings: ExportSettings,
           before: t.Optional[Export], vid: str) -> t.Tuple[bool, t.Optional[Export]]:
    initiators = module.params["initiators"]
    target_iqn = info_for(backend, settings, vid).target_iqn
    if not initiators:
        changed = ensure_withdrawn(pool, backend, settings, vid, check_mode=module.check_mode)
        return changed, None
    changed = False
    for initiator in dict.fromkeys(initiators):
        changed = ensure_unexported(pool, backend, settings, vid, initiator, check_mode=module.check_mode) or changed
    if module.check_mode:
        return changed, predicted(before, target_iqn, {}, initiators, False)
    return changed, backend.export(target_iqn)


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(
            POOL, CHAP, TARGET_BACKEND,
            volume_name=dict(type="str"),
            volume_id=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            initiators=dict(type="list", elements="str"),
            exclusive=dict(type="bool", default=False),
            read_only=dict(type="bool", default=False),
            portals=dict(type="list", elements="str"),
        ),
        mutually_exclusive=[("volume_name", "volume_id")],
        required_one_of=[("volume_name", "volume_id")],
        required_if=[("state", "present", ("initiators", "portals"))],
        supports_check_mode=True,
    )
    params = module.params
    what = f"export of volume {params['volume_id'] or params['volume_name']!r}"
    try:
        if params["state"] == "present" and not params["initiators"]:
            module.fail_json(msg=f"{what}: initiators must name at least one initiator IQN")
        for initiator in params["initiators"] or ():
            check_iqn(initiator, "initiator IQN")
        backend = make_backend(module)
        settings = ExportSettings(params["base_iqn"], tuple(params["portals"] or ()))
        pool = open_pool(params["pool"], create_layout=not module.check_mode)
        vid = volume_id(module)
        with backend.transaction():  # one consistent view of the target service, shared with the agent
            before = backend.export(info_for(backend, settings, vid).target_iqn)
            if params["state"] == "present":
                changed, after = present(module, pool, backend, settings, before)
            else:
                changed, after = absent(module, pool, backend, settings, before, vid)
        result = dict(changed=changed, export=describe(after, settings, backend, vid))
        if module._diff:
            result["diff"] = dict(before=describe(before, settings, backend, vid), after=result["export"])
        module.exit_json(**result)
    except (StorageError, OSError) as failure:
        module.fail_json(**failure_details(what, failure))


if __name__ == "__main__":
    main()
