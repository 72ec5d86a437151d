#!/usr/bin/env python3
"""Benchmark iSCSI export and unexport through the agent against the bare tgtadm (or rtslib) calls that do the same.

Prints RATIOS (ControllerPublishVolume / ControllerUnpublishVolume over gRPC,
tgt backend, a private tgtd on 127.0.0.1 / the same target, LUN, ACL and CHAP
state made and unmade with bare ``tgtadm``), never asserts on time. Needs
root, tgt (tgtd, tgtadm) and loop devices. With ``--backend lio`` (configfs,
the target modules and rtslib-fb: the VM tier, bench/vm_bench.py) the agent
exports through LIO and the floor is the same objects made and deleted with
rtslib-fb's own calls in this process.

    python3 bench/bench_iscsi.py [--rounds N] [--backend tgt|lio] [--json OUT] [--tmpdir DIR]

Everything lives under one fresh ``basalt-bench-*`` directory (the agent's
file pool, state and tgt config, the bare side's image); the private tgtd
(its own control port, a free TCP port) is stopped at the end, also on
Ctrl-C, SIGTERM or an error, before the workspace's loop devices are detached.
Nothing else is touched: no system tgtd, no other loop device. With LIO the
bare side's targets and backstores (named after ``BARE_BASE_IQN``) are removed
before the loop devices; the agent saves LIO's configuration where it always
does (rtslib's default file), as on a storage host.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "iscsi"))

if TYPE_CHECKING:  # mypy (scripts/lint.sh) sees the bench directory as the namespace package "bench"
    import bench.bench_agent as ba
    import bench.benchlib as bl
    import bench.command_profile as cp
else:  # the bench directory is not a package: found through sys.path
    import bench_agent as ba
    import benchlib as bl
    import command_profile as cp

from tgtd_testlib import control_port_in_use, start_private_tgtd, stop_private_tgtd  # the test daemon, not shipped

from basalt_agent.proto import csi_pb2
from basalt_core import atomicfile, tgt
from basalt_core.iscsi_target import serial_for
from basalt_core.tgt_config import NO_ADDRESS

DEFAULT_ROUNDS = 20
DEFAULT_RESTART_VOLUMES = 20
PEER_NODE = "bench-peer"
PEER_IQN = "iqn.2026-11.dev.basalt.bench:peer"
BARE_BASE_IQN = "iqn.2026-11.dev.basalt.bare"
AGENT_USER = "bench-user"
BARE_USER = "bare-user"
PASSWORD = "Bench-Secret-1234"
CONTROL_PORTS = range(31000, 31100)  # tgtd -C: 1..32767; the first one no tgtd answers on
BARE_TID_BASE = 5000  # the bare side's tids, far from the agent's (it takes max + 1)
BARE_SO_PREFIX = "bare-bench-"  # LIO: the bare side's backstores (the agent's are basalt-<serial>)
#: LIO's crash-safe bound: one durable write of a record this size (a file-pool volume record's order)
BOUND_RECORD = json.dumps({"id": "vol-" + "0" * 32, "publications": {PEER_NODE: {"readonly": False}},
                           "parameters": {}, "state": "ready"}).encode() * 4


class IscsiWorkspace(bl.Workspace):
    """The file workspace plus a private tgtd, stopped after the agents and before the loop devices go."""

    def __init__(self, base: Optional[str], backend: str = "tgt") -> None:
        super().__init__(base)
        self.backend = backend
        self.tgtd: Optional["subprocess.Popen[bytes]"] = None
        self.control_port = 0
        self.portal = ""
        self.lio: Optional[LioBare] = None

    def start_tgtd(self) -> None:
        self.control_port = next(p for p in CONTROL_PORTS if not control_port_in_use(p))
        self.portal = f"127.0.0.1:{free_port()}"
        self.tgtd = start_private_tgtd(self.control_port, self.portal, wait=30.0)

    def restart_tgtd_empty(self) -> None:
        """A crash of tgtd and a start that does not load the config: SIGKILL, then a fresh, empty tgtd."""
        assert self.tgtd is not None
        self.tgtd.kill()
        self.tgtd.wait(timeout=30)
        self.tgtd = start_private_tgtd(self.control_port, self.portal, wait=30.0)

    def start_lio(self) -> None:
        self.portal = f"127.0.0.1:{free_port()}"
        self.lio = LioBare(self.portal)

    def cleanup(self) -> List[str]:
        problems = self.stop_agents()  # before tgtd: an agent may be mid-call on it
        if self.lio is not None:
            try:
                self.lio.remove_leftovers()
            except Exception as error:
                problems.append(f"removing the bare side's LIO targets: {error}")
        if self.tgtd is not None:
            try:
                stop_private_tgtd(self.control_port, self.tgtd)
            except Exception as error:
                problems.append(f"stopping tgtd -C {self.control_port}: {error}")
            self.tgtd = None
        return problems + super().cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class IscsiAgent(cp.ProfiledAgent):
    """A file-pool storage host exporting over the workspace's tgtd (or LIO), at the agent's default log level
    (info) as a storage host runs it; at debug (:meth:`log_debug`) its log names every command for the reader
    to count."""

    def __init__(self, workspace: IscsiWorkspace, name: str, pool_dir: str) -> None:
        super().__init__(workspace, name, pool_dir)
        if workspace.backend == "lio":
            self.args += ["--iscsi-backend", "lio"]
        else:
            self.args += ["--iscsi-backend", "tgt", "--tgt-control-port", str(workspace.control_port),
                          "--tgt-conf", os.path.join(self.home, "tgt-basalt.conf")]
        self.args += ["--iscsi-portal", workspace.portal, "--iscsi-initiator", f"{PEER_NODE}={PEER_IQN}",
                      "--cleanup-grace", str(cp.CLEANUP_GRACE)]

    def log_debug(self) -> None:
        """Restart at debug level: each command it runs and each request it sends to tgtd is logged."""
        self.stop()
        self.args += ["--log-level", "debug"]
        self.start()


def block_capability() -> Any:
    return csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def create_block_volume(agent: bl.Agent, name: str) -> Any:
    return agent.controller.CreateVolume(csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[block_capability()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=bl.VOLUME_SIZE, limit_bytes=bl.VOLUME_SIZE)),
        timeout=bl.RPC_TIMEOUT).volume


def controller_publish(agent: bl.Agent, volume_id: str) -> Dict[str, str]:
    secrets = {"node.session.auth.username": AGENT_USER, "node.session.auth.password": PASSWORD}
    response = agent.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=PEER_NODE, volume_capability=block_capability(), secrets=secrets),
        timeout=bl.RPC_TIMEOUT)
    return dict(response.publish_context)


def controller_unpublish(agent: bl.Agent, volume_id: str) -> None:
    agent.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=PEER_NODE), timeout=bl.RPC_TIMEOUT)


# -- the bare side: what an admin would type for the same end state ----------------

class Bare:
    def __init__(self, workspace: IscsiWorkspace) -> None:
        self.control_port = workspace.control_port

    def tgtadm(self, *args: str) -> None:
        bl.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args])

    def export(self, tid: int, iqn: str, device: str, serial: str, user: str = BARE_USER) -> None:
        """New target + LUN (serial, read-write) + the address ACL that matches nobody + CHAP account and bind
        + the node's initiator-name ACL: the state ControllerPublish leaves."""
        t = str(tid)
        self.tgtadm("--mode", "target", "--op", "new", "--tid", t, "--targetname", iqn)
        self.tgtadm("--mode", "logicalunit", "--op", "new", "--tid", t, "--lun", "1", "--backing-store", device,
                    "--bstype", "rdwr")
        self.tgtadm("--mode", "logicalunit", "--op", "update", "--tid", t, "--lun", "1", "--params",
                    f"scsi_sn={serial},readonly=0")
        self.tgtadm("--mode", "target", "--op", "bind", "--tid", t, "--initiator-address", NO_ADDRESS)
        self.tgtadm("--mode", "account", "--op", "new", "--user", user, "--password", PASSWORD)
        self.tgtadm("--mode", "account", "--op", "bind", "--tid", t, "--user", user)
        self.tgtadm("--mode", "target", "--op", "bind", "--tid", t, "--initiator-name", PEER_IQN)

    def unexport(self, tid: int, user: str = BARE_USER) -> None:
        """The reverse: ACL, account binding, account, target (with its LUN)."""
        t = str(tid)
        self.tgtadm("--mode", "target", "--op", "unbind", "--tid", t, "--initiator-name", PEER_IQN)
        self.tgtadm("--mode", "account", "--op", "unbind", "--tid", t, "--user", user)
        self.tgtadm("--mode", "account", "--op", "delete", "--user", user)
        self.tgtadm("--mode", "target", "--op", "delete", "--force", "--tid", t)


class LioBare:
    """The same LIO objects the agent's LIO backend makes (basalt_core.lio: block backstore, target, TPG 1
    with its attributes, portal, LUN 0, the node's ACL with CHAP and mapped LUN 0), made and deleted with
    rtslib-fb's own calls in this process: the floor of ControllerPublish / ControllerUnpublish on LIO."""

    def __init__(self, portal: str) -> None:
        import rtslib_fb

        self.rts = rtslib_fb
        host, _, port = portal.rpartition(":")
        self.portal = (host, int(port))
        self.objects: Dict[int, Tuple[Any, Any, Any]] = {}  # tid -> (storage object, target, ACL)

    def export(self, tid: int, iqn: str, device: str, serial: str, user: str = BARE_USER) -> None:
        rts = self.rts
        so = rts.BlockStorageObject(f"{BARE_SO_PREFIX}{tid}", dev=device, wwn=serial, readonly=False)
        target = rts.Target(rts.FabricModule("iscsi"), iqn, mode="create")
        tpg = rts.TPG(target, 1, mode="create")
        tpg.set_attribute("generate_node_acls", "0")
        tpg.set_attribute("demo_mode_write_protect", "1")
        tpg.set_attribute("authentication", "0")
        rts.NetworkPortal(tpg, *self.portal, mode="create")
        lun = rts.LUN(tpg, lun=0, storage_object=so)
        tpg.enable = True
        acl = rts.NodeACL(tpg, PEER_IQN, mode="create")
        acl.chap_userid = user
        acl.chap_password = PASSWORD
        rts.MappedLUN(acl, 0, tpg_lun=lun, write_protect=False)
        tpg.set_attribute("authentication", "1")
        self.objects[tid] = (so, target, acl)

    def unexport(self, tid: int, user: str = BARE_USER) -> None:
        so, target, acl = self.objects.pop(tid)
        acl.delete()
        target.delete()
        so.delete()

    def save(self, path: str) -> None:
        """What the agent's ``persist`` does after a change (to a file of the workspace here)."""
        self.rts.RTSRoot().save_to_file(path)

    def remove_leftovers(self) -> None:
        """The bare side's targets and backstores that an interruption left (only those: by name)."""
        root = self.rts.RTSRoot()
        for target in list(root.targets):
            if target.wwn.startswith(BARE_BASE_IQN + ":"):
                target.delete()
        for so in list(root.storage_objects):
            if so.name.startswith(BARE_SO_PREFIX):
                so.delete()
        self.objects.clear()


def rtslib_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("rtslib-fb")
    except metadata.PackageNotFoundError:
        return "unknown"


def bare_image(workspace: IscsiWorkspace, name: str) -> str:
    image = workspace.path("raw", name)
    os.makedirs(os.path.dirname(image), exist_ok=True)
    with open(image, "wb") as handle:
        handle.truncate(bl.VOLUME_SIZE)
    return image


EXPORT_COMMANDS = 7
UNEXPORT_COMMANDS = 4
#: LIO: the least an RPC that answers once its state is durable adds to rtslib's calls (bench/README.md:
#: Publish writes its record and LIO's saved config, which may overlap; Unpublish clears the record before
#: the grant goes, then saves)
BOUND_PARTS = {"ControllerPublish": "rtslib + gRPC + 1 durable write",
               "ControllerUnpublish": "rtslib + gRPC + 2 durable writes"}


def bench_export(agent: IscsiAgent, workspace: IscsiWorkspace, rounds: int) -> Tuple[List[bl.Row], Dict[str, Any]]:
    volume = create_block_volume(agent, f"bench-iscsi-{uuid.uuid4().hex[:8]}")
    image = bare_image(workspace, "bare.img")
    lio = workspace.lio
    bare = lio if lio is not None else Bare(workspace)
    saved_config = workspace.path("lio-saveconfig.json")  # LIO: the bare side saves as the agent does
    g_pub, g_unpub, g_pair = bl.Samples(), bl.Samples(), bl.Samples()
    # LIO: what any agent that answers only once its state is durable adds to rtslib's calls, timed in the
    # same rounds: a bare gRPC round trip (bare_grpc_server.py's Probe) and durable writes (atomicfile's)
    b_grpc, b_write, b_pub_bound, b_unpub_bound = bl.Samples(), bl.Samples(), bl.Samples(), bl.Samples()
    b_pub_grpc, b_unpub_grpc = bl.Samples(), bl.Samples()  # rtslib + the round trip alone, no durable write
    bare_grpc = ba.BareServer(workspace) if lio is not None else None
    durable = workspace.path("bound-record.json")
    b_attach, b_export, b_unexport, b_detach = bl.Samples(), bl.Samples(), bl.Samples(), bl.Samples()
    b_pub_all, b_unpub_all, b_pair, b_pair_all = bl.Samples(), bl.Samples(), bl.Samples(), bl.Samples()
    b_pub_saved, b_unpub_saved = bl.Samples(), bl.Samples()
    contexts: List[Dict[str, str]] = []

    def grpc_round(i: int) -> None:
        took_p, context = bl.timed(lambda: controller_publish(agent, volume.volume_id))
        took_u, _ = bl.timed(lambda: controller_unpublish(agent, volume.volume_id))
        contexts.append(context)
        g_pub.add(took_p)
        g_unpub.add(took_u)
        g_pair.add(took_p + took_u)

    def bare_round(i: int) -> None:
        tid = BARE_TID_BASE + i
        iqn = f"{BARE_BASE_IQN}:round-{i}"
        took_a, device = bl.timed(lambda: bl.run(["losetup", "--find", "--show", image]).strip())
        took_e, _ = bl.timed(lambda: bare.export(tid, iqn, device, serial_for(iqn)))
        took_s = bl.timed(lambda: lio.save(saved_config))[0] if lio is not None else 0.0
        took_x, _ = bl.timed(lambda: bare.unexport(tid))
        took_t = bl.timed(lambda: lio.save(saved_config))[0] if lio is not None else 0.0
        took_d, _ = bl.timed(lambda: bl.run(["losetup", "--detach", device]))
        for samples, took in ((b_attach, took_a), (b_export, took_e), (b_unexport, took_x), (b_detach, took_d),
                              (b_pub_saved, took_e + took_s), (b_unpub_saved, took_x + took_t)):
            samples.add(took)
        b_pub_all.add(took_a + took_e + took_s)
        b_unpub_all.add(took_x + took_t + took_d)
        b_pair.add(took_e + took_x)
        b_pair_all.add(took_a + took_e + took_s + took_x + took_t + took_d)
        if bare_grpc is not None:
            took_g = bl.timed(lambda: bare_grpc.identity.Probe(csi_pb2.ProbeRequest(), timeout=bl.RPC_TIMEOUT))[0]
            took_w = bl.timed(lambda: atomicfile.write_atomic(durable, BOUND_RECORD))[0]
            took_w2 = bl.timed(lambda: atomicfile.write_atomic(durable, BOUND_RECORD))[0]
            for samples, took in ((b_grpc, took_g), (b_write, took_w), (b_pub_bound, took_e + took_g + took_w),
                                  (b_unpub_bound, took_x + took_g + took_w + took_w2),
                                  (b_pub_grpc, took_e + took_g), (b_unpub_grpc, took_x + took_g)):
                samples.add(took)

    if bare_grpc is not None:
        bare_grpc.start()
    try:
        grpc_round(-1)  # untimed warm-up of each side (first account, first target, imports)
        bare_round(999)
        for samples in (g_pub, g_unpub, g_pair, b_attach, b_export, b_unexport, b_detach, b_pub_all, b_unpub_all,
                        b_pair, b_pair_all, b_pub_saved, b_unpub_saved, b_grpc, b_write, b_pub_bound,
                        b_unpub_bound, b_pub_grpc, b_unpub_grpc):
            samples.values.clear()
        bl.interleave(rounds, [grpc_round, bare_round])
    finally:
        if bare_grpc is not None:
            bare_grpc.stop()
    bl.delete_volume(agent, volume.volume_id)

    if lio is not None:
        name = "iscsi export (lio)"
        rows = [
            bl.Row(name, "ControllerPublish", g_pub, "rtslib: backstore..mapped LUN", b_export),
            bl.Row(name, "ControllerPublish", g_pub, "rtslib + save_to_file", b_pub_saved),
            bl.Row(name, "ControllerPublish", g_pub, "losetup --find --show + rtslib + save", b_pub_all),
            bl.Row(name, "ControllerPublish", g_pub, f"bound: {BOUND_PARTS['ControllerPublish']}", b_pub_bound),
            bl.Row(name, "ControllerUnpublish", g_unpub, "rtslib: ACL, target, backstore delete", b_unexport),
            bl.Row(name, "ControllerUnpublish", g_unpub, "rtslib + save_to_file", b_unpub_saved),
            bl.Row(name, "ControllerUnpublish", g_unpub, "rtslib + save + losetup -d", b_unpub_all),
            bl.Row(name, "ControllerUnpublish", g_unpub, f"bound: {BOUND_PARTS['ControllerUnpublish']}",
                   b_unpub_bound),
            bl.Row(name, "Publish+Unpublish", g_pair, "rtslib both ways", b_pair),
            bl.Row(name, "Publish+Unpublish", g_pair, "rtslib + 2 saves + 2 losetup", b_pair_all),
        ]
        bound = {"grpc_round_trip": b_grpc.summary(), "durable_write": b_write.summary(),
                 # the bound itself against the floor, rtslib's calls alone (its goal: at most 1.2x)
                 "over_rtslib": {"ControllerPublish": b_pub_bound.median / b_export.median,
                                 "ControllerUnpublish": b_unpub_bound.median / b_unexport.median},
                 # and without the durable writes: what gRPC alone adds to rtslib's calls
                 "grpc_over_rtslib": {"ControllerPublish": b_pub_grpc.median / b_export.median,
                                      "ControllerUnpublish": b_unpub_grpc.median / b_unexport.median}}
        return rows, {"target_iqn": contexts[-1].get("basalt.dev/iscsi-target") if contexts else None,
                      "bare_losetup_attach": b_attach.summary(), "bare_losetup_detach": b_detach.summary(),
                      "crash_safe_bound": bound}
    name = "iscsi export (tgt)"
    rows = [
        bl.Row(name, "ControllerPublish", g_pub, f"tgtadm x{EXPORT_COMMANDS}", b_export),
        bl.Row(name, "ControllerPublish", g_pub, f"losetup --find --show + tgtadm x{EXPORT_COMMANDS}", b_pub_all),
        bl.Row(name, "ControllerUnpublish", g_unpub, f"tgtadm x{UNEXPORT_COMMANDS}", b_unexport),
        bl.Row(name, "ControllerUnpublish", g_unpub, f"tgtadm x{UNEXPORT_COMMANDS} + losetup -d", b_unpub_all),
        bl.Row(name, "Publish+Unpublish", g_pair, f"tgtadm x{EXPORT_COMMANDS + UNEXPORT_COMMANDS}", b_pair),
        bl.Row(name, "Publish+Unpublish", g_pair, "the 11 tgtadm + 2 losetup", b_pair_all),
    ]
    facts = {"target_iqn": contexts[-1].get("basalt.dev/iscsi-target") if contexts else None,
             "bare_losetup_attach": b_attach.summary(), "bare_losetup_detach": b_detach.summary()}
    return rows, facts


def profile_export(agent: IscsiAgent, profiler: cp.Profiler, rounds: int) -> None:
    """*rounds* more ControllerPublish + ControllerUnpublish, after one warm-up pair, with the agent at debug
    level: its log gives the commands and tgtd requests behind each RPC (their times are not the table's)."""
    volume = create_block_volume(agent, f"bench-profile-{uuid.uuid4().hex[:8]}")
    controller_publish(agent, volume.volume_id)
    controller_unpublish(agent, volume.volume_id)
    for _ in range(rounds):
        profiler.call("ControllerPublish", 0, lambda: controller_publish(agent, volume.volume_id))
        profiler.call("ControllerUnpublish", 0, lambda: controller_unpublish(agent, volume.volume_id))
    bl.delete_volume(agent, volume.volume_id)


# -- benchmark 2: restart with tgtd emptied; the reconciliation restores every export ---------

def log_entries(agent: bl.Agent, after: int) -> List[Dict[str, Any]]:
    """The agent's JSON log entries written after byte offset *after*."""
    with open(agent.log_path, "rb") as handle:
        handle.seek(after)
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def seconds_of_day(entry: Dict[str, Any]) -> float:
    """A log entry's time stamp ("...T07:01:02.345Z", ms resolution) in seconds of the day."""
    hours, minutes, seconds = entry["time"].split("T", 1)[1].rstrip("Z").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


TGTD_TOOLS = ("tgtadm", cp.TGTD_SOCKET)  # the two ways a request reaches tgtd: a tgtadm process, tgtd's socket


def is_listing(command: cp.Command) -> bool:
    """A tgtd request (tgtadm or socket) that reads (``--op show``) rather than changes state."""
    return command.tool in TGTD_TOOLS and "--op" in command.argv and \
        "show" in command.argv[command.argv.index("--op") + 1:][:1]


def restart_and_reconcile(agent: IscsiAgent, probes: Optional[bl.Samples] = None
                          ) -> Tuple[float, float, Dict[str, Any], Counter[str]]:
    """Restart the agent; return exec->first Probe, serving->reconciliation finished (s), its summary, and the
    commands of that start (tgtd listings counted apart: the reconciliation lists tgtd once).
    Until the reconciliation finishes, Probe is asked every 10 ms and each answer's time added to *probes*."""
    agent.stop()
    mark = agent.log_mark()
    startup = agent.start()
    deadline = bl.now() + bl.START_TIMEOUT
    while bl.now() < deadline:
        if probes is not None:
            probes.add(bl.timed(lambda: agent.identity.Probe(csi_pb2.ProbeRequest(), timeout=bl.RPC_TIMEOUT))[0])
        entries = {e.get("msg"): e for e in log_entries(agent, mark)}
        done = entries.get("iscsi reconciliation finished")
        if done is not None:
            commands: Counter[str] = Counter()
            for command in agent.commands_since(mark):
                if command.tool not in TGTD_TOOLS or "--mode" not in command.argv:  # also tgtadm --version
                    commands[" ".join([command.tool, *command.argv[1:2]]) if command.tool == "tgtadm"
                             else command.tool] += 1
                elif is_listing(command):
                    commands[f"{command.tool} --mode {command.argv[command.argv.index('--mode') + 1]} show"] += 1
                else:
                    commands[f"{command.tool} (changes)"] += 1
            return startup, seconds_of_day(done) - seconds_of_day(entries["serving"]), done, commands
        time.sleep(0.01)
    raise bl.BenchError("the agent did not finish its reconciliation")


def bench_restart(agent: IscsiAgent, workspace: IscsiWorkspace, count: int, unpublished: int
                  ) -> Tuple[List[bl.Row], Dict[str, Any]]:
    idle_ids = [create_block_volume(agent, f"bench-idle-{i}-{uuid.uuid4().hex[:6]}").volume_id
                for i in range(unpublished)]  # volumes the start reads but exports nowhere
    volume_ids = []
    for i in range(count):
        volume = create_block_volume(agent, f"bench-restart-{i}-{uuid.uuid4().hex[:6]}")
        controller_publish(agent, volume.volume_id)
        volume_ids.append(volume.volume_id)
    steady_start, steady, steady_summary, steady_commands = restart_and_reconcile(agent)  # nothing to do

    agent.stop()
    workspace.restart_tgtd_empty()
    probes = bl.Samples()
    restore_start, restore, restore_summary, restore_commands = restart_and_reconcile(agent, probes)
    restored = len(tgt.TgtBackend(control_port=workspace.control_port).targets())
    if restored != count or restore_summary.get("failed"):
        raise bl.BenchError(f"reconciliation restored {restored} of {count} targets: {restore_summary}")

    # The floor: the same exports made with bare tgtadm (7 commands each) on a loop device attached in advance.
    bare = Bare(workspace)
    device = bl.run(["losetup", "--find", "--show", bare_image(workspace, "restart.img")]).strip()
    start = bl.now()
    for i in range(count):
        iqn = f"{BARE_BASE_IQN}:restart-{i}"
        bare.export(BARE_TID_BASE + 100 + i, iqn, device, serial_for(iqn), f"{BARE_USER}-{i}")
    floor = bl.now() - start
    for i in range(count):
        bare.unexport(BARE_TID_BASE + 100 + i, f"{BARE_USER}-{i}")
    bl.run(["losetup", "--detach", device])

    for volume_id in volume_ids:
        controller_unpublish(agent, volume_id)
        bl.delete_volume(agent, volume_id)
    for volume_id in idle_ids:
        bl.delete_volume(agent, volume_id)
    name = f"restart, {count} exports"
    rows = [
        bl.Row(name, "reconcile: restore all", bl.Samples([restore]), f"tgtadm x{EXPORT_COMMANDS * count}",
               bl.Samples([floor])),
    ]
    facts = {"count": count, "unpublished": unpublished, "probes_while_restoring": probes.summary(),
             "restore_s": restore, "restore_summary": restore_summary, "steady_s": steady,
             "steady_summary": steady_summary, "startup_restore_s": restore_start, "startup_steady_s": steady_start,
             "bare_exports_s": floor, "restore_commands": dict(restore_commands),
             "steady_commands": dict(steady_commands)}
    return rows, facts


FLOOR_COMMANDS = {"ControllerPublish": EXPORT_COMMANDS, "ControllerUnpublish": UNEXPORT_COMMANDS}


def command_summary(profiles: Sequence[cp.Profile], backend: str = "tgt") -> List[str]:
    """Per RPC of the debug-level pass: the external commands and tgtd socket requests behind its median sample,
    the time they took, and the tgtd requests (tgtadm or socket) against the bare commands that change state (the
    goal: at most 1.2x). LIO runs no command of its own (rtslib works on configfs in the agent's process): its
    RPCs list what else they ran."""
    lines = []
    for p in profiles:
        if backend == "lio":
            rpc_ms, commands_ms = bl.Samples(p.seconds).median * 1000, p.all_seconds() * 1000
            listed = ", ".join(f"{tool} x{n}" for tool, n in sorted(p.counts().items())) or "no command"
            lines.append(f"{p.rpc}: {listed}; at debug level median {rpc_ms:.1f} ms, of which commands "
                         f"{commands_ms:.1f} ms; the rest (rtslib on configfs, LIO's saved config, gRPC, records, "
                         f"Python) {rpc_ms - commands_ms:.1f} ms")
            continue
        counts: Counter[str] = p.counts()
        tgtd_ms = bl.Samples([sum(c.seconds for c in s if c.tool in TGTD_TOOLS) for s in p.samples]).median * 1000
        rpc_ms = bl.Samples(p.seconds).median * 1000
        commands_ms = p.all_seconds() * 1000
        listed = ", ".join(f"{tool} x{n}" for tool, n in sorted(counts.items()))
        median = sorted(p.samples, key=len)[len(p.samples) // 2] if p.samples else []
        listings = sum(1 for c in median if is_listing(c))
        floor = FLOOR_COMMANDS.get(p.rpc)
        requests = sum(counts[tool] for tool in TGTD_TOOLS)
        ratio = f"{requests / floor:.2f}x the bare {floor}" if floor else "no floor"
        lines.append(f"{p.rpc}: {listed}; tgtd requests: {requests - listings} changes + {listings} listing(s) = "
                     f"{ratio}; at debug level median {rpc_ms:.1f} ms, of which commands and requests "
                     f"{commands_ms:.1f} ms (tgtd requests {tgtd_ms:.1f} ms); the rest (gRPC, records, config "
                     f"file, Python) {rpc_ms - commands_ms:.1f} ms")
    return lines


def bound_note(bound: Dict[str, Any]) -> str:
    """LIO: the crash-safe bound against rtslib's calls alone (the issue's floor), and what it is made of."""
    over = ", ".join(f"{rpc} {ratio:.2f}x ({BOUND_PARTS[rpc]})"
                     for rpc, ratio in bound["over_rtslib"].items())
    grpc_only = ", ".join(f"{rpc} {ratio:.2f}x" for rpc, ratio in bound["grpc_over_rtslib"].items())
    return (f"the crash-safe bound against rtslib's calls alone: {over}; without the durable writes "
            f"(rtslib + gRPC): {grpc_only}; a bare gRPC round trip {bound['grpc_round_trip']['median_ms']:.1f} ms, "
            f"a durable write {bound['durable_write']['median_ms']:.1f} ms")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--backend", choices=("tgt", "lio"), default="tgt",
                        help="the agent's --iscsi-backend (default tgt; lio needs configfs, the target modules and "
                        "rtslib-fb, and its floor is rtslib's own calls)")
    parser.add_argument("--restart-volumes", type=int,
                        help=f"published volumes restored by the reconciliation in benchmark 2 "
                        f"(default {DEFAULT_RESTART_VOLUMES}; 0 skips it; tgt only)")
    parser.add_argument("--restart-unpublished", type=int, default=0,
                        help="also this many volumes published nowhere in benchmark 2 (default 0)")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--tmpdir", help="where to make the workspace (default: the system temp dir)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.restart_volumes is None:
        args.restart_volumes = DEFAULT_RESTART_VOLUMES if args.backend == "tgt" else 0
    if args.backend == "lio" and args.restart_volumes > 0:
        parser.error("--restart-volumes: benchmark 2 (tgtd restarted empty) is tgt's only")
    if os.geteuid() != 0:
        print("bench_iscsi: needs root (tgtd or LIO, loop devices)", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, bl._raise_interrupt)
    workspace = IscsiWorkspace(args.tmpdir, args.backend)
    report: Dict[str, Any] = {"rounds": args.rounds, "backend": args.backend}

    def run() -> List[bl.Row]:
        facts = bl.machine_facts(workspace)
        if args.backend == "lio":
            workspace.start_lio()
            facts.update(rtslib_fb=rtslib_version(), portal=workspace.portal)
        else:
            facts["tgt"] = bl.run(["tgtadm", "--version"]).strip()
            workspace.start_tgtd()
            facts.update(tgtd_control_port=workspace.control_port, portal=workspace.portal)
        report["facts"] = facts
        print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()), flush=True)
        agent = IscsiAgent(workspace, "storage-host", workspace.mkdir("pool"))
        agent.start()
        floor = "rtslib's own calls" if args.backend == "lio" else "bare tgtadm"
        print(f"ControllerPublish + ControllerUnpublish vs {floor}, {args.rounds} rounds", flush=True)
        rows, report["export"] = bench_export(agent, workspace, args.rounds)
        print(f"the same RPCs at debug level, {args.rounds} rounds: the commands behind each", flush=True)
        agent.log_debug()
        profiler = cp.Profiler(agent)
        profile_export(agent, profiler, args.rounds)
        summary = command_summary(list(profiler.profiles.values()), args.backend)
        if "crash_safe_bound" in report["export"]:
            report["notes"] = [bound_note(report["export"]["crash_safe_bound"])]
            summary += report["notes"]
        if args.restart_volumes > 0:
            print(f"restart with tgtd emptied: {args.restart_volumes} published volumes", flush=True)
            restart_rows, restart = bench_restart(agent, workspace, args.restart_volumes,
                                                         args.restart_unpublished)
            rows += restart_rows
            report["restart"] = restart
        report["profiles"] = [p.to_json() for p in profiler.profiles.values()]
        print()
        print(bl.table(rows))
        print()
        for line in summary:
            print(line)
        if "restart" in report:
            restart = report["restart"]
            probes = restart["probes_while_restoring"]
            print(f"restart with {restart['count']} exports and {restart['unpublished']} unpublished volumes: "
                  f"{probes['n']} Probes while restoring, median {probes.get('median_ms', 0):.1f} ms, "
                  f"max {probes.get('max_ms', 0):.1f} ms")
            print(f"restart: exec -> first Probe {restart['startup_restore_s'] * 1000:.0f} ms while restoring "
                  f"({restart['startup_steady_s'] * 1000:.0f} ms with nothing to restore); reconciliation "
                  f"{restart['restore_s'] * 1000:.0f} ms for {restart['count']} exports "
                  f"({restart['restore_summary']['applied']} actions), {restart['steady_s'] * 1000:.0f} ms "
                  "when everything is in place")
            for when in ("restore", "steady"):
                commands = ", ".join(f"{k} x{v}" for k, v in sorted(restart[f"{when}_commands"].items()))
                print(f"restart ({when}): the start's commands: {commands}")
        return rows

    return bl.run_reported("bench_iscsi", run, workspace, report, args.json,
                           errors=(bl.BenchError, grpc.RpcError, StopIteration))


if __name__ == "__main__":
    sys.exit(main())
