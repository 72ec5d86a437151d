"""A node's own initiator IQN, as the storage host will expect it, kept in open-iscsi's initiatorname file.

The storage host computes a node's IQN from its node id (``--iscsi-initiator-base``)
or takes it from the explicit map; the node agent, given the same settings,
knows the same name.  It checks that open-iscsi's file holds it (NodeGetInfo
answers FAILED_PRECONDITION when it names another IQN, so kubelet's
registration of the driver fails visibly instead of every later login), or, with
``--iscsi-manage-initiatorname``, writes it there at start.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

from basalt_core import iscsiadm
from basalt_core.atomicfile import write_atomic
from basalt_core.errors import NotFound, Precondition
from basalt_core.iscsi_target import check_iqn, initiator_iqn_for

from .config import Config

log = logging.getLogger("basalt.agent")
KEY = "InitiatorName="


class InitiatorName:
    def __init__(self, path: str, wanted: str, manage: bool) -> None:
        self.path = path
        self.wanted = check_iqn(wanted, "initiator IQN")
        self.manage = manage

    def current(self) -> Optional[str]:
        try:
            return iscsiadm.initiator_name(self.path)
        except NotFound:
            return None

    def ensure(self) -> bool:
        """At start: with *manage*, make the file name :attr:`wanted` (other lines kept; True when written);
        without, only warn when there is no file."""
        current = self.current()
        if not self.manage or current == self.wanted:
            if current is None:
                log.warning("%s is missing (no open-iscsi?): this node cannot attach iSCSI volumes as %s",
                            self.path, self.wanted)
            return False
        lines: List[str] = []
        mode = 0o600
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = [line for line in handle.read().splitlines() if not line.startswith(KEY)]
            mode = os.stat(self.path).st_mode & 0o777
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        lines.append(KEY + self.wanted)
        write_atomic(self.path, ("\n".join(lines) + "\n").encode(), mode=mode)
        log.warning("wrote initiator name %s to %s (was %s); restart iscsid if it is running: it reads the "
                    "file when it starts", self.wanted, self.path, current or "unset")
        return True

    def check(self) -> None:
        """Refuse when the file names another initiator (every login would fail); a missing file is a node
        without open-iscsi, which can still use local volumes (its remote stages fail on their own)."""
        current = self.current()
        if current is not None and current != self.wanted:
            raise Precondition(f"{self.path} names initiator {current}, but the storage hosts expect "
                               f"{self.wanted} for this node: set InitiatorName={self.wanted} there (and restart "
                               "iscsid), or run the agent with --iscsi-manage-initiatorname")


def for_node(settings: Config) -> Optional[InitiatorName]:
    """This node's initiator name, when the settings say what it must be (the map, else the base)."""
    wanted = settings.iscsi_initiators.get(settings.node_id)
    if wanted is None and settings.iscsi_initiator_base:
        wanted = initiator_iqn_for(settings.iscsi_initiator_base, settings.node_id)
    if wanted is None:
        return None
    return InitiatorName(settings.iscsi_initiatorname_file, wanted, settings.iscsi_manage_initiatorname)
