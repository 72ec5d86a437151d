"""Role defaults resolved without a play: their plain-string templates rendered as Ansible renders them.

Tests that read roles/*/defaults/main.yml directly (test_role_defaults, the cluster objects' settings)
resolve them here, on a host as a play without gathered facts sees it.
"""

from __future__ import annotations

from typing import Any, Dict

import jinja2

# What a play gives the defaults role on a host where facts were not gathered and systemd runs (its tasks'
# stat of /run/systemd/system).
UNGATHERED_SYSTEMD_HOST: Dict[str, Any] = {
    "inventory_hostname": "node-1",
    "ansible_facts": {},
    "basalt_systemd_dir": {"stat": {"isdir": True}},
}


class _Undefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """Ansible's undefined: an attribute of an undefined value is undefined too; rendering one fails."""


def resolved(values: Dict[str, Any], **host: Any) -> Dict[str, Any]:
    """*values* with their references to each other resolved, on UNGATHERED_SYSTEMD_HOST updated by *host*."""
    env = jinja2.Environment(undefined=_Undefined)
    env.filters["default"] = lambda value, fallback=None: fallback if isinstance(value, jinja2.Undefined) else value
    context = {**UNGATHERED_SYSTEMD_HOST, **host}
    result = dict(values)
    for _ in range(len(result)):
        for name, value in result.items():
            if isinstance(value, str) and "{{" in value:
                result[name] = env.from_string(value).render({**result, **context})
    return result
