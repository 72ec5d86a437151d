"""The target service's state is every volume's: concurrent publishes, and a target service that restarted empty.

Real tgtd, a real storage-host agent, libiscsi logins.  Twelve ControllerPublish
calls for twelve volumes to twelve nodes, each with a CHAP user tgtd has never
seen, arrive at once: each must answer OK, the grant record must hold every
grant, and after tgtd restarts empty and the agent restarts, the reconciliation
must bring back every export so that each node logs in with its own secret.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterator, List

import pytest
from agent_iscsi_testlib import create, image_of, publish, running_storage_host, wait_reconciled
from basalt_csi_testlib import Agent, block_cap
from libiscsi_client import IscsiError, Session
from tgtd_testlib import Tgtd, accounts

from basalt_agent.proto import csi_pb2 as csi
from basalt_core import tgt
from basalt_core.tgt_config import record_in

NODE_BASE = "iqn.2026-11.dev.basalt.shared"
NODES = 12


def node_iqn(node: str) -> str:
    return f"{NODE_BASE}:{node}"


def secrets_of(node: str) -> Dict[str, str]:
    return {"node.session.auth.username": f"user-{node}", "node.session.auth.password": f"Secret-Of-{node}-12"}


def log_in(context: Dict[str, str], node: str, password: str = "") -> Session:
    secrets = secrets_of(node)
    return Session(context["basalt.dev/iscsi-portals"], context["basalt.dev/iscsi-target"], node_iqn(node),
                   lun=int(context["basalt.dev/iscsi-lun"]), user=secrets["node.session.auth.username"],
                   password=password or secrets["node.session.auth.password"])


@pytest.fixture
def storage_host(tgtd: Tgtd) -> Iterator[Agent]:
    with running_storage_host(tgtd, "iscsi-shared", "--iscsi-initiator-base", NODE_BASE) as agent:
        yield agent


def grant_record(agent: Agent) -> Dict[str, Any]:
    """The grant record the agent's tgt config file carries (0600: CHAP secrets)."""
    path = os.path.join(agent.root, "tgt-basalt.conf")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        doc = record_in(handle.read())
    assert doc is not None
    return dict(doc["targets"])


def test_concurrent_publishes_with_new_chap_users_all_hold(storage_host: Agent, tgtd: Tgtd) -> None:
    agent = storage_host
    nodes = [f"node-{i}" for i in range(NODES)]
    volumes = {node: create(agent, f"shared-{node}", block_cap()).volume_id for node in nodes}

    def publish_one(node: str) -> Dict[str, str]:
        return publish(agent, volumes[node], node, block_cap(), secrets=secrets_of(node))
    with ThreadPoolExecutor(NODES) as pool:  # all at once: each answer OK, or the call raises here
        contexts = dict(zip(nodes, pool.map(publish_one, nodes)))

    record = grant_record(agent)
    for node in nodes:
        grants = record[contexts[node]["basalt.dev/iscsi-target"]]["grants"]
        assert grants == {node_iqn(node): {"user": f"user-{node}", "password": f"Secret-Of-{node}-12",
                                           "mutual_user": None, "mutual_password": None}}
    assert sorted(accounts(tgtd.control_port)) == sorted(f"user-{node}" for node in nodes)
    with open(os.path.join(agent.root, "tgt-basalt.conf")) as handle:
        persisted = handle.read()
    assert all(f"initiator-name {node_iqn(node)}" in persisted for node in nodes)

    agent.stop()
    tgtd.restart_empty()
    agent.start()
    summary = wait_reconciled(agent, 2)
    assert (summary["failed"], summary["skipped"]) == (0, 0), summary
    for node in nodes:
        with log_in(contexts[node], node) as session:
            assert session.read(0, 512).good
        with pytest.raises(IscsiError):  # each target still knows its own node's secret only
            log_in(contexts[node], node, password="Not-The-Secret-1")
    for node in nodes:
        agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volumes[node],
                                                                                 node_id=node))
        agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volumes[node]))
    assert tgt.TgtBackend(control_port=tgtd.control_port).targets() == [] and accounts(tgtd.control_port) == []


def test_unpublish_after_the_target_service_restarted_empty_releases_the_device(storage_host: Agent,
                                                                                tgtd: Tgtd) -> None:
    agent = storage_host
    volume_id = create(agent, "orphaned", block_cap()).volume_id
    publish(agent, volume_id, "node-0", block_cap(), secrets=secrets_of("node-0"))
    assert agent.loops_for(image_of(agent, volume_id)) != []
    tgtd.restart_empty()  # under the running agent: the target and the account are gone

    agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-0"))
    leftover: List[str] = agent.loops_for(image_of(agent, volume_id))
    assert leftover == [], f"the volume's loop device {leftover} stayed attached"
    assert grant_record(agent) == {}
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=volume_id))
