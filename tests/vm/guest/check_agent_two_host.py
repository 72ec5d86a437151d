#!/usr/bin/env python3
"""Two VMs, through the agents: the storage VM's agent exports, the node VM's agent stages (inside the VMs).

Run by run_vm.run_pair on its private network (storage 10.77.0.1, node
10.77.0.2); the two scripts talk over a tiny HTTP exchange on the storage VM
(port 8080, JSON):

1. node → ``POST /publish {"node_id", "iqn"}``: the storage VM starts its agent
   (``--iscsi-initiator node-b=<the node VM's initiator name>``, LIO portal
   10.77.0.1:3260), CreateVolume + ControllerPublish with CHAP, and answers
   volume id, volume_context, publish_context and the node-stage secrets.
2. the node VM's agent: NodeStage (login across hosts, disk by serial, mkfs,
   mount) → NodePublish → write → read back → NodeUnpublish → NodeUnstage
   (logout, node record gone).
3. node → ``POST /check {"file", "sha256"}``: the storage VM reads the file
   from the LV (debugfs, O_DIRECT), ControllerUnpublish (target gone),
   DeleteVolume, and answers ``{"ok": true}`` or what went wrong.

Usage: check_agent_two_host.py storage | check_agent_two_host.py node   (storage: scratch disk "scratch0")
Each side prints ``BASALT-CHECK agent_two_host_<role> PASS|FAIL``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import agent_iscsi_lib as lib
from agent_iscsi_lib import MIB, SECRETS, expect, step

STORAGE_IP = "10.77.0.1"
NODE_IP = "10.77.0.2"
PORTAL = f"{STORAGE_IP}:3260"
EXCHANGE = f"http://{STORAGE_IP}:8080"
NODE_ID = "node-b"


class Exchange(HTTPServer):
    """One handler per path; the first failure is kept for the storage side's verdict."""

    def __init__(self, routes: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]]) -> None:
        super().__init__(("0.0.0.0", 8080), Handler)
        self.routes = routes
        self.failure: Exception | None = None
        self.finished = threading.Event()


class Handler(BaseHTTPRequestHandler):
    server: Exchange

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            answer = self.server.routes[self.path](body)
        except Exception as error:  # reported to the node and kept for the storage verdict
            self.server.failure = self.server.failure or error
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def post(path: str, body: Dict[str, Any], wait: float = 0) -> Dict[str, Any]:
    """POST JSON to the storage VM; retry connection errors for *wait* seconds (it may still be booting)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            request = urllib.request.Request(EXCHANGE + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                answer: Dict[str, Any] = json.loads(response.read())
                return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def storage() -> None:
    lib.prepare(lib.disk_by_serial("scratch0"))
    from basalt_csi_testlib import csi, mount_cap

    lib.network(STORAGE_IP)
    cap = mount_cap("ext4")
    agents: Dict[str, Any] = {}
    done: Dict[str, str] = {}

    def publish(body: Dict[str, Any]) -> Dict[str, Any]:
        step(f"node {body['node_id']} ({body['iqn']}) asks for a volume: start the agent, create, publish")
        agent = agents["storage"] = lib.start(lib.storage_agent({body["node_id"]: body["iqn"]}, [PORTAL]))
        volume = agent.ctl.CreateVolume(csi.CreateVolumeRequest(
            name="two-host", capacity_range=csi.CapacityRange(required_bytes=64 * MIB),
            volume_capabilities=[cap])).volume
        context = agent.ctl.ControllerPublishVolume(csi.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=body["node_id"], volume_capability=cap, secrets=SECRETS,
            volume_context=volume.volume_context)).publish_context
        expect(lib.lio_acls(context["basalt.dev/iscsi-target"]) == [body["iqn"]], "LIO ACL is not the node's IQN")
        done["volume_id"], done["target"] = volume.volume_id, context["basalt.dev/iscsi-target"]
        return {"ok": True, "volume_id": volume.volume_id, "volume_context": dict(volume.volume_context),
                "publish_context": dict(context), "secrets": SECRETS}

    def check(body: Dict[str, Any]) -> Dict[str, Any]:
        try:
            agent = agents["storage"]
            step(f"the node wrote {body['file']}: read it from the LV, unpublish, delete")
            data = lib.debugfs_cat(lib.lv_device(agent, done["volume_id"]), "/" + body["file"])
            expect(hashlib.sha256(data).hexdigest() == body["sha256"], "the node's file differs on the LV")
            agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(
                volume_id=done["volume_id"], node_id=NODE_ID))
            expect(lib.lio_target(done["target"]) is None, "the target is still in LIO after ControllerUnpublish")
            agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=done["volume_id"]))
            return {"ok": True}
        finally:
            server.finished.set()

    server = Exchange({"/publish": publish, "/check": check})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        step(f"waiting for the node on {EXCHANGE}")
        expect(server.finished.wait(600), "the node never finished")
        if server.failure is not None:
            raise lib.CheckFailed(f"{type(server.failure).__name__}: {server.failure}")
    finally:
        server.shutdown()
        if "storage" in agents:
            lib.teardown_storage(agents["storage"])
        lib.release_tmp()


def node() -> None:
    lib.prepare(None)
    from basalt_csi_testlib import mount_cap, pattern

    lib.network(NODE_IP)
    iqn = lib.initiator_iqn()
    lib.start_iscsid()
    agent = lib.start(lib.node_agent(NODE_ID))
    try:
        step(f"asking the storage VM for a volume (initiator {iqn})")
        offer = post("/publish", {"node_id": NODE_ID, "iqn": iqn}, wait=300)
        expect(offer.get("ok"), f"storage side: {offer.get('error')}")
        context, vid = offer["publish_context"], offer["volume_id"]
        target = context["basalt.dev/iscsi-target"]
        cap = mount_cap("ext4")
        step("NodeStage across hosts, NodePublish, write, read back")
        staging, pod = agent.staging_dir(), agent.path("pod")
        agent.stage(vid, cap, staging, publish_context=context, volume_context=offer["volume_context"],
                    secrets=offer["secrets"])
        expect(target in lib.session_targets(), "no session to the storage VM")
        agent.publish(vid, cap, staging, target=pod, publish_context=context)
        data = pattern(3 * MIB, "from the node VM")
        lib.write_and_sync(os.path.join(pod, "node.bin"), data)
        expect(Path(pod, "node.bin").read_bytes() == data, "read back through the mount")
        step("NodeUnpublish, NodeUnstage: logout, node record gone")
        agent.unpublish(vid, pod)
        agent.unstage(vid, staging)
        expect(target not in lib.session_targets(), "session left after NodeUnstage")
        expect(not lib.node_record_exists(target), "node record left after NodeUnstage")
        verdict = post("/check", {"file": "node.bin", "sha256": hashlib.sha256(data).hexdigest()})
        expect(verdict.get("ok"), f"storage side: {verdict.get('error')}")
    finally:
        lib.stop_agent(agent)
        lib.stop_iscsid()


if __name__ == "__main__":
    role = sys.argv[1]
    sys.exit(lib.report(f"agent_two_host_{role}", storage if role == "storage" else node, own_line=True))
