"""CSI requests for the conformance suite: the protobuf messages, the names and sizes the tests use,
request builders and the gRPC call helpers (deadline on every call, expected status codes)."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO_ROOT / "agent"

try:  # the package is normally installed (pip install -e); fall back to the tree.
    from basalt_agent.proto import csi_pb2 as csi
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(AGENT_SRC))
    from basalt_agent.proto import csi_pb2 as csi

SC = grpc.StatusCode
DRIVER_NAME = "csi.basalt.dev"
TOPOLOGY_KEY = "topology.basalt.dev/node"
COPY_METHOD_KEY = "basalt.dev/copy-method"
EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"
MiB = 1024 * 1024
GiB = 1024 * MiB
XFS_MIN = 300 * MiB
SECRET_SENTINEL = "s3cr3t-SENTINEL"
SECRETS = {"password": SECRET_SENTINEL}
RPC_TIMEOUT = 60.0

AM = csi.VolumeCapability.AccessMode
SINGLE_NODE_MODES = [
    AM.SINGLE_NODE_WRITER,
    AM.SINGLE_NODE_READER_ONLY,
    AM.SINGLE_NODE_SINGLE_WRITER,
    AM.SINGLE_NODE_MULTI_WRITER,
]
MULTI_NODE_MODES = [
    AM.MULTI_NODE_READER_ONLY,
    AM.MULTI_NODE_SINGLE_WRITER,
    AM.MULTI_NODE_MULTI_WRITER,
]


# --------------------------------------------------------------------------
# request builders
# --------------------------------------------------------------------------


def mount_cap(
    fs_type: str = "ext4",
    mode: "csi.VolumeCapability.AccessMode.Mode" = AM.SINGLE_NODE_WRITER,
    flags: Iterable[str] = (),
) -> Any:
    """A MOUNT VolumeCapability."""
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: "csi.VolumeCapability.AccessMode.Mode" = AM.SINGLE_NODE_WRITER) -> Any:
    """A BLOCK VolumeCapability."""
    return csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(),
        access_mode=csi.VolumeCapability.AccessMode(mode=mode),
    )


def crange(required: int = 0, limit: int = 0) -> Any:
    return csi.CapacityRange(required_bytes=required, limit_bytes=limit)


def exact(size: int) -> Any:
    return crange(size, size)


def round_up(size: int, unit: int) -> int:
    return -(-size // unit) * unit


def unique(prefix: str = "vol") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_volume_request(cap: Any = None, rng: Any = None, **kw: Any) -> Any:
    """A CreateVolumeRequest: a fresh name unless given, one MOUNT capability unless given."""
    req = csi.CreateVolumeRequest(
        name=kw.pop("name", None) or unique(),
        volume_capabilities=[cap if cap is not None else mount_cap()],
        **kw,
    )
    if rng is not None:
        req.capacity_range.CopyFrom(rng)
    return req


def snapshot_source(snapshot_id: str) -> Any:
    return csi.VolumeContentSource(
        snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def volume_source(volume_id: str) -> Any:
    return csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=volume_id))


def topology(node: str) -> Any:
    return csi.Topology(segments={TOPOLOGY_KEY: node})


# --------------------------------------------------------------------------
# gRPC helpers
# --------------------------------------------------------------------------


class TimedStub:
    """Wraps a generated stub so that every call carries a deadline."""

    def __init__(self, stub: Any, timeout: float = RPC_TIMEOUT) -> None:
        self._stub = stub
        self._timeout = timeout

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self._timeout)
            return method(request, **kwargs)

        call.__name__ = name
        return call


def expect_code(method: Callable[..., Any], request: Any, *codes: grpc.StatusCode) -> grpc.RpcError:
    """Call ``method(request)`` and assert that it fails with one of ``codes``."""
    assert codes, "expect_code needs at least one code"
    try:
        response = method(request)
    except grpc.RpcError as err:
        code = err.code()
        assert code in codes, (
            f"{getattr(method, '__name__', method)}: expected {[c.name for c in codes]}, "
            f"got {code.name}: {err.details()!r}"
        )
        return err
    pytest.fail(
        f"{getattr(method, '__name__', method)}: expected {[c.name for c in codes]}, "
        f"got OK: {response}"
    )


def code_of(method: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, Any]:
    """Return (code, response-or-error) without asserting."""
    try:
        return SC.OK, method(request)
    except grpc.RpcError as err:
        return err.code(), err


def codes_at_once(method: Callable[..., Any], requests: list[Any]) -> list[tuple[grpc.StatusCode, Any]]:
    """Call ``method`` with every request at the same moment, one thread each (released together by a
    barrier); ``code_of`` of each call, in the order of ``requests``."""
    results: list[tuple[grpc.StatusCode, Any]] = [(SC.UNKNOWN, None)] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(index: int) -> None:
        barrier.wait()
        results[index] = code_of(method, requests[index])

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), f"{method.__name__}: a call did not return in 120 s"
    return results


def usage_by_unit(resp: Any) -> dict[int, Any]:
    """A NodeGetVolumeStats answer's usage entries by unit (BYTES, INODES)."""
    return {u.unit: u for u in resp.usage}
