"""Argument specs the Ansible modules share, as plain dicts (the core imports no ansible).

Each group is documented once, by the doc fragment named beside it
(``plugins/doc_fragments/``); a module takes what it needs with
:func:`argument_spec` and adds its own options.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

from .iscsi_target import DEFAULT_BASE_IQN
from .target_backends import BACKENDS
from .tgt_paths import DEFAULT_CONF, DEFAULT_RECORD

Spec = Dict[str, Dict[str, Any]]

#: basalt.csi.pool
POOL: Spec = dict(pool=dict(type="str", required=True))

#: basalt.csi.iscsi.CHAP
CHAP: Spec = dict(chap=dict(
    type="dict",
    options=dict(
        user=dict(type="str", required=True),
        password=dict(type="str", required=True, no_log=True),
        mutual_user=dict(type="str"),
        mutual_password=dict(type="str", no_log=True),
    ),
    required_together=[("mutual_user", "mutual_password")],
))

#: basalt.csi.iscsi.TARGET_BACKEND
TARGET_BACKEND: Spec = dict(
    backend=dict(type="str", choices=list(BACKENDS), default="tgt"),
    base_iqn=dict(type="str", default=DEFAULT_BASE_IQN),
    tgt_control_port=dict(type="int"),
    tgt_conf=dict(type="path", default=DEFAULT_CONF),
    tgt_record=dict(type="path", default=DEFAULT_RECORD),
    lio_save_file=dict(type="path"),
)


def argument_spec(*shared: Spec, **own: Dict[str, Any]) -> Spec:
    """A module's argument spec: fresh copies of the *shared* groups, then its *own* options."""
    spec: Spec = {}
    for group in shared:
        spec.update(copy.deepcopy(group))
    spec.update(own)
    return spec
