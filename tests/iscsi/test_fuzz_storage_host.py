"""Fuzz every RPC of a storage host exporting over a private tgtd (see tests/conformance/csi_fuzz.py).

Its ControllerPublish exports to the mapped nodes' initiators with CHAP; the
requests mix the mapped nodes, CHAP secrets (right, wrong and hostile) and
everything the file and lvm runs send.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from agent_iscsi_testlib import CHAP, mapped_nodes, storage_host_args
from basalt_csi_testlib import Agent, MiB, block_cap, cleanup_root, make_root
from csi_fuzz import NAMESPACED, World, examples, make_decoy, release_stacked_loops, remove_decoy, run

from basalt_agent.proto import csi_pb2 as csi

CI_EXAMPLES = 400


def test_storage_host_answers_spec_codes_and_touches_nothing_outside(tgtd: Any) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to give the agent its own mount namespace")
    root = make_root("fuzz-iscsi")
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1", launcher=NAMESPACED,
                  capacity_limit=2048 * MiB,
                  extra_args=[*storage_host_args(tgtd, root, *mapped_nodes()), "--default-volume-size", "8Mi"])
    decoy = make_decoy()
    try:
        agent.start()
        world = World.build(agent, decoy, node_ids=("node-a", "node-b"))
        world.templates.append(("ControllerPublishVolume", csi.ControllerPublishVolumeRequest(
            volume_id=world.ids[2], node_id="node-a", volume_capability=block_cap(), secrets=CHAP)))
        run(world, examples(CI_EXAMPLES))
    finally:
        agent.stop()
        release_stacked_loops(agent)
        remove_decoy(decoy)
        cleanup_root(root)
