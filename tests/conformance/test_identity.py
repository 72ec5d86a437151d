"""Identity service, capabilities and NodeGetInfo."""

from __future__ import annotations

import re

from basalt_csi_testlib import DRIVER_NAME, TOPOLOGY_KEY, Agent, csi

PC = csi.PluginCapability
CC = csi.ControllerServiceCapability.RPC
NC = csi.NodeServiceCapability.RPC


def test_plugin_info(agent: Agent) -> None:
    info = agent.identity.GetPluginInfo(csi.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME
    assert len(info.name) <= 63
    assert re.fullmatch(r"[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?", info.name)
    assert info.vendor_version, "vendor_version is REQUIRED"


def test_plugin_capabilities(agent: Agent) -> None:
    resp = agent.identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    services = {c.service.type for c in resp.capabilities if c.WhichOneof("type") == "service"}
    expansion = {
        c.volume_expansion.type
        for c in resp.capabilities
        if c.WhichOneof("type") == "volume_expansion"
    }
    assert services == {
        PC.Service.CONTROLLER_SERVICE,
        PC.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
    }
    assert expansion == {PC.VolumeExpansion.ONLINE}


def test_probe_ready(agent: Agent) -> None:
    resp = agent.identity.Probe(csi.ProbeRequest())
    assert not resp.HasField("ready") or resp.ready.value is True


def test_controller_capabilities(agent: Agent) -> None:
    resp = agent.ctl.ControllerGetCapabilities(csi.ControllerGetCapabilitiesRequest())
    got = {c.rpc.type for c in resp.capabilities}
    expected = {
        CC.CREATE_DELETE_VOLUME,
        CC.PUBLISH_UNPUBLISH_VOLUME,
        CC.LIST_VOLUMES,
        CC.LIST_VOLUMES_PUBLISHED_NODES,
        CC.GET_CAPACITY,
        CC.CREATE_DELETE_SNAPSHOT,
        CC.LIST_SNAPSHOTS,
        CC.GET_SNAPSHOT,
        CC.CLONE_VOLUME,
        CC.PUBLISH_READONLY,
        CC.EXPAND_VOLUME,
        CC.GET_VOLUME,
        CC.VOLUME_CONDITION,
        CC.SINGLE_NODE_MULTI_WRITER,
    }
    assert got == expected, (
        f"missing {sorted(CC.Name(t) for t in expected - got)}, "
        f"unexpected {sorted(CC.Name(t) for t in got - expected)}"
    )


def test_node_capabilities(agent: Agent) -> None:
    resp = agent.node.NodeGetCapabilities(csi.NodeGetCapabilitiesRequest())
    got = {c.rpc.type for c in resp.capabilities}
    expected = {
        NC.STAGE_UNSTAGE_VOLUME,
        NC.GET_VOLUME_STATS,
        NC.EXPAND_VOLUME,
        NC.VOLUME_CONDITION,
        NC.SINGLE_NODE_MULTI_WRITER,
    }
    assert got == expected, (
        f"missing {sorted(NC.Name(t) for t in expected - got)}, "
        f"unexpected {sorted(NC.Name(t) for t in got - expected)}"
    )


def test_node_get_info(agent: Agent) -> None:
    resp = agent.node.NodeGetInfo(csi.NodeGetInfoRequest())
    assert resp.node_id == agent.node_id
    assert dict(resp.accessible_topology.segments) == {TOPOLOGY_KEY: agent.node_id}
    assert resp.max_volumes_per_node >= 0


def test_topology_segment_names_are_valid(agent: Agent) -> None:
    resp = agent.node.NodeGetInfo(csi.NodeGetInfoRequest())
    for key, value in resp.accessible_topology.segments.items():
        prefix, _, name = key.rpartition("/")
        assert len(name) <= 63 and len(value) <= 63, (key, value)
        assert prefix and len(prefix) <= 63
