"""Chaos: a mixed workload while the agent is SIGKILLed at random moments, every call retried as a CO does.

The workload and the CO's retries are ``chaoslib.Chaos``.  The agent is
killed at least ``BASALT_CHAOS_KILLS`` times (8 by default, the bounded run CI
makes on each pool kind; README's Reliability figures come from longer runs).
At the end every acknowledged write is read back (volumes staged again for
it), nothing is frozen, then the driver deletes everything and the host must
hold nothing of the pool: backing objects, loop devices, device-mapper
devices, mounts, node and freeze records, temp files.  The seed is printed:
``BASALT_CHAOS_SEED`` replays a run.  The VM tier runs this test inside its
guest with the real-kernel kinds (tests/vm/test_vm_chaos.py) and reads the
figures from the JUnit report (``chaos_*`` properties of the test suite).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from basalt_csi_testlib import Agent
from chaoslib import Chaos, assert_nothing_left, kills_and_seed, pool_state

DEFAULT_KILLS = 8


def test_chaos(fresh_agent_factory: Callable[..., Agent],
               record_testsuite_property: Callable[[str, object], None]) -> None:
    kills, seed = kills_and_seed(DEFAULT_KILLS)
    agent = fresh_agent_factory()
    before = pool_state(agent)
    chaos = Chaos(agent, random.Random(seed))
    elapsed = chaos.run(kills)
    chaos.settle()
    figures = chaos.figures(elapsed)
    print("chaos: {kills} kills, {calls} calls, {retries} retries, {seconds}s".format(**figures))
    for figure, value in figures.items():
        record_testsuite_property(f"chaos_{figure}", value)
    assert_nothing_left(agent, before)
    assert chaos.kills >= kills
