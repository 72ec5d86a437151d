# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """The pool option of the modules that work on a pool's volumes (argument spec: module_args.POOL)."""

    DOCUMENTATION = r"""
options:
  pool:
    description:
      - The pool, as the spec string the agent takes with C(--pool), for example V(file:/var/lib/basalt/pools/file),
        V(lvm:basalt) or V(lvmthin:basalt/thin).
      - The pool's settings are the ones stored with it (see M(basalt.csi.pool)), so a playbook and the agent
        opening the same pool agree on its capacity.
    type: str
    required: true
"""
