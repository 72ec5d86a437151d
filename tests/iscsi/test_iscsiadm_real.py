"""basalt_core.iscsiadm against the real open-iscsi node database (no iscsid or kernel login needed).

Each test uses its own target IQN (random suffix) and deletes exactly the
records it created; /etc/iscsi/nodes and /etc/iscsi/ifaces are removed
afterwards only if the test created them and they are empty.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Iterator

import pytest

from basalt_core import iscsiadm
from basalt_core.iscsi_target import Chap

NODES = "/etc/iscsi/nodes"
IFACES = "/etc/iscsi/ifaces"  # iscsiadm creates it (empty) on first use
pytestmark = pytest.mark.skipif(shutil.which("iscsiadm") is None or os.geteuid() != 0,
                                reason="needs root and iscsiadm (package open-iscsi)")


@pytest.fixture
def target() -> Iterator[str]:
    had = {path: os.path.isdir(path) for path in (NODES, IFACES)}
    iqn = f"iqn.2026-11.io.basalt.test:{uuid.uuid4().hex[:12]}"
    try:
        yield iqn
    finally:
        for portal in ("127.0.0.1:3260", "127.0.0.1:3261"):
            subprocess.run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-o", "delete"],
                           capture_output=True, check=False, timeout=30)
        for path, existed in had.items():
            if not existed and os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)


def test_node_lifecycle(target: str) -> None:
    portal = "127.0.0.1:3260"
    chap = Chap("node-a", "secret-a-0123456", "target-1", "secret-t-6543210")
    assert iscsiadm.node_settings(target, portal) is None
    assert iscsiadm.ensure_node(target, portal, chap) is True
    assert iscsiadm.ensure_node(target, portal, chap) is False
    settings = iscsiadm.node_settings(target, portal)
    assert settings is not None
    assert (settings["node.startup"], settings["node.session.auth.authmethod"]) == ("automatic", "CHAP")
    assert (settings["node.session.auth.username"], settings["node.session.auth.password"]) == (chap.user,
                                                                                               chap.password)
    assert settings["node.session.auth.password_in"] == "secret-t-6543210"
    record = os.path.join(NODES, target, "127.0.0.1,3260")
    assert oct(os.stat(record).st_mode & 0o777) == "0o600", "open-iscsi keeps the secrets in a 0600 file"

    rotated = Chap("node-a", "secret-a-rotated")
    assert iscsiadm.ensure_node(target, portal, rotated) is True
    settings = iscsiadm.node_settings(target, portal)
    assert settings is not None
    assert settings["node.session.auth.password"] == "secret-a-rotated"
    assert settings["node.session.auth.username_in"] == "" and settings["node.session.auth.password_in"] == ""

    assert iscsiadm.ensure_node(target, portal, None) is True
    settings = iscsiadm.node_settings(target, portal)
    assert settings is not None and settings["node.session.auth.authmethod"] == "None"
    assert settings["node.session.auth.password"] == ""

    assert iscsiadm.logout(target, portal) is False  # no session (rc 21)
    assert iscsiadm.delete_node(target, portal) is True
    assert iscsiadm.delete_node(target, portal) is False
    assert iscsiadm.node_settings(target, portal) is None


def test_login_here_fails_without_iscsid(target: str) -> None:
    """On this machine iscsid cannot run (no NETLINK_ISCSI): login reports rc 20, which we classify."""
    portal = "127.0.0.1:3261"
    iscsiadm.ensure_node(target, portal, None)
    if subprocess.run(["pgrep", "-x", "iscsid"], capture_output=True, check=False).returncode == 0:
        pytest.skip("an iscsid runs here; the no-iscsid case cannot be observed")
    with pytest.raises(iscsiadm.LoginFailed) as caught:
        iscsiadm.login(target, portal)
    assert (caught.value.rc, caught.value.reason) == (20, "no-iscsid")
    assert iscsiadm.sessions() == []
