"""Controller service: ValidateVolumeCapabilities, publish, get, delete, list, capacity, expand."""

from __future__ import annotations

import threading
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import (
    AM,
    FILE_KIND,
    MULTI_NODE_MODES,
    SC,
    XFS_MIN,
    Agent,
    MiB,
    block_cap,
    code_of,
    codes_at_once,
    crange,
    create_volume_request,
    csi,
    exact,
    expect_code,
    mount_cap,
    round_up,
    topology,
    unique,
)

# --------------------------------------------------------------------------
# ValidateVolumeCapabilities
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vol4(agent: Agent) -> Any:
    return agent.create_volume(4 * MiB)


@pytest.mark.parametrize(
    "caps",
    [
        [mount_cap()],
        [mount_cap(mode=AM.SINGLE_NODE_READER_ONLY)],
        [mount_cap(mode=AM.SINGLE_NODE_MULTI_WRITER), mount_cap(mode=AM.SINGLE_NODE_SINGLE_WRITER)],
    ],
    ids=["writer", "reader-only", "two-caps"],
)
def test_validate_supported(agent: Agent, vol4: Any, caps: list[Any]) -> None:
    resp = agent.ctl.ValidateVolumeCapabilities(
        csi.ValidateVolumeCapabilitiesRequest(
            volume_id=vol4.volume_id,
            volume_context=vol4.volume_context,
            volume_capabilities=caps,
        )
    )
    assert resp.HasField("confirmed"), resp.message
    assert list(resp.confirmed.volume_capabilities) == caps


@pytest.mark.parametrize("mode", MULTI_NODE_MODES, ids=lambda m: AM.Mode.Name(m))
def test_validate_multi_node_not_confirmed(agent: Agent, vol4: Any, mode: int) -> None:
    resp = agent.ctl.ValidateVolumeCapabilities(
        csi.ValidateVolumeCapabilitiesRequest(
            volume_id=vol4.volume_id,
            volume_context=vol4.volume_context,
            volume_capabilities=[mount_cap(mode=mode)],
        )
    )
    assert not resp.HasField("confirmed")
    assert resp.message


def test_validate_missing_volume(agent: Agent) -> None:
    expect_code(
        agent.ctl.ValidateVolumeCapabilities,
        csi.ValidateVolumeCapabilitiesRequest(
            volume_id=unique("missing"), volume_capabilities=[mount_cap()]
        ),
        SC.NOT_FOUND,
    )


# --------------------------------------------------------------------------
# ControllerPublish / Unpublish / GetVolume / DeleteVolume
# --------------------------------------------------------------------------


def cpub(agent: Agent, volume_id: str, node_id: str | None = None, readonly: bool = False,
         cap: Any = None) -> Any:
    return csi.ControllerPublishVolumeRequest(
        volume_id=volume_id,
        node_id=agent.node_id if node_id is None else node_id,
        volume_capability=cap if cap is not None else mount_cap(),
        readonly=readonly,
    )


def cunpub(agent: Agent, volume_id: str, node_id: str | None = None) -> Any:
    return csi.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=agent.node_id if node_id is None else node_id
    )


def test_publish_lifecycle_and_delete_precondition(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    got = agent.get_volume(vol.volume_id)
    assert got.volume.volume_id == vol.volume_id
    assert got.volume.capacity_bytes == 4 * MiB
    assert list(got.status.published_node_ids) == []
    assert got.status.volume_condition.abnormal is False

    agent.ctl.ControllerPublishVolume(cpub(agent, vol.volume_id))
    got = agent.get_volume(vol.volume_id)
    assert list(got.status.published_node_ids) == [agent.node_id]
    assert got.status.volume_condition.abnormal is False

    listed = {e.volume.volume_id: e for e in agent.list_all_volumes()}
    assert list(listed[vol.volume_id].status.published_node_ids) == [agent.node_id]

    expect_code(
        agent.ctl.DeleteVolume,
        csi.DeleteVolumeRequest(volume_id=vol.volume_id),
        SC.FAILED_PRECONDITION,
    )
    agent.ctl.ControllerUnpublishVolume(cunpub(agent, vol.volume_id))
    assert list(agent.get_volume(vol.volume_id).status.published_node_ids) == []
    listed = {e.volume.volume_id: e for e in agent.list_all_volumes()}
    assert list(listed[vol.volume_id].status.published_node_ids) == []
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))
    expect_code(
        agent.ctl.ControllerGetVolume,
        csi.ControllerGetVolumeRequest(volume_id=vol.volume_id),
        SC.NOT_FOUND,
    )
    assert vol.volume_id not in {e.volume.volume_id for e in agent.list_all_volumes()}


def test_publish_other_node_not_found(agent: Agent, vol4: Any) -> None:
    expect_code(
        agent.ctl.ControllerPublishVolume,
        cpub(agent, vol4.volume_id, node_id="some-other-node"),
        SC.NOT_FOUND,
    )


def test_publish_missing_volume_not_found(agent: Agent) -> None:
    expect_code(
        agent.ctl.ControllerPublishVolume, cpub(agent, unique("missing")), SC.NOT_FOUND
    )


def test_unpublish_unknown_node_or_volume_ok(agent: Agent, vol4: Any) -> None:
    agent.ctl.ControllerUnpublishVolume(cunpub(agent, vol4.volume_id, node_id="some-other-node"))
    agent.ctl.ControllerUnpublishVolume(cunpub(agent, unique("missing")))


def test_publish_readonly_then_incompatible(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    agent.ctl.ControllerPublishVolume(cpub(agent, vol.volume_id, readonly=True))
    agent.ctl.ControllerPublishVolume(cpub(agent, vol.volume_id, readonly=True))
    expect_code(
        agent.ctl.ControllerPublishVolume,
        cpub(agent, vol.volume_id, readonly=False),
        SC.ALREADY_EXISTS,
    )
    agent.ctl.ControllerUnpublishVolume(cunpub(agent, vol.volume_id))


def test_get_volume_missing(agent: Agent) -> None:
    expect_code(
        agent.ctl.ControllerGetVolume,
        csi.ControllerGetVolumeRequest(volume_id=unique("missing")),
        SC.NOT_FOUND,
    )


def test_delete_missing_volume_ok(agent: Agent) -> None:
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=unique("missing")))


def _race_publish_and_delete(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    results: dict[str, grpc.StatusCode] = {}
    barrier = threading.Barrier(2)

    def publish() -> None:
        barrier.wait()
        results["publish"] = code_of(agent.ctl.ControllerPublishVolume, cpub(agent, vol.volume_id))[0]

    def delete() -> None:
        barrier.wait()
        results["delete"] = code_of(agent.ctl.DeleteVolume, csi.DeleteVolumeRequest(volume_id=vol.volume_id))[0]

    threads = [threading.Thread(target=publish), threading.Thread(target=delete)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["publish"] in (SC.OK, SC.NOT_FOUND, SC.ABORTED), results
    assert results["delete"] in (SC.OK, SC.FAILED_PRECONDITION, SC.ABORTED), results
    assert not (results["publish"] == SC.OK and results["delete"] == SC.OK), results
    code, got = code_of(agent.ctl.ControllerGetVolume, csi.ControllerGetVolumeRequest(volume_id=vol.volume_id))
    if results["delete"] == SC.OK:
        assert code == SC.NOT_FOUND, "deleted volume still reported"
        return
    assert code == SC.OK
    published = list(got.status.published_node_ids)
    assert published == ([agent.node_id] if results["publish"] == SC.OK else []), results
    agent.ctl.ControllerUnpublishVolume(cunpub(agent, vol.volume_id))
    agent.ctl.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id))


def test_delete_races_publish(agent: Agent) -> None:
    """DeleteVolume and ControllerPublish at once: the outcomes must agree with the end state."""
    for _ in range(5):
        _race_publish_and_delete(agent)


# --------------------------------------------------------------------------
# ListVolumes
# --------------------------------------------------------------------------


def test_list_volumes_paginates(agent: Agent) -> None:
    created = {agent.create_volume(4 * MiB).volume_id for _ in range(3)}
    seen: list[str] = []
    token = ""
    for _ in range(1000):
        resp = agent.ctl.ListVolumes(csi.ListVolumesRequest(max_entries=1, starting_token=token))
        assert len(resp.entries) <= 1
        seen += [e.volume.volume_id for e in resp.entries]
        token = resp.next_token
        if not token:
            break
    assert not token, "pagination never ended"
    assert len(seen) == len(set(seen)), "duplicates across pages"
    assert created <= set(seen)
    everything = {e.volume.volume_id for e in agent.list_all_volumes()}
    assert set(seen) == everything


def test_list_volumes_entries_complete(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    entry = {e.volume.volume_id: e for e in agent.list_all_volumes()}[vol.volume_id]
    assert entry.volume.capacity_bytes == 4 * MiB
    assert entry.HasField("status")


def test_list_volumes_bad_token(agent: Agent) -> None:
    expect_code(
        agent.ctl.ListVolumes,
        csi.ListVolumesRequest(starting_token="definitely-not-a-token"),
        SC.ABORTED,
    )


def test_list_volumes_negative_max(agent: Agent) -> None:
    expect_code(agent.ctl.ListVolumes, csi.ListVolumesRequest(max_entries=-1), SC.INVALID_ARGUMENT)


# --------------------------------------------------------------------------
# GetCapacity
# --------------------------------------------------------------------------


def test_get_capacity_unlimited(agent: Agent) -> None:
    resp = agent.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert resp.available_capacity > 0
    plain = agent.ctl.GetCapacity(csi.GetCapacityRequest())
    assert plain.available_capacity > 0


def test_get_capacity_with_limit(agent_factory: Any) -> None:
    limit = 64 * MiB
    a = agent_factory(capacity_limit=limit)
    first = a.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert 0 < first.available_capacity <= limit
    assert first.available_capacity == limit
    a.create_volume(16 * MiB)
    a.create_volume(8 * MiB)
    second = a.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert second.available_capacity == limit - 24 * MiB
    topo = csi.GetCapacityRequest(
        volume_capabilities=[mount_cap()], accessible_topology=topology(a.node_id)
    )
    assert a.ctl.GetCapacity(topo).available_capacity == limit - 24 * MiB


def test_get_capacity_never_negative(agent_factory: Any) -> None:
    a = agent_factory(capacity_limit=8 * MiB)
    code, res = code_of(a.ctl.CreateVolume, create_volume_request(rng=exact(32 * MiB)))
    # Over --pool-capacity-limit: no space, and nothing created.
    assert code == SC.RESOURCE_EXHAUSTED, (code, res.details())
    assert "8388608 bytes available" in res.details(), res.details()
    resp = a.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert resp.available_capacity == 8 * MiB
    assert a.list_all_volumes() == []


def test_get_capacity_other_topology(agent: Agent) -> None:
    code, resp = code_of(
        agent.ctl.GetCapacity,
        csi.GetCapacityRequest(
            volume_capabilities=[mount_cap()], accessible_topology=topology("some-other-node")
        ),
    )
    # Another node's topology is reachable from none of this pool's volumes: no capacity there.
    assert code == SC.OK, (code, resp.details())
    assert resp.available_capacity == 0


def test_get_capacity_multi_node(agent: Agent) -> None:
    code, resp = code_of(
        agent.ctl.GetCapacity,
        csi.GetCapacityRequest(volume_capabilities=[mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)]),
    )
    # A capability the pool cannot serve has no capacity: OK with 0 (the CO asks per capability).
    assert code == SC.OK, (code, resp.details())
    assert resp.available_capacity == 0


# --------------------------------------------------------------------------
# ControllerExpandVolume
# --------------------------------------------------------------------------


def expand_req(volume_id: str, required: int, limit: int = 0, cap: Any = None) -> Any:
    return csi.ControllerExpandVolumeRequest(
        volume_id=volume_id,
        capacity_range=crange(required, limit),
        volume_capability=cap if cap is not None else mount_cap(),
    )


def test_expand_grows(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    resp = agent.ctl.ControllerExpandVolume(expand_req(vol.volume_id, 8 * MiB))
    assert resp.capacity_bytes == 8 * MiB
    assert resp.node_expansion_required is True
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == 8 * MiB


def test_expand_rounds_up(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    resp = agent.ctl.ControllerExpandVolume(expand_req(vol.volume_id, 6 * MiB + 1))
    assert resp.capacity_bytes == round_up(7 * MiB, agent.allocation_unit())
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == resp.capacity_bytes


def test_expand_smaller_is_noop(agent: Agent) -> None:
    vol = agent.create_volume(8 * MiB)
    resp = agent.ctl.ControllerExpandVolume(expand_req(vol.volume_id, 2 * MiB))
    assert resp.capacity_bytes == 8 * MiB
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == 8 * MiB


def test_expand_block_volume(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB, cap=block_cap())
    resp = agent.ctl.ControllerExpandVolume(
        expand_req(vol.volume_id, 8 * MiB, cap=block_cap())
    )
    assert resp.capacity_bytes == 8 * MiB


def test_expand_missing(agent: Agent) -> None:
    expect_code(
        agent.ctl.ControllerExpandVolume, expand_req(unique("missing"), 8 * MiB), SC.NOT_FOUND
    )


def test_expand_limit_below_required(agent: Agent, vol4: Any) -> None:
    expect_code(
        agent.ctl.ControllerExpandVolume,
        expand_req(vol4.volume_id, 16 * MiB, 8 * MiB),
        SC.OUT_OF_RANGE,
    )


# --------------------------------------------------------------------------
# the pool's capacity limit under concurrent calls
# --------------------------------------------------------------------------


def test_get_capacity_min_max_sizes(agent_factory: Any) -> None:
    limit = 512 * MiB
    a = agent_factory(capacity_limit=limit)
    for cap, minimum in ((mount_cap("ext4"), MiB), (mount_cap("xfs"), XFS_MIN), (block_cap(), MiB)):
        resp = a.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[cap]))
        assert resp.available_capacity == limit
        if resp.HasField("maximum_volume_size"):
            assert 0 <= resp.maximum_volume_size.value <= resp.available_capacity, resp
        if resp.HasField("minimum_volume_size"):
            # the spec: capabilities SHALL be taken into account (xfs has a 300 MiB floor);
            # lvm pools allocate whole extents
            assert resp.minimum_volume_size.value == round_up(minimum, a.allocation_unit()), (cap, resp)


def test_parallel_creates_respect_capacity_limit(agent_factory: Any) -> None:
    limit = 64 * MiB
    a = agent_factory(capacity_limit=limit)
    results = codes_at_once(a.ctl.CreateVolume, [create_volume_request(rng=exact(16 * MiB)) for _ in range(8)])
    codes = sorted(c.name for c, _ in results)
    ok = [c for c, _ in results if c == SC.OK]
    # Distinct names never collide (ABORTED is for a busy name); the space check is serialised:
    # exactly four 16 MiB volumes fit under 64 MiB, and the other four find no space.
    assert codes == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"] * 4, [(c.name, r.details()) for c, r in results]
    allocated = sum(e.volume.capacity_bytes for e in a.list_all_volumes())
    assert allocated == 16 * MiB * len(ok) <= limit
    resp = a.ctl.GetCapacity(csi.GetCapacityRequest(volume_capabilities=[mount_cap()]))
    assert resp.available_capacity == limit - allocated


def test_expand_beyond_capacity_limit(agent_factory: Any) -> None:
    a = agent_factory(capacity_limit=32 * MiB)
    vol = a.create_volume(16 * MiB)
    expect_code(a.ctl.ControllerExpandVolume, expand_req(vol.volume_id, 64 * MiB), SC.RESOURCE_EXHAUSTED)
    assert a.get_volume(vol.volume_id).volume.capacity_bytes == 16 * MiB
    assert a.ctl.GetCapacity(csi.GetCapacityRequest()).available_capacity == 16 * MiB


def test_parallel_expands_respect_capacity_limit(agent_factory: Any) -> None:
    limit = 64 * MiB
    a = agent_factory(capacity_limit=limit)
    vols = [a.create_volume(8 * MiB) for _ in range(4)]  # 32 MiB used, 32 MiB left
    results = [code for code, _ in codes_at_once(a.ctl.ControllerExpandVolume,
                                                  [expand_req(v.volume_id, 24 * MiB) for v in vols])]
    # Four different volumes never collide, so no ABORTED. The file pool: 32 MiB left fits exactly two
    # of the +16 MiB growths. lvm-loop allocates contiguously: of four LVs made one after the other, only
    # the last has free extents after it, and it takes the remaining 16 MiB of the VG's share.
    grown = 2 if a.kind == FILE_KIND else 1
    assert sorted(c.name for c in results) == ["OK"] * grown + ["RESOURCE_EXHAUSTED"] * (4 - grown), results
    allocated = sum(a.get_volume(v.volume_id).volume.capacity_bytes for v in vols)
    assert allocated == 32 * MiB + grown * 16 * MiB <= limit, f"{allocated // MiB} MiB allocated"
