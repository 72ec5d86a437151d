"""--metrics-address: /metrics after a known sequence of RPCs, /healthz with the livenessprobe contract."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from basalt_csi_testlib import FILE_KIND, SC, Agent, MiB, code_of, csi, exact, iter_log_records, mount_cap, unique
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_agent(factory: Any) -> tuple[Agent, str]:
    port = free_port()
    agent = factory(extra_args=["--metrics-address", f"127.0.0.1:{port}"])
    return agent, f"http://127.0.0.1:{port}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> Samples:
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def create(name: str, size: int) -> Any:
    return csi.CreateVolumeRequest(name=name, volume_capabilities=[mount_cap()], capacity_range=exact(size))


def test_metrics_count_rpcs_by_method_and_code_and_read_the_pool(fresh_agent_factory: Any) -> None:
    agent, base = metrics_agent(fresh_agent_factory)
    node = agent.node_id
    size = 64 * MiB
    volume = agent.ctl.CreateVolume(create(unique(), size)).volume  # before the first (cached) pool read
    if agent.lvm is None:  # an image no record owns: an orphan
        with open(os.path.join(agent.pool, "volumes", f"vol-{uuid.uuid4().hex}.img"), "wb") as handle:
            handle.truncate(MiB)
    before = scrape(base)

    name = unique()
    agent.ctl.CreateVolume(create(name, size))
    agent.ctl.CreateVolume(create(name, size))  # idempotent: OK again
    code, _ = code_of(agent.ctl.CreateVolume, create("", size))
    assert code == SC.INVALID_ARGUMENT
    created = agent.ctl.CreateVolume(create(name, size)).volume
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=created.volume_id))
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id="vol-" + "0" * 32))  # unknown: OK by the spec
    after = scrape(base)

    def delta(name: str, method: str, code: str) -> float:
        labels = {"node": node, "method": method, "code": code}
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("basalt_rpc_requests_total", "CreateVolume", "OK") == 3
    assert delta("basalt_rpc_requests_total", "CreateVolume", "INVALID_ARGUMENT") == 1
    assert delta("basalt_rpc_requests_total", "DeleteVolume", "OK") == 2
    assert delta("basalt_rpc_duration_seconds_count", "CreateVolume", "OK") == 3
    assert delta("basalt_rpc_duration_seconds_count", "DeleteVolume", "NOT_FOUND") == 0

    pool = {"node": node, "pool": agent.lvm.vg if agent.lvm is not None else agent.pool}
    assert value(before, "basalt_pool_up", **pool) == 1
    assert value(before, "basalt_pool_volumes", **pool) == 1
    assert value(before, "basalt_pool_snapshots", **pool) == 0
    assert value(before, "basalt_pool_provisioned_bytes", **pool) == volume.capacity_bytes
    total = value(before, "basalt_pool_size_bytes", **pool)
    assert 0 < value(before, "basalt_pool_allocated_bytes", **pool) <= total
    assert 0 < value(before, "basalt_pool_available_bytes", **pool) <= total
    assert value(before, "basalt_cleanup_repairs_total", **pool) == 0
    orphans = {kind: value(before, "basalt_orphans", kind=kind, **pool) for kind in ("image", "loop_device")}
    assert orphans == {"image": 0 if agent.lvm is not None else 1, "loop_device": 0}


def test_healthz_follows_probe_while_the_pool_is_broken_and_repaired(fresh_agent_factory: Any,
                                                                    pool_kind: str) -> None:
    if pool_kind != FILE_KIND:
        pytest.skip("breaks the pool by renaming the file pool's directory; the lvm pool's Probe reads its VG")
    agent, base = metrics_agent(fresh_agent_factory)
    assert get(base + "/healthz") == (200, "ok\n")
    volumes_dir = os.path.join(agent.pool, "volumes")
    os.rename(volumes_dir, volumes_dir + ".away")
    try:
        status, reason = get(base + "/healthz")
        assert status == 500
        assert "FAILED_PRECONDITION" in reason and volumes_dir in reason
    finally:
        os.rename(volumes_dir + ".away", volumes_dir)
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/nothing")[0] == 404


def test_metrics_listener_is_off_by_default_and_a_busy_port_stops_the_start(fresh_agent_factory: Any) -> None:
    agent = fresh_agent_factory()
    serving = [r for r in iter_log_records(agent.log()) if r.get("msg") == "serving"]
    assert serving and serving[0]["metrics"] is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = fresh_agent_factory(launch=False, extra_args=["--metrics-address", f"127.0.0.1:{port}"])
        busy.start(wait_ready=False)
        assert busy.proc is not None
        assert busy.proc.wait(30) == 1
    assert f"--metrics-address 127.0.0.1:{port}" in busy.log()
