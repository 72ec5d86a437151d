"""Chaos on a tgt storage host: the agent SIGKILLed at random moments while volumes are published and written.

A storage-host agent (file pool) exports through a private tgtd to three node
ids, each with its own initiator IQN and CHAP secret.  ``chaoslib.Chaos``
plays the CO (its killer thread and its retrying ``call``): create, publish to
a node, write through the export with libiscsi (pattern data, acknowledged once
the FUA write returns GOOD), read back, unpublish, snapshot, clone, restore,
delete.  At the end tgtd must hold exactly what the acknowledged publications
want (one target per published volume, the publishing node's IQN its only ACL,
that node's CHAP account bound, the grant record the same), every acknowledged
write must read back through a fresh publish, and once everything is deleted
nothing is left: targets, accounts, grants, loop devices, pool records, temp
files.  The kernel initiator cannot log in here, so no NodeStage: the VM tier's
LIO chaos run (tests/vm/guest/check_chaos_lio.py) stages through open-iscsi.
``BASALT_CHAOS_KILLS`` (default 8) and ``BASALT_CHAOS_SEED`` as in test_chaos.py.
"""

from __future__ import annotations

import glob
import os
import random
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
from agent_iscsi_testlib import image_of, reconciliations, running_storage_host, saved_grants, wait_reconciled
from basalt_csi_testlib import Agent, block_cap, pattern
from chaoslib import Action, Chaos, Vol, assert_nothing_left, kills_and_seed, pool_state
from libiscsi_client import IscsiError, Session
from tgtd_testlib import Tgtd, accounts

from basalt_agent.proto import csi_pb2 as csi
from basalt_core import tgt

DEFAULT_KILLS = 8
NODE_BASE = "iqn.2026-11.dev.basalt.chaos"
NODES = ("node-0", "node-1", "node-2")
SLOT = 64 * 1024  # a write fills the start of one slot: later writes replace earlier ones whole
IO_PATIENCE = 30.0  # seconds an initiator keeps trying to log in to a publication it was given
CONTEXT_TARGET, CONTEXT_PORTALS, CONTEXT_LUN = ("basalt.dev/iscsi-target", "basalt.dev/iscsi-portals",
                                                "basalt.dev/iscsi-lun")


def secrets_of(node: str) -> Dict[str, str]:
    return {"node.session.auth.username": f"chaos-{node}", "node.session.auth.password": f"Chaos-Secret-{node}-1"}


def grant_of(node: str) -> Dict[str, Dict[str, Any]]:
    secrets = secrets_of(node)
    return {f"{NODE_BASE}:{node}": {"user": secrets["node.session.auth.username"],
                                    "password": secrets["node.session.auth.password"],
                                    "mutual_user": None, "mutual_password": None}}


class TgtChaos(Chaos):
    """Chaos's CO on a storage host: ControllerPublish to one of NODES, I/O through libiscsi."""

    def __init__(self, agent: Agent, rng: random.Random) -> None:
        super().__init__(agent, rng, cap=block_cap())
        self.published: Dict[str, str] = {}  # volume name -> the node it is published to (acknowledged)
        self.io_retries = 0

    def publish(self, vol: Vol, node: str) -> None:
        vol.publish_context = dict(self.call("ctl", "ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=vol.volume_id, node_id=node, volume_capability=self.cap, secrets=secrets_of(node),
            volume_context=vol.volume_context)).publish_context)
        self.published[vol.name] = node

    def unpublish(self, vol: Vol) -> None:
        self.call("ctl", "ControllerUnpublishVolume", csi.ControllerUnpublishVolumeRequest(
            volume_id=vol.volume_id, node_id=self.published[vol.name]))
        del self.published[vol.name]
        vol.publish_context = {}

    def session(self, vol: Vol) -> Session:
        """A login as the publishing node; retried as an initiator does (the target is the agent's to keep)."""
        node, context = self.published[vol.name], vol.publish_context
        secrets = secrets_of(node)
        deadline = time.monotonic() + IO_PATIENCE
        while True:
            try:
                return Session(context[CONTEXT_PORTALS].split(",")[0], context[CONTEXT_TARGET], f"{NODE_BASE}:{node}",
                               lun=int(context[CONTEXT_LUN]), user=secrets["node.session.auth.username"],
                               password=secrets["node.session.auth.password"])
            except IscsiError as error:
                if time.monotonic() > deadline:
                    pytest.fail(f"{node} cannot log in to its publication of {vol.name} for {IO_PATIENCE}s: {error}")
                self.io_retries += 1
                time.sleep(0.2)

    def write(self, vol: Vol) -> None:
        slot = self.rng.randrange(vol.size // SLOT)
        data = pattern(self.rng.choice([4096, SLOT]), f"{vol.name}/{slot}/{self.counter}")
        self.counter += 1
        with self.session(vol) as session:
            assert session.write(slot * SLOT // session.block_size, data).good, f"{vol.name}: write refused"
        vol.files[str(slot)] = data  # acknowledged

    def verify(self, vol: Vol) -> None:
        with self.session(vol) as session:
            for slot, data in vol.files.items():
                got = session.read(int(slot) * SLOT // session.block_size, len(data))
                assert got.good and got.data == data, f"{vol.name}: slot {slot} lost or changed"

    def step(self) -> None:
        published = [v for v in self.vols.values() if v.name in self.published]
        idle = [v for v in self.vols.values() if v.name not in self.published]
        choices: List[Action] = [(2 if len(self.vols) < 4 else 0, lambda: self.create())]
        if idle:
            still = self.rng.choice(idle)
            choices += [(3, lambda: self.publish(still, self.rng.choice(NODES))),
                        (1 if len(self.vols) > 2 else 0, lambda: self.delete(still))]
        if published:
            used = self.rng.choice(published)
            choices += [(4, lambda: self.write(used)), (2, lambda: self.verify(used)),
                        (2, lambda: self.unpublish(used))]
        self.pick(choices + self.copies(list(self.vols.values())))  # the file pool copies published ones too

    def settle(self) -> None:
        """Every acknowledged write read through a fresh publish (to any node), then everything deleted."""
        for vol in list(self.vols.values()):
            if vol.name in self.published:
                self.unpublish(vol)
            self.publish(vol, self.rng.choice(NODES))
            self.verify(vol)
            self.unpublish(vol)
        for snap in list(self.snaps.values()):
            self.delete_snapshot(snap)
        for vol in list(self.vols.values()):
            self.delete(vol)


def assert_exports_are_the_publications(chaos: TgtChaos, tgtd: Tgtd) -> None:
    """tgtd and the grant record hold exactly the acknowledged publications: no more, no less."""
    wanted = {chaos.vols[name].publish_context[CONTEXT_TARGET]: node for name, node in chaos.published.items()}
    images = {chaos.vols[name].publish_context[CONTEXT_TARGET]: image_of(chaos.agent, chaos.vols[name].volume_id)
              for name in chaos.published}
    targets = {target.iqn: target for target in tgt.TgtBackend(control_port=tgtd.control_port).targets()}
    assert set(targets) == set(wanted), (sorted(targets), wanted)
    for iqn, node in wanted.items():
        assert targets[iqn].initiator_acls == (f"{NODE_BASE}:{node}",), targets[iqn]
        assert targets[iqn].incoming == (secrets_of(node)["node.session.auth.username"],), targets[iqn]
        disks = [lun.backing_store for lun in targets[iqn].luns if lun.type == "disk"]
        assert disks == chaos.agent.loops_for(images[iqn]) and len(disks) == 1, (targets[iqn], images[iqn])
    assert sorted(accounts(tgtd.control_port)) == sorted({secrets_of(node)["node.session.auth.username"]
                                                          for node in wanted.values()})
    assert saved_grants(chaos.agent) == {iqn: grant_of(node) for iqn, node in wanted.items()}


@pytest.fixture
def storage_host(tgtd: Tgtd) -> Iterator[Agent]:
    with running_storage_host(tgtd, "iscsi-chaos", "--iscsi-initiator-base", NODE_BASE) as agent:
        yield agent


def test_chaos_tgt(storage_host: Agent, tgtd: Tgtd, record_testsuite_property: Callable[[str, object], None]) -> None:
    kills, seed = kills_and_seed(DEFAULT_KILLS)
    agent = storage_host
    before = pool_state(agent)
    chaos = TgtChaos(agent, random.Random(seed))
    elapsed = chaos.run(kills)
    # One more restart whose reconciliation (a background thread) is awaited: tgtd is then what start-up leaves.
    agent.kill()
    starts = len(reconciliations(agent)) + 1
    agent.start()
    summary = wait_reconciled(agent, starts)
    assert summary["failed"] == 0, summary
    assert_exports_are_the_publications(chaos, tgtd)
    chaos.settle()
    figures = {**chaos.figures(elapsed), "io_retries": chaos.io_retries}
    print("chaos tgt: {kills} kills, {calls} calls, {retries} retries, {io_retries} login retries, "
          "{seconds}s".format(**figures))
    for figure, value in figures.items():
        record_testsuite_property(f"chaos_tgt_{figure}", value)
    assert chaos.published == {}
    assert_exports_are_the_publications(chaos, tgtd)  # none: no target, account or grant left
    assert_nothing_left(agent, before)
    assert glob.glob(os.path.join(agent.root, ".tmp-*")) == []  # the tgt config file's own temp files
    assert glob.glob(os.path.join(agent.state_dir, "**", ".tmp-*"), recursive=True) == []
    assert chaos.kills >= kills
