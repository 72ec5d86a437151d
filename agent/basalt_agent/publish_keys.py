"""The keys of what controller and node pass each other through Kubernetes: publish context and secrets.

ControllerPublish answers with a publish context that kubelet hands to
NodeStage/NodePublish unchanged; the controller-publish and node-stage secrets
carry CHAP.  Both ends read the same names from here.
"""

from __future__ import annotations

from typing import Mapping, Optional

from basalt_core.errors import InvalidRequest
from basalt_core.iscsi_target import Chap

from .errors import invalid

POOL_KEY = "basalt.dev/pool"
STORAGE_NODE_KEY = "basalt.dev/storage-node"
TARGET_KEY = "basalt.dev/iscsi-target"
PORTALS_KEY = "basalt.dev/iscsi-portals"
LUN_KEY = "basalt.dev/iscsi-lun"
SERIAL_KEY = "basalt.dev/serial"
# CSI secrets (controller-publish and node-stage secrets) carrying CHAP, named
# after the open-iscsi settings they end up in.
CHAP_USER = "node.session.auth.username"
CHAP_PASSWORD = "node.session.auth.password"
CHAP_MUTUAL_USER = "node.session.auth.username_in"
CHAP_MUTUAL_PASSWORD = "node.session.auth.password_in"


def chap_from_secrets(secrets: Mapping[str, str]) -> Optional[Chap]:
    """CHAP credentials from CSI secrets; None when they carry none."""
    if CHAP_USER not in secrets and CHAP_PASSWORD not in secrets:
        return None
    try:
        return Chap(secrets.get(CHAP_USER, ""), secrets.get(CHAP_PASSWORD, ""),
                    secrets.get(CHAP_MUTUAL_USER), secrets.get(CHAP_MUTUAL_PASSWORD))
    except InvalidRequest as error:
        # Never echo the values: the message names the keys only.
        raise invalid(f"CHAP secrets ({CHAP_USER}, {CHAP_PASSWORD}, ...) are not usable: {error}") from None
