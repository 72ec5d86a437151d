"""A storage host killed at each point of ControllerPublish / ControllerUnpublish (tgt): real tgtd, real agent.

The crash order is docs/side-effects-iscsi.md's: the config file carrying the grant record (with the node's
CHAP secret) is written before the account exists, the publication record last.  Wherever the agent dies,
its restart must leave nothing unacknowledged exported (no publication record: the reconciliation removes
the target, the grant leaves the config file and tgtd), and the CO's retry must then succeed with the same
secret.  An acknowledged publish killed during its unpublish must end withdrawn too.  crashpoints.py puts a
``tgtadm`` wrapper first on the agent's PATH that SIGKILLs it right after the matching command, and
tgtd_crashpoint.py does the same on tgtd's socket (the agent talks to tgtd there when it knows the layout).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import grpc
import pytest
from agent_iscsi_testlib import (
    CHAP,
    NODE_A,
    create,
    login,
    mapped_nodes,
    publish,
    saved_grants,
    storage_host_args,
    wait_reconciled,
)
from basalt_csi_testlib import Agent, block_cap, cleanup_root, make_root
from crashpoints import CrashPoints
from libiscsi_client import IscsiError
from tgtd_crashpoint import TgtdSocketCrashPoint
from tgtd_testlib import Tgtd, accounts

from basalt_agent.proto import csi_pb2 as csi
from basalt_core import tgt


@dataclass
class TgtdCrashPoint:
    """A crash point on whichever way the agent reaches tgtd: a ``tgtadm`` process or tgtd's socket."""

    tgtadm: CrashPoints
    socket: TgtdSocketCrashPoint

    def arm(self, arg: str) -> None:
        self.tgtadm.arm("tgtadm", "after", arg=arg)
        self.socket.arm(arg)

    def fired(self, timeout: float = 30.0) -> Dict[str, object]:
        deadline = time.monotonic() + timeout
        while self.socket.outcome is None and not os.path.exists(self.tgtadm._arm("tgtadm") + ".fired"):
            assert time.monotonic() < deadline, "the tgtd crash point never fired"
            time.sleep(0.02)
        outcome = self.socket.outcome or self.tgtadm.fired("tgtadm")
        self.tgtadm.disarm("tgtadm")
        self.socket.arm(None)
        return outcome


@pytest.fixture
def host(tgtd: Tgtd) -> Iterator[Tuple[Agent, Tgtd, TgtdCrashPoint]]:
    root = make_root("iscsi-publish-crash")
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1",
                  extra_args=storage_host_args(tgtd, root, *mapped_nodes()))
    points = TgtdCrashPoint(CrashPoints(root).wrap("tgtadm"), TgtdSocketCrashPoint(root, tgtd.control_port))
    agent.extra_env.update({**points.tgtadm.env(), **points.socket.env()})
    try:
        yield agent.start(), tgtd, points
    finally:
        agent.stop()
        points.socket.close()
        cleanup_root(root)


def killed(call: object, request: object) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        call(request)  # type: ignore[operator]
    assert failure.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), failure.value


# (a target made but nothing recorded, the kill before the config file's write, is test_reconcile.py's STRAY)
@pytest.mark.parametrize("after", ["--password", "--initiator-name"],
                         ids=["secret recorded, account made", "exported, publication not recorded"])
def test_a_publish_killed_anywhere_leaves_nothing_exported_and_the_retry_works(
        host: Tuple[Agent, Tgtd, TgtdCrashPoint], after: str) -> None:
    agent, daemon, points = host
    volume_id = create(agent, "crash-" + after.strip("-"), block_cap()).volume_id
    request = csi.ControllerPublishVolumeRequest(volume_id=volume_id, node_id="node-a",
                                                 volume_capability=block_cap(), secrets=CHAP)
    points.arm(after)
    killed(agent.ctl.ControllerPublishVolume, request)
    assert points.fired()["outcome"] == "after"
    agent.kill()
    agent.start()
    summary = wait_reconciled(agent, 2)
    assert summary["failed"] == 0, summary
    # nothing the CO never saw acknowledged stays exported, in tgtd or in the file tgt.service loads at boot
    assert tgt.TgtBackend(control_port=daemon.control_port).targets() == []
    assert accounts(daemon.control_port) == []
    assert saved_grants(agent) == {}
    # the CO's retry: exported again, with the secret it sends
    context = publish(agent, volume_id, "node-a", block_cap())
    with login(context, NODE_A) as session:
        assert session.read(0, 512).good
    with pytest.raises(IscsiError):
        login(context, NODE_A, password="Not-The-Secret-1")
    assert saved_grants(agent) == {context["basalt.dev/iscsi-target"]: {NODE_A: {
        "user": CHAP["node.session.auth.username"], "password": CHAP["node.session.auth.password"],
        "mutual_user": None, "mutual_password": None}}}


def test_an_unpublish_killed_after_its_tgtd_change_ends_withdrawn(host: Tuple[Agent, Tgtd, TgtdCrashPoint]) -> None:
    agent, daemon, points = host
    volume_id = create(agent, "crash-unpublish", block_cap()).volume_id
    context = publish(agent, volume_id, "node-a", block_cap())
    points.arm("--force")  # the target deleted; the config file still holds the grant
    killed(agent.ctl.ControllerUnpublishVolume,
           csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-a"))
    assert points.fired()["outcome"] == "after"
    agent.kill()
    assert context["basalt.dev/iscsi-target"] in saved_grants(agent)  # what a boot would restore, until...
    agent.start()
    assert wait_reconciled(agent, 2)["failed"] == 0
    assert saved_grants(agent) == {} and tgt.TgtBackend(control_port=daemon.control_port).targets() == []
    agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-a"))
    assert accounts(daemon.control_port) == []
