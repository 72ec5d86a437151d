"""The storage host reconciles tgtd with its publication records at start: real tgtd, real logins (libiscsi).

tgtd is killed (SIGKILL, as a crash) and a fresh, empty tgtd takes its
control port and portal, as after a restart that did not load the config
file.  The restarted agent must export the recorded publications again,
with the same ACL and CHAP (logins with the right secret work, the refused
cases stay refused), remove a target under its base IQN that no record
wants, and leave a foreign target alone.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import grpc
import pytest
from agent_iscsi_testlib import (
    BASE_IQN,
    CHAP,
    NODE_A,
    NODE_B,
    create,
    image_of,
    login,
    mapped_nodes,
    publish,
    scrape,
    storage_host_args,
    wait_reconciled,
)
from basalt_csi_testlib import AM, Agent, block_cap, cleanup_root, code_of, make_root, retry_until
from libiscsi_client import IscsiError
from tgtd_testlib import Tgtd, free_port, load_config

from basalt_agent.locks import ObjectLocks
from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.publishing import IscsiPublishing
from basalt_agent.reconcile import reconcile
from basalt_core import exports, tgt, volumes
from basalt_core.exports import ExportSettings
from basalt_core.iscsi_target import Chap
from basalt_core.model import Publication
from basalt_core.pool_factory import open_pool

STRAY = f"{BASE_IQN}:vol-00000000-0000-5000-8000-000000000000"  # ours by name, in no record
FOREIGN = "iqn.2003-01.org.example.other:disk1"


@pytest.fixture
def host(tgtd: Tgtd) -> Iterator[Tuple[Agent, Tgtd]]:
    root = make_root("iscsi-reconcile")
    agent = Agent(root, os.path.join(root, "pool"), node_id="storage-1",
                  extra_args=storage_host_args(tgtd, root, *mapped_nodes()))
    try:
        yield agent.start(), tgtd
    finally:
        agent.stop()
        cleanup_root(root)


def crash_and_restart_tgtd(daemon: Tgtd) -> None:
    """SIGKILL our tgtd; start an empty one on the same control port and portal (the fixture stops it)."""
    daemon.restart_empty()
    assert tgt.TgtBackend(control_port=daemon.control_port).targets() == []


def test_restart_restores_recorded_exports_and_removes_strays(host: Tuple[Agent, Tgtd], loop: Any,
                                                              tmp_path: Path) -> None:
    agent, daemon = host
    volume = create(agent, "kept", block_cap())
    context = publish(agent, volume.volume_id, "node-a", block_cap())
    with login(context, NODE_A) as session:
        assert session.write(16, b"K" * 512).good
    readers_cap = block_cap(AM.MULTI_NODE_READER_ONLY)
    readers = create(agent, "readers", readers_cap)
    readers_context = publish(agent, readers.volume_id, "node-b", readers_cap, readonly=True)
    gone = create(agent, "unpublished", block_cap())
    gone_context = publish(agent, gone.volume_id, "node-a", block_cap())
    agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=gone.volume_id,
                                                                             node_id="node-a"))
    agent.stop()

    crash_and_restart_tgtd(daemon)
    try:
        # Someone else's target, and one of ours that no record wants (a crash between export and record).
        other = tgt.TgtBackend(control_port=daemon.control_port, conf_path=str(tmp_path / "other.conf"),
                               record_path=str(tmp_path / "other.json"))
        for target in (FOREIGN, STRAY):
            other.ensure_export(target, loop.device, "feedfacefeedface", False)
            other.ensure_grant(target, NODE_B, None)

        # A write of the agent's config file a kill interrupted (CHAP secrets inside), and someone else's
        # in the same shared directory.
        interrupted = Path(agent.root, ".tmp-tgt-basalt.conf-killed")
        theirs = Path(agent.root, ".tmp-someone-else.conf-busy")
        for path in (interrupted, theirs):
            path.write_text("incominguser node-a Secret-0123456789\n")

        agent.extra_args += ["--metrics-address", f"127.0.0.1:{free_port()}"]
        agent.start()
        summary = wait_reconciled(agent, 2)
        assert (summary["applied"], summary["failed"], summary["skipped"]) == (5, 0, 0), summary
        assert not interrupted.exists() and theirs.exists()
        counted = scrape(agent)
        assert [counted[("basalt_reconcile_actions_total", result)] for result in ("applied", "skipped", "failed")] \
            == [5, 0, 0], counted
        targets = {t.iqn: t for t in tgt.TgtBackend(control_port=daemon.control_port).targets()}
        assert sorted(targets) == sorted([context["basalt.dev/iscsi-target"],
                                          readers_context["basalt.dev/iscsi-target"], FOREIGN])
        assert targets[FOREIGN].initiator_acls == (NODE_B,)  # untouched

        with login(context, NODE_A) as session:  # same secret as before the crash, same data
            assert session.read(16, 512).data == b"K" * 512
        with pytest.raises(IscsiError):
            login(context, NODE_B)
        with pytest.raises(IscsiError):
            login(context, NODE_A, password="Wrong-Secret-999")
        with pytest.raises(IscsiError):
            login(gone_context, NODE_A)  # unpublished before the crash: stays withdrawn
        with login(readers_context, NODE_B) as session:
            assert session.read(0, 512).good
            assert not session.write(0, b"X" * 512).good  # still read-only at the target
        with open(image_of(agent, readers.volume_id), "rb") as image:
            assert image.read(512) == b"\0" * 512

        log = agent.log()
        assert f"reconcile: remove {STRAY}" in log and FOREIGN not in log
        assert CHAP["node.session.auth.password"] not in log
        with open(os.path.join(agent.root, "tgt-basalt.conf")) as handle:  # persisted again
            persisted = handle.read()
        assert context["basalt.dev/iscsi-target"] in persisted and STRAY not in persisted

        agent.stop()  # idempotent: a second start finds nothing to do
        agent.start()
        assert wait_reconciled(agent, 3)["applied"] == 0
        agent.ctl.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                                                 node_id="node-a"))
        with pytest.raises(IscsiError):
            login(context, NODE_A)
        other.revoke_grant(FOREIGN, NODE_B)
        other.remove_export(FOREIGN)
    finally:
        agent.stop()


def test_one_failing_volume_does_not_stop_the_others(host: Tuple[Agent, Tgtd]) -> None:
    agent, daemon = host
    broken = create(agent, "broken", block_cap())
    publish(agent, broken.volume_id, "node-a", block_cap())
    fine = create(agent, "fine", block_cap())
    context = publish(agent, fine.volume_id, "node-a", block_cap())
    agent.stop()
    crash_and_restart_tgtd(daemon)
    try:
        # The broken volume's image disappears behind the agent's back: its export cannot be re-created.
        image = image_of(agent, broken.volume_id)
        for device in agent.loops_for(image):
            subprocess.run(["losetup", "--detach", device], check=True, timeout=30)
        assert agent.detached(image, timeout=30)
        os.unlink(image)

        agent.start()
        summary = wait_reconciled(agent, 2)
        assert summary["failed"] == 1 and summary["applied"] == 2, summary
        with login(context, NODE_A) as session:
            assert session.read(0, 512).good
        assert agent.identity.Probe(csi.ProbeRequest()).ready.value  # still serving
    finally:
        agent.stop()


def test_a_volume_busy_in_an_rpc_is_left_to_it(tgtd: Tgtd, tmp_path: Path) -> None:
    """In process, real pool and tgtd: a publish caught between its export and its record (volume lock held,
    as ControllerPublish holds it) is not undone; once the lock is free, the unrecorded export goes."""
    pool = open_pool(f"file:{tmp_path / 'pool'}")
    backend = tgt.TgtBackend(control_port=tgtd.control_port, conf_path=str(tmp_path / "basalt.conf"),
                             record_path=str(tmp_path / "grants.json"), base_iqn=BASE_IQN)
    settings = ExportSettings(BASE_IQN, (tgtd.portal,))
    publishing = IscsiPublishing(pool, "storage-1", backend, settings, {"node-a": NODE_A})
    volume, _ = volumes.ensure_volume(pool, "in-flight", 4 << 20)
    chap = Chap(CHAP["node.session.auth.username"], CHAP["node.session.auth.password"])
    info, _ = exports.ensure_exported(pool, backend, settings, volume, NODE_A, chap, False)
    locks = ObjectLocks()
    try:
        with locks.hold(volume.id):
            summary = reconcile(publishing, locks)
        assert (summary.busy, summary.applied) == (1, 0)
        assert backend.export(info.target_iqn) is not None
        assert pool.attached_device(volume) is not None

        summary = reconcile(publishing, locks)
        assert (summary.busy, summary.applied, summary.failed) == (0, 1, 0)
        assert backend.targets() == [] and backend.saved_grants() == {}
        assert pool.attached_device(volume) is None  # detached, as the last unpublish does
    finally:  # whatever failed above: no target, no loop device left behind
        exports.ensure_unexported(pool, backend, settings, volume.id, NODE_A)
        pool.detach(volume)
    volumes.delete_volume(pool, volume.id)


def test_reconciliation_lists_the_target_service_once_whatever_the_exports(tgtd: Tgtd, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Linear in the number of exports: after tgtd restarted empty, restoring N exports lists tgtd once and
    runs only the commands that change something (the shared CHAP account made once), with the real tgtd."""
    pool = open_pool(f"file:{tmp_path / 'pool'}")
    backend = tgt.TgtBackend(control_port=tgtd.control_port, conf_path=str(tmp_path / "basalt.conf"),
                             record_path=str(tmp_path / "grants.json"), base_iqn=BASE_IQN)
    settings = ExportSettings(BASE_IQN, (tgtd.portal,))
    publishing = IscsiPublishing(pool, "storage-1", backend, settings, {"node-a": NODE_A})
    chap = Chap(CHAP["node.session.auth.username"], CHAP["node.session.auth.password"])
    published = []
    for i in range(5):
        volume, _ = volumes.ensure_volume(pool, f"linear-{i}", 4 << 20)
        exports.ensure_exported(pool, backend, settings, volume, NODE_A, chap, False)
        volumes.set_publication(pool, volume.id, "node-a", Publication(readonly=False,
                                                                       access_mode="SINGLE_NODE_WRITER"))
        published.append(volume)
    tgtd.restart_empty()
    sent: List[List[str]] = []  # tgtd requests, over its socket or through tgtadm alike
    real_send = backend._send

    def counting(request: Any, what: str) -> str:
        sent.append(request.argv())
        return real_send(request, what)
    monkeypatch.setattr(backend, "_send", counting)
    try:
        summary = reconcile(publishing, ObjectLocks())
        assert (summary.applied, summary.failed, summary.skipped) == (10, 0, 0)  # an export and a grant each
        listings = [argv for argv in sent if "show" in argv]
        assert listings == [["--mode", "target", "--op", "show"]]
        assert len(sent) == 1 + 6 * len(published) + 1  # 6 changes per export, the shared account once
        assert len(backend.targets()) == len(published)
    finally:
        monkeypatch.undo()
        for volume in published:
            volumes.clear_publication(pool, volume.id, "node-a")
            exports.ensure_unexported(pool, backend, settings, volume.id, NODE_A)
            pool.detach(volume)
            volumes.delete_volume(pool, volume.id)


def test_config_loaded_at_boot_leaves_nothing_to_reconcile(host: Tuple[Agent, Tgtd]) -> None:
    """tgt.service at boot loads the config file the agent persisted (tgt-admin -e): the agent then agrees."""
    agent, daemon = host
    volume = create(agent, "booted", block_cap())
    context = publish(agent, volume.volume_id, "node-a", block_cap())
    agent.stop()
    crash_and_restart_tgtd(daemon)
    try:
        load_config(os.path.join(agent.root, "tgt-basalt.conf"), daemon.control_port, force=True)
        agent.start()
        summary = wait_reconciled(agent, 2)
        assert (summary["applied"], summary["failed"], summary["skipped"]) == (0, 0, 0), summary
        with login(context, NODE_A) as session:
            assert session.read(0, 512).good
        with pytest.raises(IscsiError):
            login(context, NODE_A, password="Wrong-Secret-999")
    finally:
        agent.stop()


def test_a_lun_on_another_device_is_exported_again_from_the_volume(host: Tuple[Agent, Tgtd], loop: Any,
                                                                   tmp_path: Path) -> None:
    """After a reboot renumbered the loop devices, tgt.service may restore a target whose LUN is another
    volume's device, under this volume's serial: the agent must not trust it."""
    agent, daemon = host
    volume = create(agent, "renumbered", block_cap())
    context = publish(agent, volume.volume_id, "node-a", block_cap())
    with login(context, NODE_A) as session:
        assert session.write(0, b"R" * 512).good
    agent.stop()
    crash_and_restart_tgtd(daemon)
    try:
        target = context["basalt.dev/iscsi-target"]
        restored = tgt.TgtBackend(control_port=daemon.control_port, conf_path=str(tmp_path / "boot.conf"),
                                  record_path=str(tmp_path / "boot.json"))
        restored.ensure_export(target, loop.device, context["basalt.dev/serial"], False)
        restored.ensure_grant(target, NODE_A, Chap(CHAP["node.session.auth.username"],
                                                   CHAP["node.session.auth.password"]))
        with login(context, NODE_A) as session:
            assert session.read(0, 512).data == b"\0" * 512  # the wrong data, as the node would see it

        agent.start()
        summary = wait_reconciled(agent, 2)
        assert (summary["applied"], summary["failed"], summary["skipped"]) == (3, 0, 0), summary
        assert f"its LUN is {loop.device}" in agent.log()
        with login(context, NODE_A) as session:
            assert session.read(0, 512).data == b"R" * 512
    finally:
        agent.stop()


def test_target_service_down_at_start_does_not_stop_the_agent(host: Tuple[Agent, Tgtd]) -> None:
    agent, daemon = host
    volume = create(agent, "while-down", block_cap())
    publish(agent, volume.volume_id, "node-a", block_cap())
    agent.stop()
    daemon.proc.kill()
    daemon.proc.wait(10)
    agent.start(wait_ready=False)
    assert retry_until(lambda: "iscsi reconciliation failed" in agent.log(), 60), agent.log()[-4000:]
    # Probe (and /healthz) depend on the target service and say so; the agent keeps serving.
    code, error = code_of(agent.identity.Probe, csi.ProbeRequest())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "target service" in error.details()
    assert [v.volume.volume_id for v in agent.list_all_volumes()] == [volume.volume_id]
