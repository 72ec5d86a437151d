"""``basalt doctor``/``gc`` on a storage host with a real (private) tgtd and open-iscsi's node database.

A target under the agent's base IQN whose volume has no record and a node record for such a target
are leftovers; a published volume's target, a foreign target, a node record that a node record names
and a foreign node record stay. The base IQN is the test's own, so that other tests' node records
(the node database is the host's) are never this test's leftovers.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from agent_iscsi_testlib import (
    NODE_A,
    NODE_B,
    RECONCILED,
    create,
    mapped_nodes,
    publish,
    scrape,
    storage_host_args,
)
from basalt_csi_testlib import Agent, block_cap, cleanup_root, make_root, retry_until
from tgtd_testlib import Loop, Tgtd, free_port

from basalt_agent import cli
from basalt_agent.nodestate import NodeRecord, NodeState
from basalt_core import iscsiadm, tgt
from basalt_core.iscsi_target import Chap
from basalt_core.target_backends import open_target_backend

BASE = f"iqn.2026-11.dev.basalt.t{uuid.uuid4().hex[:8]}"
FOREIGN = f"iqn.2003-01.org.example.other:disk-{uuid.uuid4().hex[:8]}"


def stray_target() -> str:
    return f"{BASE}:vol-{uuid.uuid4().hex}"


@pytest.fixture
def host(tgtd: Tgtd) -> Iterator[Agent]:
    root = make_root("operator-tgt")
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1",
                  extra_args=[*storage_host_args(tgtd, root, "--iscsi-base-iqn", BASE, *mapped_nodes()),
                              "--metrics-address", f"127.0.0.1:{free_port()}"])
    try:
        yield agent.start()
    finally:
        agent.stop()
        cleanup_root(root)


@pytest.fixture
def node_records(tgtd: Tgtd) -> Iterator[List[str]]:
    """Node records this test makes in the host's database; whatever is left of them goes at the end."""
    made: List[str] = []
    yield made
    for target in made:
        subprocess.run(["iscsiadm", "-m", "node", "-o", "delete", "-T", target, "-p", tgtd.portal],
                       capture_output=True, check=False, timeout=30)


def basalt(capsys: Any, agent: Agent, *args: str) -> Any:
    capsys.readouterr()
    status = cli.main([*args, "--endpoint", f"unix://{agent.socket}", *agent.command(), "-o", "json"])
    return status, json.loads(capsys.readouterr().out)


def test_doctor_and_gc_on_a_storage_host(host: Agent, tgtd: Tgtd, loop: Loop, node_records: List[str],
                                         tmp_path: Path, capsys: Any) -> None:
    assert retry_until(lambda: RECONCILED in host.log(), 60), host.log()[-3000:]
    volume = create(host, "published", block_cap())
    publish(host, volume.volume_id, "node-a", block_cap())
    published = f"{BASE}:{volume.volume_id}"
    stray = stray_target()
    ours = tgt.TgtBackend(control_port=tgtd.control_port, base_iqn=BASE, conf_path=str(tmp_path / "stray.conf"),
                          record_path=str(tmp_path / "stray-grants.json"))
    ours.ensure_export(stray, loop.device, "0123456789abcdef", False)
    ours.ensure_grant(stray, NODE_A, None)
    other = tgt.TgtBackend(control_port=tgtd.control_port, conf_path=str(tmp_path / "other.conf"),
                           record_path=str(tmp_path / "other-grants.json"))
    other.ensure_export(FOREIGN, str(loop.backing_file), "fedcba9876543210", False)

    orphan_node, attached_node = stray_target(), stray_target()
    for target in (orphan_node, attached_node, FOREIGN):
        node_records.append(target)
        subprocess.run(["iscsiadm", "-m", "node", "-o", "new", "-T", target, "-p", tgtd.portal],
                       capture_output=True, check=True, timeout=30)
    NodeState(os.path.join(host.state_dir, "node")).save(NodeRecord(volume_id="vol-x", iscsi_target=attached_node))

    expected = sorted([f"export {stray}: its volume has no record",
                       f"iSCSI node record {orphan_node} ({tgtd.portal}): no node record names it"])
    status, findings = basalt(capsys, host, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 1
    assert sorted(f["what"] for f in findings if f["safe_to_remove"]) == expected, findings
    assert any(f["check"] == "target service" and f["status"] == "ok" for f in findings)

    metrics = scrape(host)
    assert metrics[("basalt_orphans", "export")] == 1 and metrics[("basalt_iscsi_exports", "")] == 2

    status, listed = basalt(capsys, host, "exports", "list")
    assert status == 0
    assert {e["target_iqn"]: e["owned"] for e in listed} == {published: True, stray: False}

    status, removed = basalt(capsys, host, "gc", "--apply", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 0 and sorted(f["what"] for f in removed) == expected
    shown = tgtd.show()
    assert published in shown and FOREIGN in shown and stray not in shown
    left = {target for target, _portal in iscsiadm.nodes()}
    assert {attached_node, FOREIGN} <= left and orphan_node not in left
    _, findings = basalt(capsys, host, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert [f for f in findings if f["safe_to_remove"]] == []

    # A grant that no publication record wants, on a published volume's target: reported while the agent
    # runs (it may be a ControllerPublish in flight), removed by gc once it does not; the recorded one stays.
    stale = f"grant to {NODE_B} on {published}: no publication record wants it"
    agents_backend = open_target_backend("tgt", base_iqn=BASE, state_dir=host.state_dir,
                                         tgt_control_port=tgtd.control_port,
                                         tgt_conf=os.path.join(host.root, "tgt-basalt.conf"))
    with agents_backend.transaction():  # a ControllerPublish to node-b that crashed before its record
        agents_backend.ensure_grant(published, NODE_B, Chap("node-b-user", "Secret-Of-B-1234"))
        agents_backend.persist()
    assert NODE_B in (Path(host.root) / "tgt-basalt.conf").read_text()
    _, findings = basalt(capsys, host, "doctor", "--kubelet-root", str(tmp_path / "kubelet"))
    assert [(f["status"], f["safe_to_remove"]) for f in findings if f["what"] == stale] == [("warn", False)]
    assert host.stop() == 0
    status, removed = basalt(capsys, host, "gc", "--apply", "--kubelet-root", str(tmp_path / "kubelet"))
    assert status == 0 and [f["what"] for f in removed] == [stale], removed
    kept_export = agents_backend.export(published)
    assert kept_export is not None and [grant.initiator_iqn for grant in kept_export.grants] == [NODE_A]
    assert NODE_B not in (Path(host.root) / "tgt-basalt.conf").read_text()  # persisted too
    other.remove_export(FOREIGN)
