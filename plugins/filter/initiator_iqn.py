# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The basalt.csi.initiator_iqn filter: a node's initiator IQN as the storage hosts derive it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: initiator_iqn
short_description: A node's iSCSI initiator IQN as Basalt's storage hosts expect it
version_added: 0.1.0
author: Basalt developers
description:
  - Derives C(BASE:<node id>) with the agent's own rule (lower-cased; characters other than C(a-z 0-9 . -)
    replaced and a hash added when that changed the id), so the name written on a node is the one the
    storage hosts' agents grant access to.
positional: node_id
options:
  _input:
    description: The base IQN (C(basalt_iscsi_initiator_base)).
    type: str
    required: true
  node_id:
    description: The node's id (C(basalt_node_id)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: The node's initiator name
  ansible.builtin.debug:
    msg: "{{ 'iqn.2026-11.dev.basalt.node' | basalt.csi.initiator_iqn('Worker_1') }}"
"""

RETURN = r"""
_value:
  description: The initiator IQN.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.basalt.csi.plugins.module_utils.errors import InvalidRequest
from ansible_collections.basalt.csi.plugins.module_utils.iscsi_target import initiator_iqn_for


def initiator_iqn(base_iqn: str, node_id: str) -> str:
    try:
        return initiator_iqn_for(base_iqn, node_id)
    except InvalidRequest as error:
        raise AnsibleFilterError(str(error)) from None


class FilterModule:
    def filters(self) -> dict:
        return {"initiator_iqn": initiator_iqn}
