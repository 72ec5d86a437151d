"""Controller service, CreateVolume: sizes and their rounding, fs types, parameters, access modes, topology, names."""

from __future__ import annotations

import pytest
from basalt_csi_testlib import (
    AM,
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
    codes_at_once,
    crange,
    create_volume_request,
    exact,
    expect_code,
    mount_cap,
    round_up,
    topology,
    unique,
)

# --------------------------------------------------------------------------
# CreateVolume: sizes
# --------------------------------------------------------------------------


def test_create_default_size_and_topology(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request()).volume
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
    req = create_volume_request(rng=crange(required, limit))
    vol = agent.ctl.CreateVolume(req).volume
    assert vol.capacity_bytes == expected
    # what CreateVolume answered is what the volume is, and a retry is the same volume
    assert agent.get_volume(vol.volume_id).volume.capacity_bytes == vol.capacity_bytes
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
    code, res = code_of(agent.ctl.CreateVolume, create_volume_request(rng=crange(required, limit)))
    if fitting > limit:
        assert code == SC.OUT_OF_RANGE, f"[{required}, {limit}] cannot fit {fitting}: {code.name} {res.details()}"
        assert str(limit) in res.details(), res.details()
        return
    assert code == SC.OK, f"[{required}, {limit}] fits {fitting}: {code.name} {res.details()}"
    real = agent.get_volume(res.volume.volume_id).volume.capacity_bytes
    assert res.volume.capacity_bytes == real == fitting, (
        f"CreateVolume [{required}, {limit}] answered {res.volume.capacity_bytes} bytes; "
        f"ControllerGetVolume says {real}; {fitting} fits"
    )


def test_create_limit_only_is_honoured(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request(rng=crange(0, 8 * MiB))).volume
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
    expect_code(agent.ctl.CreateVolume, create_volume_request(rng=crange(required, limit)), SC.OUT_OF_RANGE)


def test_create_xfs_rounds_up_to_minimum(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request(cap=mount_cap("xfs"), rng=crange(10 * MiB))).volume
    assert vol.capacity_bytes == XFS_MIN


def test_create_xfs_within_range_rounds_up_to_minimum(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(
        create_volume_request(cap=mount_cap("xfs"), rng=crange(10 * MiB, 400 * MiB))
    ).volume
    assert vol.capacity_bytes == XFS_MIN


def test_create_xfs_below_minimum_out_of_range(agent: Agent) -> None:
    expect_code(
        agent.ctl.CreateVolume,
        create_volume_request(cap=mount_cap("xfs"), rng=crange(10 * MiB, 100 * MiB)),
        SC.OUT_OF_RANGE,
    )


def test_create_negative_capacity_rejected(agent: Agent) -> None:
    expect_code(
        agent.ctl.CreateVolume, create_volume_request(rng=crange(-1, 0)), SC.INVALID_ARGUMENT, SC.OUT_OF_RANGE
    )


# --------------------------------------------------------------------------
# CreateVolume: fs types, parameters, access modes, topology, names
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fs_type", ["", "ext4"])
def test_create_supported_fs_types(agent: Agent, fs_type: str) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request(cap=mount_cap(fs_type), rng=exact(4 * MiB))).volume
    assert vol.capacity_bytes == 4 * MiB


@pytest.mark.parametrize("fs_type", ["btrfs", "vfat", "ext3", "nfs", "EXT4 "])
def test_create_unsupported_fs_type(agent: Agent, fs_type: str) -> None:
    expect_code(
        agent.ctl.CreateVolume,
        create_volume_request(cap=mount_cap(fs_type), rng=exact(4 * MiB)),
        SC.INVALID_ARGUMENT,
    )


def test_create_block_volume(agent: Agent) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request(cap=block_cap(), rng=exact(4 * MiB))).volume
    assert vol.capacity_bytes == 4 * MiB


def test_create_ignores_k8s_parameters(agent: Agent) -> None:
    params = {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default",
        "csi.storage.k8s.io/pv/name": "pvc-1234",
        "csi.storage.k8s.io/whatever-future-key": "x",
    }
    vol = agent.ctl.CreateVolume(create_volume_request(rng=exact(4 * MiB), parameters=params)).volume
    assert vol.volume_id


@pytest.mark.parametrize("key", ["bogus", "fsType", "csi.storage.k8s.io", "k8s.io/pvc/name"])
def test_create_rejects_unknown_parameters(agent: Agent, key: str) -> None:
    err = expect_code(
        agent.ctl.CreateVolume,
        create_volume_request(rng=exact(4 * MiB), parameters={key: "1"}),
        SC.INVALID_ARGUMENT,
    )
    assert err.details(), "error message must be human readable"


def test_create_names_every_unknown_parameter_and_not_the_provisioners(agent: Agent) -> None:
    """A StorageClass typo is refused with every unknown key named; the keys the provisioner adds are not."""
    params = {"pool": "lvm", "fsType": "xfs", "csi.storage.k8s.io/pvc/name": "data",
              "csi.storage.k8s.io/fstype": "ext4"}
    err = expect_code(agent.ctl.CreateVolume, create_volume_request(rng=exact(4 * MiB), parameters=params),
                      SC.INVALID_ARGUMENT)
    assert "'fsType'" in err.details() and "'pool'" in err.details()
    assert "csi.storage.k8s.io" not in err.details()


@pytest.mark.parametrize("mode", SINGLE_NODE_MODES, ids=lambda m: AM.Mode.Name(m))
def test_create_single_node_modes(agent: Agent, mode: int) -> None:
    vol = agent.ctl.CreateVolume(create_volume_request(cap=mount_cap(mode=mode), rng=exact(4 * MiB))).volume
    assert vol.volume_id


@pytest.mark.parametrize("mode", MULTI_NODE_MODES, ids=lambda m: AM.Mode.Name(m))
def test_create_multi_node_modes_rejected(agent: Agent, mode: int) -> None:
    err = expect_code(
        agent.ctl.CreateVolume,
        create_volume_request(cap=mount_cap(mode=mode), rng=exact(4 * MiB)),
        SC.INVALID_ARGUMENT,
    )
    msg = (err.details() or "").lower()
    assert "node-local" in msg or ("node" in msg and "local" in msg), err.details()


def test_create_multi_node_mode_among_several_caps_rejected(agent: Agent) -> None:
    req = create_volume_request(rng=exact(4 * MiB))
    req.volume_capabilities.append(mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))
    expect_code(agent.ctl.CreateVolume, req, SC.INVALID_ARGUMENT)


def test_create_topology_other_node_exhausted(agent: Agent) -> None:
    req = create_volume_request(rng=exact(4 * MiB))
    req.accessibility_requirements.requisite.append(topology("some-other-node"))
    req.accessibility_requirements.preferred.append(topology("some-other-node"))
    expect_code(agent.ctl.CreateVolume, req, SC.RESOURCE_EXHAUSTED)


def test_create_topology_including_this_node(agent: Agent) -> None:
    req = create_volume_request(rng=exact(4 * MiB))
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
    first = agent.ctl.CreateVolume(create_volume_request(name=name, rng=exact(4 * MiB))).volume
    again = agent.ctl.CreateVolume(create_volume_request(name=name, rng=exact(4 * MiB))).volume
    assert first.volume_id == again.volume_id
    assert len(first.volume_id.encode()) <= 128


def test_create_name_exactly_128_bytes(agent: Agent) -> None:
    name = ("n" + unique("x")).ljust(128, "z")
    assert len(name.encode()) == 128
    vol = agent.ctl.CreateVolume(create_volume_request(name=name, rng=exact(4 * MiB))).volume
    assert vol.volume_id
    assert len(vol.volume_id.encode()) <= 128


def test_volume_ids_are_unique(agent: Agent) -> None:
    ids = {agent.create_volume(4 * MiB).volume_id for _ in range(3)}
    assert len(ids) == 3


def test_parallel_create_same_name(agent: Agent) -> None:
    name = unique("race")
    before = {e.volume.volume_id for e in agent.list_all_volumes()}
    results = codes_at_once(agent.ctl.CreateVolume,
                            [create_volume_request(name=name, rng=exact(4 * MiB)) for _ in range(8)])
    # README: a call on a name that is busy answers ABORTED at once; the one that holds it creates.
    bad = [(c.name, r.details()) for c, r in results
           if not (c == SC.OK or (c == SC.ABORTED and "already in progress" in r.details()))]
    assert not bad, f"unexpected answers in a create race: {bad}"
    ok_ids = {r.volume.volume_id for c, r in results if c == SC.OK}
    assert len(ok_ids) == 1, f"one name must make exactly one volume, and someone must make it: {ok_ids}"
    final = agent.ctl.CreateVolume(create_volume_request(name=name, rng=exact(4 * MiB))).volume
    assert ok_ids == {final.volume_id}
    after = {e.volume.volume_id for e in agent.list_all_volumes()}
    assert after - before == {final.volume_id}
