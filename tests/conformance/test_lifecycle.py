"""The agent process: socket, signals, service selection, logging hygiene."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Any

import pytest
from basalt_csi_testlib import (
    EPHEMERAL_KEY,
    LVM_LOOP_KIND,
    SC,
    SECRET_SENTINEL,
    SECRETS,
    MiB,
    agent_env,
    bring_up,
    code_of,
    crange,
    csi,
    exact,
    expect_code,
    is_mounted,
    iter_log_records,
    mount_cap,
    mounts_at,
    snapshot_source,
    tear_down,
    unique,
)


def test_socket_mode_0600(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory()
    st = os.stat(a.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(stat.S_IMODE(st.st_mode))


def test_stale_socket_replaced(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory(launch=False)
    # a dead socket file, as left behind by a killed agent
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(a.socket)
    stale.close()
    assert os.path.exists(a.socket)
    a.start()
    resp = a.identity.GetPluginInfo(csi.GetPluginInfoRequest())
    assert resp.name
    assert stat.S_IMODE(os.stat(a.socket).st_mode) == 0o600


def test_sigterm_graceful(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory()
    assert a.proc is not None
    pid = a.proc.pid
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    rc = a.proc.wait(20)
    assert rc == 0, f"exit code {rc}; stderr tail:\n{a.log()[-2000:]}"
    assert time.monotonic() - t0 < 15
    assert not os.path.exists(a.socket), "the socket must be removed on SIGTERM"


def test_sigterm_with_staged_volume_keeps_mounts(fresh_agent_factory: Any) -> None:
    """Stopping the agent must not tear down volumes the CO still uses."""
    a = fresh_agent_factory()
    cap = mount_cap("ext4")
    vol = a.create_volume(8 * MiB, cap=cap)
    att = bring_up(a, vol, cap)
    assert att.target
    assert a.stop() == 0
    assert is_mounted(att.target) and is_mounted(att.staging)
    # a restarted agent recognises what is already staged/published ...
    a.start()
    a.stage(vol.volume_id, cap, staging=att.staging)
    a.publish(vol.volume_id, cap, att.staging, target=att.target)
    assert len(mounts_at(att.staging)) == 1 and len(mounts_at(att.target)) == 1
    assert att.backing and len(a.loops_for(att.backing)) == 1
    stats = a.node.NodeGetVolumeStats(
        csi.NodeGetVolumeStatsRequest(volume_id=vol.volume_id, volume_path=att.target)
    )
    assert stats.volume_condition.abnormal is False
    # ... and still knows how to tear it down
    tear_down(a, att)


@pytest.mark.parametrize(
    ("services", "served", "refused"),
    [
        ("controller", "ctl", "node"),
        ("node", "node", "ctl"),
        ("identity,controller", "ctl", "node"),
    ],
)
def test_services_selection(fresh_agent_factory: Any, services: str, served: str, refused: str) -> None:
    a = fresh_agent_factory(services=services)
    node_call = (a.node.NodeGetInfo, csi.NodeGetInfoRequest())
    ctl_call = (a.ctl.ControllerGetCapabilities, csi.ControllerGetCapabilitiesRequest())
    calls = {"node": node_call, "ctl": ctl_call}
    method, req = calls[served]
    method(req)
    method, req = calls[refused]
    expect_code(method, req, SC.UNIMPLEMENTED)
    if refused == "node":
        expect_code(
            a.node.NodeStageVolume,
            csi.NodeStageVolumeRequest(volume_id="v", staging_target_path="/tmp/x",
                                       volume_capability=mount_cap()),
            SC.UNIMPLEMENTED,
        )
    if "identity" in services:
        a.identity.Probe(csi.ProbeRequest())


def test_secrets_never_logged(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory()
    cap = mount_cap("ext4")
    vol = a.ctl.CreateVolume(
        csi.CreateVolumeRequest(name=unique(), volume_capabilities=[cap],
                                capacity_range=exact(8 * MiB), secrets=SECRETS)
    ).volume
    ctx = a.ctl.ControllerPublishVolume(
        csi.ControllerPublishVolumeRequest(volume_id=vol.volume_id, node_id=a.node_id,
                                           volume_capability=cap, secrets=SECRETS)
    ).publish_context
    staging = a.staging_dir()
    a.node.NodeStageVolume(
        csi.NodeStageVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging,
                                   volume_capability=cap, publish_context=ctx, secrets=SECRETS)
    )
    target = a.path("mount")
    a.node.NodePublishVolume(
        csi.NodePublishVolumeRequest(volume_id=vol.volume_id, staging_target_path=staging,
                                     target_path=target, volume_capability=cap,
                                     publish_context=ctx, secrets=SECRETS)
    )
    a.ctl.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(volume_id=vol.volume_id, capacity_range=crange(12 * MiB),
                                          volume_capability=cap, secrets=SECRETS)
    )
    code_of(a.node.NodeExpandVolume,
            csi.NodeExpandVolumeRequest(volume_id=vol.volume_id, volume_path=target,
                                        staging_target_path=staging, volume_capability=cap,
                                        capacity_range=crange(12 * MiB), secrets=SECRETS))
    a.ctl.ValidateVolumeCapabilities(
        csi.ValidateVolumeCapabilitiesRequest(volume_id=vol.volume_id, volume_capabilities=[cap],
                                              secrets=SECRETS)
    )
    snap_req = csi.CreateSnapshotRequest(source_volume_id=vol.volume_id, name=unique("s"), secrets=SECRETS)
    if a.kind == LVM_LOOP_KIND:
        # documented: no point-in-time copy of a staged LV without dm_snapshot; taken after unstage
        err = expect_code(a.ctl.CreateSnapshot, snap_req, SC.FAILED_PRECONDITION)
        assert "dm_snapshot" in (err.details() or ""), err.details()
    else:
        snap = a.ctl.CreateSnapshot(snap_req).snapshot
        a.ctl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id, secrets=SECRETS))
        a.ctl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=SECRETS))
    # failing calls must not echo the request either
    code_of(a.ctl.CreateVolume,
            csi.CreateVolumeRequest(name=unique(), volume_capabilities=[cap],
                                    parameters={"bogus": "x"}, secrets=SECRETS))
    code_of(a.ctl.CreateVolume,
            csi.CreateVolumeRequest(name="", volume_capabilities=[cap], secrets=SECRETS))
    code_of(a.ctl.CreateVolume,
            csi.CreateVolumeRequest(name=unique(), volume_capabilities=[cap], secrets=SECRETS,
                                    volume_content_source=snapshot_source(unique("missing"))))
    code_of(a.node.NodeStageVolume,
            csi.NodeStageVolumeRequest(volume_id=unique("missing"), staging_target_path=staging,
                                       volume_capability=cap, secrets=SECRETS))
    a.unpublish(vol.volume_id, target)
    a.unstage(vol.volume_id, staging)
    if a.kind == LVM_LOOP_KIND:
        snap = a.ctl.CreateSnapshot(snap_req).snapshot
        a.ctl.ListSnapshots(csi.ListSnapshotsRequest(snapshot_id=snap.snapshot_id, secrets=SECRETS))
        a.ctl.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=SECRETS))
    a.ctl.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vol.volume_id, node_id=a.node_id,
                                             secrets=SECRETS)
    )
    a.ctl.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id, secrets=SECRETS))
    a.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id, secrets=SECRETS))
    assert a.stop() == 0
    log = a.log()
    assert log.strip(), "the agent logged nothing at debug level"
    assert SECRET_SENTINEL not in log, "a secret value reached the log"


def test_one_json_line_per_rpc(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory()
    name = unique()
    req = csi.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap()],
                                  capacity_range=exact(4 * MiB))
    a.ctl.CreateVolume(req)
    expect_code(a.ctl.CreateVolume,
                csi.CreateVolumeRequest(name="", volume_capabilities=[mount_cap()]),
                SC.INVALID_ARGUMENT)
    a.stop()
    records = [r for r in iter_log_records(a.log()) if "code" in r and "method" in r]
    creates = [r for r in records if str(r["method"]).endswith("/CreateVolume")]
    assert len(creates) == 2, f"expected one JSON line per CreateVolume call, got {creates}"
    assert [str(r["code"]) for r in creates] == ["OK", "INVALID_ARGUMENT"], creates
    assert all(any("duration" in k for k in r) for r in creates), f"no duration: {creates}"
    stops = [r for r in records if str(r["method"]).endswith("/Probe")]
    assert stops, "Probe calls are RPCs too and need a log line"


def test_probe_answers_quickly(fresh_agent_factory: Any) -> None:
    a = fresh_agent_factory()
    t0 = time.monotonic()
    for _ in range(20):
        a.identity.Probe(csi.ProbeRequest(), timeout=1)
    assert time.monotonic() - t0 < 5


def test_unix_endpoint_only(tmp_path: Any) -> None:
    """A non-unix endpoint is refused at start-up (nonzero exit), not served."""
    proc = subprocess.run(
        [sys.executable, "-m", "basalt_agent", "--endpoint", "tcp://127.0.0.1:0",
         "--node-id", "n", "--pool", f"file:{tmp_path}/pool", "--state-dir", f"{tmp_path}/state"],
        capture_output=True, text=True, timeout=30, env=agent_env(),
    )
    assert proc.returncode != 0
    assert proc.stderr.strip()


def test_state_survives_restart(fresh_agent_factory: Any) -> None:
    """State is on disk: a restarted agent still knows volumes it created."""
    a = fresh_agent_factory()
    vol = a.create_volume(4 * MiB)
    a.stop()
    a.start()
    got = a.ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol.volume_id))
    assert got.volume.capacity_bytes == 4 * MiB
    again = a.ctl.CreateVolume(
        csi.CreateVolumeRequest(name="unused-" + unique(), volume_capabilities=[mount_cap()],
                                capacity_range=exact(4 * MiB))
    ).volume
    assert again.volume_id != vol.volume_id


def test_service_account_tokens_never_logged(fresh_agent_factory: Any) -> None:
    """kubelet (CSIDriver tokenRequests) passes service-account tokens in NodePublish volume_context."""
    a = fresh_agent_factory()
    token = "eyJTOKEN-SENTINEL-0123456789"
    tokens = '{"vault":{"token":"' + token + '","expirationTimestamp":"2030-01-01T00:00:00Z"}}'
    cap = mount_cap("ext4")
    vol = a.create_volume(8 * MiB, cap=cap)
    staging = a.stage(vol.volume_id, cap)
    context = {"csi.storage.k8s.io/serviceAccount.tokens": tokens, "csi.storage.k8s.io/pod.name": "p"}
    target = a.publish(vol.volume_id, cap, staging, volume_context=context)
    a.unpublish(vol.volume_id, target)
    eph_id, eph_target = unique("csi-eph"), a.path("mount")
    a.node.NodePublishVolume(
        csi.NodePublishVolumeRequest(
            volume_id=eph_id, target_path=eph_target, volume_capability=cap,
            volume_context={**context, EPHEMERAL_KEY: "true", "size": "16Mi"},
        )
    )
    a.unpublish(eph_id, eph_target)
    a.unstage(vol.volume_id, staging)
    assert a.stop() == 0
    assert token not in a.log(), "a service-account token from volume_context reached the log"
