"""Probe tells the sidecars (livenessprobe, provisioner) when the pool cannot serve."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest
from basalt_csi_testlib import FILE_KIND, csi


def test_probe_fails_with_a_clear_message_while_the_pool_is_unusable(fresh_agent_factory: Any,
                                                                       pool_kind: str) -> None:
    if pool_kind != FILE_KIND:
        pytest.skip("breaks the pool by renaming the file pool's directory; the lvm pool's Probe reads its VG")
    agent = fresh_agent_factory()
    volumes_dir = os.path.join(agent.pool, "volumes")
    os.rename(volumes_dir, volumes_dir + ".away")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            agent.identity.Probe(csi.ProbeRequest())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert volumes_dir in (caught.value.details() or "")
    finally:
        os.rename(volumes_dir + ".away", volumes_dir)
    assert agent.identity.Probe(csi.ProbeRequest()).ready.value is True
