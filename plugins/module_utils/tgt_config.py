"""The tgt config file Basalt writes (tgt-admin's syntax; tgt.service loads it at boot).

Each target carries the address ACL :data:`NO_ADDRESS` (``255.255.255.255/32``),
which no TCP peer can have: tgt-admin binds ``-I ALL`` to every target whose
config has no ``initiator-address`` line, and that would open every volume
to every host after a reboot.  See :mod:`.tgt` for why the rest looks as it does.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .errors import InvalidRequest
from .iscsi_target import Chap, Export

NO_ADDRESS = "255.255.255.255/32"


def render_config(exports: Sequence[Export]) -> str:
    """tgt-admin's config syntax for *exports*; see the module docstring for the NO_ADDRESS line."""
    lines = [
        "# Written by basalt (basalt_core.tgt.TgtBackend.persist); do not edit: it is rewritten.",
        "# Loaded at boot by tgt.service (tgt-admin -e -c /etc/tgt/targets.conf includes conf.d/*.conf).",
        f"# initiator-address {NO_ADDRESS} matches no host; it stops tgt-admin from binding ALL.",
        "",
    ]
    for item in exports:
        if not item.device:
            continue  # a target left half-made by a crash: nothing to restore (reconciliation completes it)
        for value in (item.target_iqn, item.device, item.serial):
            if not value or any(c.isspace() or c in "<>#\"" for c in value):
                raise InvalidRequest(f"{value!r} cannot be written to a tgt config file")
        lines.append(f"<target {item.target_iqn}>")
        lines.append(f"    <backing-store {item.device}>")
        lines.append(f"        lun {item.lun}")
        lines.append(f"        scsi_sn {item.serial}")
        lines.append(f"        readonly {int(item.read_only)}")
        lines.append("    </backing-store>")
        lines.append(f"    initiator-address {NO_ADDRESS}")
        mutual: Optional[Chap] = None
        incoming: Dict[str, str] = {}
        for grant in item.grants:
            lines.append(f"    initiator-name {grant.initiator_iqn}")
            if grant.chap is not None:
                incoming[grant.chap.user] = grant.chap.password
                if grant.chap.mutual:
                    mutual = grant.chap
        for user, password in incoming.items():
            lines.append(f"    incominguser {user} {password}")
        if mutual is not None:
            lines.append(f"    outgoinguser {mutual.mutual_user} {mutual.mutual_password}")
        lines.append("</target>")
        lines.append("")
    return "\n".join(lines)
