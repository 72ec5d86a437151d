"""A storage-host agent exporting over a private tgtd, and the CSI calls and logins the iSCSI tests share."""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from basalt_csi_testlib import Agent, cleanup_root, iter_log_records, make_root, retry_until
from libiscsi_client import Session
from prometheus_client.parser import text_string_to_metric_families

from basalt_agent.proto import csi_pb2 as csi
from basalt_core.tgt_config import record_in

MiB = 1 << 20
BASE_IQN = "iqn.2026-11.dev.basalt"  # the agent's default --iscsi-base-iqn
NODE_A = "iqn.2026-11.dev.basalt.test:node-a"
NODE_B = "iqn.2026-11.dev.basalt.test:node-b"
CHAP = {"node.session.auth.username": "node-a-user", "node.session.auth.password": "Secret-Of-A-1234"}
RECONCILED = "iscsi reconciliation finished"


def storage_host_args(tgtd: Any, root: str, *extra: str) -> List[str]:
    return ["--iscsi-backend", "tgt", "--tgt-control-port", str(tgtd.control_port),
            "--tgt-conf", os.path.join(root, "tgt-basalt.conf"), "--iscsi-portal", tgtd.portal, *extra]


@contextlib.contextmanager
def running_storage_host(tgtd: Any, tag: str, *extra: str) -> Iterator[Agent]:
    """A storage-host agent (file pool, node id ``storage-1``) exporting through *tgtd*; stopped and cleaned up."""
    root = make_root(tag)
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1",
                  extra_args=storage_host_args(tgtd, root, *extra))
    try:
        yield agent.start()
    finally:
        agent.stop()
        cleanup_root(root)


def saved_grants(agent: Agent) -> Dict[str, Any]:
    """The grants the agent's tgt config file records: target IQN -> initiator IQN -> CHAP."""
    with open(os.path.join(agent.root, "tgt-basalt.conf")) as handle:
        doc = record_in(handle.read())
    return {iqn: entry["grants"] for iqn, entry in (doc or {"targets": {}})["targets"].items()}


def mapped_nodes() -> List[str]:
    return ["--iscsi-initiator", f"node-a={NODE_A}", "--iscsi-initiator", f"node-b={NODE_B}"]


def create(agent: Agent, name: str, cap: Any) -> Any:
    return agent.ctl.CreateVolume(csi.CreateVolumeRequest(
        name=name, capacity_range=csi.CapacityRange(required_bytes=4 * MiB), volume_capabilities=[cap])).volume


def publish(agent: Agent, volume_id: str, node: str, cap: Any, readonly: bool = False,
            secrets: Dict[str, str] = CHAP) -> Dict[str, str]:
    return dict(agent.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node, volume_capability=cap, readonly=readonly, secrets=secrets)
    ).publish_context)


def login(context: Dict[str, str], initiator: str, password: str = CHAP["node.session.auth.password"]) -> Session:
    return Session(context["basalt.dev/iscsi-portals"].split(",")[0], context["basalt.dev/iscsi-target"],
                   initiator, lun=int(context["basalt.dev/iscsi-lun"]), user=CHAP["node.session.auth.username"],
                   password=password)


def image_of(agent: Agent, volume_id: str) -> str:
    return os.path.join(agent.pool, "volumes", volume_id + ".img")


def reconciliations(agent: Agent) -> List[Dict[str, Any]]:
    """The summaries of the agent's reconciliations so far (one per start), oldest first."""
    return [r for r in iter_log_records(agent.log()) if r.get("msg") == RECONCILED]


def wait_reconciled(agent: Agent, starts: int, timeout: float = 60.0) -> Dict[str, Any]:
    """Wait for the reconciliation of the agent's *starts*-th start; return its summary."""
    assert retry_until(lambda: len(reconciliations(agent)) >= starts, timeout), agent.log()[-4000:]
    return reconciliations(agent)[starts - 1]


def scrape(agent: Agent) -> Dict[Tuple[str, str], float]:
    """(metric, its kind or result label) -> value, from the agent's /metrics (``--metrics-address``)."""
    address = agent.extra_args[agent.extra_args.index("--metrics-address") + 1]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=15) as answer:
        text = answer.read().decode()
    return {(sample.name, sample.labels.get("kind", sample.labels.get("result", ""))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}
