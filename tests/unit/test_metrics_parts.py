"""Metrics and operator pieces: the listener address, bounded reads, Probe's iscsid check, iscsiadm node lists."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from servicer_context import Aborted, Context

from basalt_agent import config, identity
from basalt_agent.bounded import BoundedRead
from basalt_agent.metrics import StateCollector, method_name
from basalt_agent.nodestate import NodeRecord, NodeState
from basalt_core import iscsiadm
from basalt_core.errors import InvalidRequest, Precondition
from basalt_core.pool import Storage, Usage


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("0.0.0.0", ("0.0.0.0", config.DEFAULT_METRICS_PORT)),
    (":9200", (config.DEFAULT_METRICS_HOST, 9200)),
    ("[::1]:9300", ("::1", 9300)),
    ("[::]", ("::", config.DEFAULT_METRICS_PORT)),
    ("::1", ("::1", config.DEFAULT_METRICS_PORT)),
])
def test_metrics_address_forms(text: str, expected: tuple[str, int]) -> None:
    assert config.metrics_address(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:0", "host:70000", "[::1]:x"])
def test_metrics_address_refuses_bad_ports(text: str) -> None:
    with pytest.raises(InvalidRequest, match="--metrics-address"):
        config.metrics_address(text)


def test_metrics_address_flag_alone_is_loopback_default() -> None:
    settings = config.load(["--metrics-address"], environ={})
    assert config.metrics_address(settings.metrics_address) == ("127.0.0.1", config.DEFAULT_METRICS_PORT)
    assert config.load([], environ={}).metrics_address == ""


def test_method_name_is_the_last_part() -> None:
    assert method_name("/csi.v1.Controller/CreateVolume") == "CreateVolume"


def test_bounded_read_times_out_and_shares_the_running_read() -> None:
    release, calls = threading.Event(), []

    def slow() -> int:
        calls.append(1)
        release.wait(10)
        return len(calls)

    read = BoundedRead(slow, bound=0.1)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            read()
    assert len(calls) == 1  # one hung read, not one per caller
    release.set()
    assert read() == 1
    assert read() == 2  # max_age 0: a finished read is never reused


def test_bounded_read_caches_for_max_age_and_passes_errors() -> None:
    values = iter([1, 2])
    read = BoundedRead(lambda: next(values), bound=1, max_age=0.3)
    assert read() == 1 and read() == 1
    time.sleep(0.35)
    assert read() == 2

    def broken() -> int:
        raise Precondition("pool gone")
    with pytest.raises(Precondition, match="pool gone"):
        BoundedRead(broken, bound=1)()


def test_iscsid_check_only_on_a_node_with_iscsi_attachments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    name = f"\0basalt-test-iscsid-{uuid.uuid4().hex}"  # an abstract socket of this test's own
    monkeypatch.setattr(identity, "ISCSID_SOCKET", name)
    state = NodeState(str(tmp_path / "node"))
    check = identity.iscsid_check(state)
    check()  # no iSCSI attachments: iscsid is not needed
    state.save(NodeRecord(volume_id="vol-1", iscsi_target="iqn.2026-11.dev.basalt:vol-1"))
    with pytest.raises(Precondition, match="iscsid does not answer"):
        check()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(name)
        listener.listen()
        check()
    finally:
        listener.close()
    assert [r.volume_id for r in state.all()] == ["vol-1"]


def test_iscsiadm_node_list_parses_portals_and_targets() -> None:
    text = ("127.0.0.1:3260,1 iqn.2026-11.dev.basalt:vol-1\n"
            "[::1]:3999,4294967295 iqn.2003-01.org.example:disk\n")
    assert iscsiadm.parse_nodes(text) == [("iqn.2026-11.dev.basalt:vol-1", "127.0.0.1:3260"),
                                          ("iqn.2003-01.org.example:disk", "[::1]:3999")]


def test_a_command_check_that_passed_is_trusted_for_its_max_age_and_a_failed_one_runs_every_time() -> None:
    runs, failing = [], [True]

    def check() -> None:
        runs.append(1)
        if failing[0]:
            raise Precondition("tgtd does not answer")

    recent = identity.PassedRecently(check, max_age=0.3)
    for _ in range(3):
        with pytest.raises(Precondition):
            recent()
    assert len(runs) == 3  # a failure is never remembered: Probe says ready as soon as the service is back
    failing[0] = False
    recent()
    recent()
    assert len(runs) == 4
    time.sleep(0.35)
    failing[0] = True
    with pytest.raises(Precondition):
        recent()  # past its max age the check runs again, and a failure shows at once
    assert len(runs) == 5


def test_node_tools_are_found_again_where_they_were_and_one_gone_is_missing(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for tool in (first / "mkfs.probe", second / "blkid.probe"):
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{first}:{second}")
    tools = identity.ToolsOnPath(["mkfs.probe", "blkid.probe", "absent.probe"])
    assert tools.missing() == ["absent.probe"]
    (first / "mkfs.probe").unlink()
    assert tools.missing() == ["mkfs.probe", "absent.probe"]
    (second / "mkfs.probe").write_text("#!/bin/sh\n")
    (second / "mkfs.probe").chmod(0o755)
    assert tools.missing() == ["absent.probe"]  # found again elsewhere on PATH


class _AnsweringPool:
    probe_runs_commands = False

    def probe(self) -> None:
        """The pool answers at once."""


def test_probe_fails_within_its_bound_while_a_dependency_hangs_and_recovers_after(monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """A hung target service or iscsid (a check that never returns) costs Probe PROBE_BOUND, not a hang."""
    monkeypatch.setattr(identity, "PROBE_BOUND", 0.3)
    released = threading.Event()

    def hung() -> None:
        released.wait(30)

    service = identity.IdentityService(_AnsweringPool(), ["identity", "controller"],  # type: ignore[arg-type]
                                       dependencies=[hung])
    started = time.monotonic()
    with pytest.raises(Aborted) as caught:
        service.Probe(identity.csi_pb2.ProbeRequest(), Context())
    assert time.monotonic() - started < 2
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION and "did not answer" in str(caught.value)
    released.set()
    deadline = time.monotonic() + 5
    while True:  # the hung check finishes; the next Probe runs the checks afresh and answers ready
        try:
            assert service.Probe(identity.csi_pb2.ProbeRequest(), Context()).ready.value is True
            break
        except Aborted:
            assert time.monotonic() < deadline
            time.sleep(0.05)


class _ThinPool:
    """A thin pool as its usage reads: 2 GiB of data space, 25.5 % of it and 7.25 % of the metadata used."""

    location = "vg0/thinpool"

    def usage(self) -> Usage:
        return Usage(Storage(2 << 30, 512 << 20, data_percent=25.5, metadata_percent=7.25), available=6 << 30,
                     provisioned=3 << 30, volumes=3, snapshots=1)


def test_a_thin_pool_reports_its_fill_levels_and_the_orphans_by_kind() -> None:
    """The lvmthin pool's gauges with their labels (a thin pool needs device-mapper: the VM tier has one)."""
    collector = StateCollector("node-1", _ThinPool(), exports=None, sessions=lambda: 2,  # type: ignore[arg-type]
                               orphans=lambda: {"export": 1, "session": 1})
    found = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
             for family in collector.collect() for sample in family.samples}
    pool = (("node", "node-1"), ("pool", "vg0/thinpool"))
    assert found[("basalt_pool_thin_data_percent", pool)] == 25.5
    assert found[("basalt_pool_thin_metadata_percent", pool)] == 7.25
    assert found[("basalt_pool_available_bytes", pool)] == 6 << 30  # virtual: over-provisioned
    assert found[("basalt_pool_provisioned_bytes", pool)] == 3 << 30
    assert found[("basalt_iscsi_sessions", (("node", "node-1"),))] == 2
    assert {dict(labels)["kind"]: value for (name, labels), value in found.items() if name == "basalt_orphans"} == {
        "export": 1, "session": 1}
