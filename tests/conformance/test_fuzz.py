"""Thousands of generated, mutated and raw requests to every RPC on this run's pool (see csi_fuzz).

CI runs a bounded, derandomized run per pool kind (file, then lvm-loop);
``BASALT_FUZZ_EXAMPLES=N`` runs N requests with fresh randomness.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from basalt_csi_testlib import MiB
from csi_fuzz import NAMESPACED, World, examples, make_decoy, release_stacked_loops, remove_decoy, run

CI_EXAMPLES = 500


def test_every_rpc_answers_spec_codes_and_touches_nothing_outside(agent_factory: Any) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to give the agent its own mount namespace")
    agent = agent_factory(launch=False, launcher=NAMESPACED, capacity_limit=2048 * MiB,
                          extra_args=["--default-volume-size", "8Mi"])
    decoy = make_decoy()
    try:
        agent.start()
        run(World.build(agent, decoy), examples(CI_EXAMPLES))
    finally:
        agent.stop()
        release_stacked_loops(agent)
        remove_decoy(decoy)
