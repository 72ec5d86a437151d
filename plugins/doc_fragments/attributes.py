# Copyright: Basalt developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations


class ModuleDocFragment:
    """The attributes every basalt.csi module documents; each module states its support (and details).

    READ_ONLY (basalt.csi.attributes.read_only) is the whole block, support included, of the info modules.
    """

    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the changed status it predicts without changing the host.
  diff_mode:
    description: Returns details on what has changed (or would change, in check mode) in C(diff).
"""

    READ_ONLY = r"""
attributes:
  check_mode:
    description: Reads only, so it runs in check mode as it does otherwise.
    support: full
  diff_mode:
    description: Changes nothing, so there is no diff.
    support: none
"""
