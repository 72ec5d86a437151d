#!/usr/bin/env python3
"""Chaos through LIO and the kernel initiator (inside the VM): the workload of tests/conformance/chaoslib.py
with a storage agent (``--pool lvm:VG --lvm-activation dm``, ``--iscsi-backend lio`` on 127.0.0.1:3260)
and a node agent (this VM's initiator IQN) in one VM, either SIGKILLed at random moments.

Every NodeStage is a ControllerPublish (LIO target, ACL for the node's IQN, CHAP) and an ``iscsiadm`` login;
every NodeUnstage a logout and a ControllerUnpublish.  At the end every acknowledged write reads back, and
nothing is left: LVs but the foreign ones, dm devices, mounts, node records, LIO targets and backstores,
entries in LIO's saved configuration, iSCSI sessions and node records.  ``BASALT_CHAOS_KILLS`` (2 by
default) and ``BASALT_CHAOS_SEED`` as for test_chaos.py; the figures go to ``$BASALT_RESULTS/chaos-lio.json``.

Usage: check_chaos_lio.py DISK   (DISK: a scratch disk of at least 2 GiB)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_iscsi_lib as lib
from agent_iscsi_lib import SECRETS, expect, step

PORTAL = "127.0.0.1:3260"
DEFAULT_KILLS = 2


def main() -> None:
    lib.prepare(sys.argv[1])
    import pytest
    from chaoslib import Chaos, assert_nothing_left, kills_and_seed, pool_state
    from rtslib_fb import RTSRoot

    kills, seed = kills_and_seed(DEFAULT_KILLS)
    iqn = lib.initiator_iqn()
    lib.start_iscsid()
    storage = lib.storage_agent({"node-a": iqn}, [PORTAL])
    node = lib.node_agent("node-a")
    try:
        lib.start(storage, node)
        before = pool_state(storage)
        chaos = Chaos(storage, random.Random(seed), node=node, secrets=SECRETS)
        step(f"the workload, storage or node agent SIGKILLed {kills} times")
        try:
            elapsed = chaos.run(kills)
            step("every acknowledged write read back, then everything deleted")
            chaos.settle()
            figures = chaos.figures(elapsed)
            print("chaos lio: {kills} kills, {calls} calls, {retries} retries, {seconds}s".format(**figures),
                  flush=True)
            Path(os.environ.get("BASALT_RESULTS", "/tmp"), "chaos-lio.json").write_text(json.dumps(figures))
            step("nothing left: storage host, node, LIO, initiator")
            assert_nothing_left(storage, before)
            assert_nothing_left(node, pool_state(node))
        except (AssertionError, pytest.fail.Exception) as failure:
            raise lib.CheckFailed(str(failure)) from failure
        lio = RTSRoot()
        expect(not list(lio.targets), f"LIO targets left: {[t.wwn for t in lio.targets]}")
        expect(not list(lio.storage_objects), f"LIO backstores left: {[so.name for so in lio.storage_objects]}")
        saved = Path(lib.LIO_SAVE_FILE)
        expect(not saved.exists() or not json.loads(saved.read_text()).get("targets"),
               "LIO's saved configuration still holds targets")
        expect(not lib.session_targets(), f"iSCSI sessions left: {lib.session_targets()}")
        records = subprocess.run(["iscsiadm", "-m", "node"], capture_output=True, text=True).stdout.strip()
        expect(not records, f"iSCSI node records left: {records}")
        lib.expect_foreign_intact(storage)
    finally:
        lib.teardown(storage, node)


if __name__ == "__main__":
    sys.exit(lib.report("chaos_lio", main))
