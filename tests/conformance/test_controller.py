"""Controller service: CreateVolume sizing/validation, publish, list, capacity, expand."""

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
    SINGLE_NODE_MODES,
    TOPOLOGY_KEY,
    XFS_MIN,
    Agent,
    GiB,
    MiB,
    block_cap,
    code_of,
    crange,
    csi,
    exact,
    expect_code,
    mount_cap,
    round_up,
    topology,
    unique,
)


def create_req(cap: Any = None, rng: Any = None, **kw: Any) -> Any:
    req = csi.CreateVolumeRequest(
        name=kw.pop("name", None) or unique(),
        volume_capabilities=[cap if cap is not None else mount_cap()],
        **kw,
    )
    if rng is not None:
        req.capacity_range.CopyFrom(rng)
    return req


# --------------------------------------------------------------------------
# CreateVolume: sizes
# --------------------------------------------------------------------------


def test_create_default_size_and_topology(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_req()).volume
    assert vol.volume_id
    assert vol.capacity_bytes == 1 * GiB
    segments = [dict(t.segments) for t in vol.accessible_topology]
    assert {TOPOLOGY_KEY: agent.node_id} in segments


@pytest.mark.parametrize(
    ("required", "limit", "expected"),
    [
        (1, 0, 1 * MiB),
        (5 * MiB + 1, 0, 6 * MiB),
        (4 * MiB, 4 * MiB, 4 * MiB),
        (3 * MiB, 10 * MiB, 3 * MiB),
        (3 * MiB + 7, 10 * MiB, 4 * MiB),
    ],
    ids=["1B->1MiB", "5MiB+1->6MiB", "exact-4MiB", "range-3..10MiB", "round-in-range"],
)
def test_create_rounds_up_to_mib(agent: Agent, required: int, limit: int, expected: int) -> None:
    # file pools allocate in MiB; lvm pools in extents (4 MiB here): the answer is what was allocated
    expected = round_up(expected, agent.allocation_unit())
    req = create_req(rng=crange(required, limit))
    vol = agent.ctl.CreateVolume(req).volume
    assert vol.capacity_bytes == expected
    # what CreateVolume answered is what the volume is, and a retry is the same volume
    assert get_volume(agent, vol.volume_id).volume.capacity_bytes == vol.capacity_bytes
    code, again = code_of(agent.ctl.CreateVolume, req)
    assert code == SC.OK, f"retried CreateVolume: {code.name} {again.details()}"
    assert (again.volume.volume_id, again.volume.capacity_bytes) == (vol.volume_id, vol.capacity_bytes)


@pytest.mark.parametrize(
    ("required", "limit"),
    [(1, MiB), (3 * MiB, 5 * MiB), (5 * MiB + 1, 7 * MiB)],
    ids=["1B..1MiB", "3..5MiB", "5MiB+1..7MiB"],
)
def test_create_never_exceeds_limit(agent: Agent, required: int, limit: int) -> None:
    """CSI: the volume MUST NOT be larger than limit_bytes; when the pool cannot, OUT_OF_RANGE.

    Which one is the pool's allocation unit's to say (1 MiB for the file pool, the
    4 MiB extent for lvm): the smallest multiple of it at least ``required``, if
    that is within the limit, and OUT_OF_RANGE exactly when it is not.
    """
    fitting = round_up(required, agent.allocation_unit())
    code, res = code_of(agent.ctl.CreateVolume, create_req(rng=crange(required, limit)))
    if fitting > limit:
        assert code == SC.OUT_OF_RANGE, f"[{required}, {limit}] cannot fit {fitting}: {code.name} {res.details()}"
        assert str(limit) in res.details(), res.details()
        return
    assert code == SC.OK, f"[{required}, {limit}] fits {fitting}: {code.name} {res.details()}"
    real = get_volume(agent, res.volume.volume_id).volume.capacity_bytes
    assert res.volume.capacity_bytes == real == fitting, (
        f"CreateVolume [{required}, {limit}] answered {res.volume.capacity_bytes} bytes; "
        f"ControllerGetVolume says {real}; {fitting} fits"
    )


def test_create_limit_only_is_honoured(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_req(rng=crange(0, 8 * MiB))).volume
    assert 0 < vol.capacity_bytes <= 8 * MiB
    assert vol.capacity_bytes % MiB == 0


@pytest.mark.parametrize(
    ("required", "limit"),
    [
        (5 * MiB + 1, 5 * MiB + 1),  # limit below the rounded-up size
        (0, 1000),  # limit under 1 MiB
        (1, MiB - 1),
        (8 * MiB, 4 * MiB),  # required > limit
    ],
    ids=["limit-below-rounded", "limit-1000B", "limit-1MiB-1", "required-gt-limit"],
)
def test_create_out_of_range(agent: Agent, required: int, limit: int) -> None:
    expect_code(agent.ctl.CreateVolume, create_req(rng=crange(required, limit)), SC.OUT_OF_RANGE)


def test_create_xfs_rounds_up_to_minimum(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_req(cap=mount_cap("xfs"), rng=crange(10 * MiB))).volume
    assert vol.capacity_bytes == XFS_MIN


def test_create_xfs_within_range_rounds_up_to_minimum(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(
        create_req(cap=mount_cap("xfs"), rng=crange(10 * MiB, 400 * MiB))
    ).volume
    assert vol.capacity_bytes == XFS_MIN


def test_create_xfs_below_minimum_out_of_range(agent: Agent) -> None:
    expect_code(
        agent.ctl.CreateVolume,
        create_req(cap=mount_cap("xfs"), rng=crange(10 * MiB, 100 * MiB)),
        SC.OUT_OF_RANGE,
    )


def test_create_negative_capacity_rejected(agent: Agent) -> None:
    expect_code(
        agent.ctl.CreateVolume, create_req(rng=crange(-1, 0)), SC.INVALID_ARGUMENT, SC.OUT_OF_RANGE
    )


# --------------------------------------------------------------------------
# CreateVolume: fs types, parameters, access modes, topology, names
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fs_type", ["", "ext4"])
def test_create_supported_fs_types(agent: Agent, fs_type: str) -> None:
    vol = agent.ctl.CreateVolume(create_req(cap=mount_cap(fs_type), rng=exact(4 * MiB))).volume
    assert vol.capacity_bytes == 4 * MiB


@pytest.mark.parametrize("fs_type", ["btrfs", "vfat", "ext3", "nfs", "EXT4 "])
def test_create_unsupported_fs_type(agent: Agent, fs_type: str) -> None:
    expect_code(
        agent.ctl.CreateVolume,
        create_req(cap=mount_cap(fs_type), rng=exact(4 * MiB)),
        SC.INVALID_ARGUMENT,
    )


def test_create_block_volume(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_req(cap=block_cap(), rng=exact(4 * MiB))).volume
    assert vol.capacity_bytes == 4 * MiB


def test_create_ignores_k8s_parameters(agent: Agent) -> None:
    params = {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default",
        "csi.storage.k8s.io/pv/name": "pvc-1234",
        "csi.storage.k8s.io/whatever-future-key": "x",
    }
    vol = agent.ctl.CreateVolume(create_req(rng=exact(4 * MiB), parameters=params)).volume
    assert vol.volume_id


@pytest.mark.parametrize("key", ["bogus", "fsType", "csi.storage.k8s.io", "k8s.io/pvc/name"])
def test_create_rejects_unknown_parameters(agent: Agent, key: str) -> None:
    err = expect_code(
        agent.ctl.CreateVolume,
        create_req(rng=exact(4 * MiB), parameters={key: "1"}),
        SC.INVALID_ARGUMENT,
    )
    assert err.details(), "error message must be human readable"


def test_create_names_every_unknown_parameter_and_not_the_provisioners(agent: Agent) -> None:
    """A StorageClass typo is refused with every unknown key named; the keys the provisioner adds are not."""
    params = {"pool": "lvm", "fsType": "xfs", "csi.storage.k8s.io/pvc/name": "data",
              "csi.storage.k8s.io/fstype": "ext4"}
    err = expect_code(agent.ctl.CreateVolume, create_req(rng=exact(4 * MiB), parameters=params), SC.INVALID_ARGUMENT)
    assert "'fsType'" in err.details() and "'pool'" in err.details()
    assert "csi.storage.k8s.io" not in err.details()


@pytest.mark.parametrize("mode", SINGLE_NODE_MODES, ids=lambda m: AM.Mode.Name(m))
def test_create_single_node_modes(agent: Agent, mode: int) -> None:
    vol = agent.ctl.CreateVolume(create_req(cap=mount_cap(mode=mode), rng=exact(4 * MiB))).volume
    assert vol.volume_id


@pytest.mark.parametrize("mode", MULTI_NODE_MODES, ids=lambda m: AM.Mode.Name(m))
def test_create_multi_node_modes_rejected(agent: Agent, mode: int) -> None:
    err = expect_code(
        agent.ctl.CreateVolume,
        create_req(cap=mount_cap(mode=mode), rng=exact(4 * MiB)),
        SC.INVALID_ARGUMENT,
    )
    msg = (err.details() or "").lower()
    assert "node-local" in msg or ("node" in msg and "local" in msg), err.details()


def test_create_multi_node_mode_among_several_caps_rejected(agent: Agent) -> None:
    req = create_req(rng=exact(4 * MiB))
    req.volume_capabilities.append(mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))
    expect_code(agent.ctl.CreateVolume, req, SC.INVALID_ARGUMENT)


def test_create_topology_other_node_exhausted(agent: Agent) -> None:
    req = create_req(rng=exact(4 * MiB))
    req.accessibility_requirements.requisite.append(topology("some-other-node"))
    req.accessibility_requirements.preferred.append(topology("some-other-node"))
    expect_code(agent.ctl.CreateVolume, req, SC.RESOURCE_EXHAUSTED)


def test_create_topology_including_this_node(agent: Agent) -> None:
    req = create_req(rng=exact(4 * MiB))
    req.accessibility_requirements.requisite.extend(
        [topology("some-other-node"), topology(agent.node_id)]
    )
    req.accessibility_requirements.preferred.extend(
        [topology("some-other-node"), topology(agent.node_id)]
    )
    vol = agent.ctl.CreateVolume(req).volume
    assert [dict(t.segments) for t in vol.accessible_topology] == [{TOPOLOGY_KEY: agent.node_id}]


def test_create_unicode_name(agent: Agent) -> None:
    name = f"pvc-ünïcødé-✓-{unique('u')}"
    first = agent.ctl.CreateVolume(create_req(name=name, rng=exact(4 * MiB))).volume
    again = agent.ctl.CreateVolume(create_req(name=name, rng=exact(4 * MiB))).volume
    assert first.volume_id == again.volume_id
    assert len(first.volume_id.encode()) <= 128


def test_create_name_exactly_128_bytes(agent: Agent) -> None:
    name = ("n" + unique("x")).ljust(128, "z")
    assert len(name.encode()) == 128
    vol = agent.ctl.CreateVolume(create_req(name=name, rng=exact(4 * MiB))).volume
    assert vol.volume_id
    assert len(vol.volume_id.encode()) <= 128


def test_volume_ids_are_unique(agent: Agent) -> None:
    ids = {agent.create_volume(4 * MiB).volume_id for _ in range(3)}
    assert len(ids) == 3


def test_parallel_create_same_name(agent: Agent) -> None:
    name = unique("race")
    before = {e.volume.volume_id for e in agent.list_all_volumes()}
    results: list[tuple[grpc.StatusCode, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        res = code_of(agent.ctl.CreateVolume, create_req(name=name, rng=exact(4 * MiB)))
        with lock:
            results.append(res)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 8
    # README: a call on a name that is busy answers ABORTED at once; the one that holds it creates.
    bad = [(c.name, r.details()) for c, r in results
           if not (c == SC.OK or (c == SC.ABORTED and "already in progress" in r.details()))]
    assert not bad, f"unexpected answers in a create race: {bad}"
    ok_ids = {r.volume.volume_id for c, r in results if c == SC.OK}
    assert len(ok_ids) == 1, f"one name must make exactly one volume, and someone must make it: {ok_ids}"
    final = agent.ctl.CreateVolume(create_req(name=name, rng=exact(4 * MiB))).volume
    assert ok_ids == {final.volume_id}
    after = {e.volume.volume_id for e in agent.list_all_volumes()}
    assert after - before == {final.volume_id}


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


def get_volume(agent: Agent, volume_id: str) -> Any:
    return agent.ctl.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=volume_id))


def test_publish_lifecycle_and_delete_precondition(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    got = get_volume(agent, vol.volume_id)
    assert got.volume.volume_id == vol.volume_id
    assert got.volume.capacity_bytes == 4 * MiB
    assert list(got.status.published_node_ids) == []
    assert got.status.volume_condition.abnormal is False

    agent.ctl.ControllerPublishVolume(cpub(agent, vol.volume_id))
    got = get_volume(agent, vol.volume_id)
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
    assert list(get_volume(agent, vol.volume_id).status.published_node_ids) == []
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
    code, res = code_of(a.ctl.CreateVolume, create_req(rng=exact(32 * MiB)))
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
    assert get_volume(agent, vol.volume_id).volume.capacity_bytes == 8 * MiB


def test_expand_rounds_up(agent: Agent) -> None:
    vol = agent.create_volume(4 * MiB)
    resp = agent.ctl.ControllerExpandVolume(expand_req(vol.volume_id, 6 * MiB + 1))
    assert resp.capacity_bytes == round_up(7 * MiB, agent.allocation_unit())
    assert get_volume(agent, vol.volume_id).volume.capacity_bytes == resp.capacity_bytes


def test_expand_smaller_is_noop(agent: Agent) -> None:
    vol = agent.create_volume(8 * MiB)
    resp = agent.ctl.ControllerExpandVolume(expand_req(vol.volume_id, 2 * MiB))
    assert resp.capacity_bytes == 8 * MiB
    assert get_volume(agent, vol.volume_id).volume.capacity_bytes == 8 * MiB


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


def test_get_capacity_multi_node(agent: Agent) -> None:
    code, resp = code_of(
        agent.ctl.GetCapacity,
        csi.GetCapacityRequest(volume_capabilities=[mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)]),
    )
    # A capability the pool cannot serve has no capacity: OK with 0 (the CO asks per capability).
    assert code == SC.OK, (code, resp.details())
    assert resp.available_capacity == 0


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
    results: list[tuple[grpc.StatusCode, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        res = code_of(a.ctl.CreateVolume, create_req(rng=exact(16 * MiB)))
        with lock:
            results.append(res)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
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
    assert get_volume(a, vol.volume_id).volume.capacity_bytes == 16 * MiB
    assert a.ctl.GetCapacity(csi.GetCapacityRequest()).available_capacity == 16 * MiB


def test_parallel_expands_respect_capacity_limit(agent_factory: Any) -> None:
    limit = 64 * MiB
    a = agent_factory(capacity_limit=limit)
    vols = [a.create_volume(8 * MiB) for _ in range(4)]  # 32 MiB used, 32 MiB left
    results: list[grpc.StatusCode] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(vols))

    def worker(volume_id: str) -> None:
        barrier.wait()
        code, _ = code_of(a.ctl.ControllerExpandVolume, expand_req(volume_id, 24 * MiB))
        with lock:
            results.append(code)

    threads = [threading.Thread(target=worker, args=(v.volume_id,)) for v in vols]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Four different volumes never collide, so no ABORTED. The file pool: 32 MiB left fits exactly two
    # of the +16 MiB growths. lvm-loop allocates contiguously: of four LVs made one after the other, only
    # the last has free extents after it, and it takes the remaining 16 MiB of the VG's share.
    grown = 2 if a.kind == FILE_KIND else 1
    assert sorted(c.name for c in results) == ["OK"] * grown + ["RESOURCE_EXHAUSTED"] * (4 - grown), results
    allocated = sum(get_volume(a, v.volume_id).volume.capacity_bytes for v in vols)
    assert allocated == 32 * MiB + grown * 16 * MiB <= limit, f"{allocated // MiB} MiB allocated"
