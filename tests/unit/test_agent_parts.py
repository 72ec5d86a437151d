"""The agent's own pieces: paging tokens, request validation, locks, log redaction, settings."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import List, Tuple

import grpc
import pytest

from basalt_agent import config, server
from basalt_agent import main as agent_main
from basalt_agent.errors import RpcFailure
from basalt_agent.locks import ObjectLocks
from basalt_agent.logs import JsonFormatter, redacted
from basalt_agent.paging import page
from basalt_agent.proto import csi_pb2
from basalt_agent.validation import SHARED, capability, required_path, required_string, volume_parameters

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
ITEMS: List[Tuple[float, str]] = [(1.0, "a"), (2.0, "b"), (2.0, "c"), (3.0, "d")]


def key(item: Tuple[float, str]) -> Tuple[float, str]:
    return item


def test_paging_walks_everything_once() -> None:
    seen, token = [], ""
    while True:
        items, token = page(ITEMS, key, 3, token)
        seen += items
        if not token:
            break
    assert seen == ITEMS


def test_paging_survives_a_deletion_between_pages() -> None:
    first, token = page(ITEMS, key, 2, "")
    rest, _ = page([i for i in ITEMS if i != (2.0, "c")], key, 0, token)
    assert first + rest == [(1.0, "a"), (2.0, "b"), (3.0, "d")]


@pytest.mark.parametrize("token", ["garbage", "1.0", "x/y", "/a"])
def test_foreign_token_is_aborted(token: str) -> None:
    with pytest.raises(RpcFailure) as caught:
        page(ITEMS, key, 1, token)
    assert caught.value.code == grpc.StatusCode.ABORTED


def test_negative_max_entries_is_invalid() -> None:
    with pytest.raises(RpcFailure) as caught:
        page(ITEMS, key, -1, "")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(RpcFailure) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def test_string_limits_count_bytes() -> None:
    assert required_string("é" * 64, "name") == "é" * 64  # 128 bytes
    assert code_of(lambda: required_string("é" * 65, "name")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: required_string("", "name")) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("path", ["relative/path", "/a/../etc", "/a/./b", ""])
def test_paths_must_be_plain_absolute(path: str) -> None:
    assert code_of(lambda: required_path(path, "target_path")) == grpc.StatusCode.INVALID_ARGUMENT


def test_a_path_component_may_take_the_kernels_255_bytes_not_one_more() -> None:
    assert required_path("/var/" + "x" * 255, "target_path") == "/var/" + "x" * 255  # more than a name's 128
    assert code_of(lambda: required_path("/var/" + "x" * 256, "target_path")) == grpc.StatusCode.INVALID_ARGUMENT


def test_parameters_keep_claim_identity_and_refuse_unknown_keys() -> None:
    kept = volume_parameters({"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/fstype": "xfs"})
    assert kept == {"csi.storage.k8s.io/pvc/name": "data"}
    assert code_of(lambda: volume_parameters({"thin": "yes"})) == grpc.StatusCode.INVALID_ARGUMENT


def cap(mode: "csi_pb2.VolumeCapability.AccessMode.Mode", fs: str = "ext4",
        flags: Tuple[str, ...] = ()) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def test_capabilities() -> None:
    parsed = capability(cap(Mode.SINGLE_NODE_SINGLE_WRITER, "", ("noatime,nodev",)))
    assert (parsed.block, parsed.fs_type, parsed.mount_flags) == (False, "ext4", ("noatime", "nodev"))
    with pytest.raises(RpcFailure, match="local to one node"):
        capability(cap(Mode.MULTI_NODE_MULTI_WRITER))
    for bad in (cap(Mode.SINGLE_NODE_WRITER, "ntfs"), cap(Mode.UNKNOWN), cap(Mode.SINGLE_NODE_WRITER, "ext4", ("-o",)),
                csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER))):
        assert code_of(lambda bad=bad: capability(bad)) == grpc.StatusCode.INVALID_ARGUMENT


def test_locks_answer_aborted_instead_of_waiting() -> None:
    locks = ObjectLocks()
    with locks.hold("vol-1"):
        assert code_of(lambda: locks.hold("vol-2", "vol-1").__enter__()) == grpc.StatusCode.ABORTED
        with locks.try_hold("vol-1") as granted:
            assert granted is False
    with locks.hold("vol-1", "vol-2"):  # released, including the partly taken vol-2
        pass


def test_secrets_and_mount_flags_are_redacted_at_any_depth() -> None:
    request = csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", secrets={"password": "SENTINEL"},
        volume_capability=cap(Mode.SINGLE_NODE_WRITER, "ext4", ("SENTINEL-FLAG",)),
    )
    shown = str(redacted(request))
    assert "vol-1" in shown and "SENTINEL" not in shown
    assert request.secrets["password"] == "SENTINEL"  # the original is untouched


def test_log_lines_are_json() -> None:
    record = logging.LogRecord("basalt.rpc", logging.INFO, __file__, 1, "rpc", None, None)
    record.fields = {"method": "/csi.v1.Node/NodeStageVolume", "code": "OK"}
    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "/csi.v1.Node/NodeStageVolume" and line["level"] == "info"


def test_settings_precedence(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('node_id = "from-file"\npool = "file:/srv/pool"\npool_capacity_limit = "10Gi"\n'
                    'services = "controller"\n')
    settings = config.load(["--config", str(file), "--node-id", "from-cli"],
                           environ={"CSI_ENDPOINT": "unix:///run/x.sock"})
    assert (settings.node_id, settings.pool, settings.endpoint) == ("from-cli", "file:/srv/pool", "unix:///run/x.sock")
    assert settings.pool_capacity_limit == 10 << 30 and settings.services == ["identity", "controller"]


def test_default_pool_lives_in_the_state_dir() -> None:
    settings = config.load(["--state-dir", "/srv/basalt"], environ={})
    assert settings.pool_spec == "file:/srv/basalt/pools/file"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--endpoint", "tcp://0.0.0.0:1"], "basalt-agent: endpoint 'tcp://0.0.0.0:1' must be unix:///absolute/path.sock"),
        (["--services", "storage"],
         "basalt-agent: error: argument --services: services must be 'all' or a list of identity, controller, node"),
    ],
    ids=["tcp-endpoint", "unknown-service"],
)
def test_bad_settings_exit(argv: List[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The agent refuses to start: exit status 2 (a usage error) and a message naming the setting."""
    status: object
    try:
        status = agent_main.main(argv)
    except SystemExit as exited:  # argparse's own refusals
        status = exited.code
    assert status == 2
    assert message in capsys.readouterr().err


def block(mode: "csi_pb2.VolumeCapability.AccessMode.Mode") -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def test_shared_volumes_allow_readers_everywhere_and_writers_only_on_raw_block() -> None:
    assert capability(cap(Mode.MULTI_NODE_READER_ONLY), access=SHARED).read_only_mode
    assert capability(block(Mode.MULTI_NODE_READER_ONLY), access=SHARED).block
    assert capability(block(Mode.MULTI_NODE_MULTI_WRITER), access=SHARED).block
    with pytest.raises(RpcFailure, match="raw block volumes only"):
        capability(cap(Mode.MULTI_NODE_MULTI_WRITER), access=SHARED)
    with pytest.raises(RpcFailure, match="MULTI_NODE_SINGLE_WRITER is not supported"):
        capability(block(Mode.MULTI_NODE_SINGLE_WRITER), access=SHARED)
    with pytest.raises(RpcFailure, match="local to one node"):
        capability(block(Mode.MULTI_NODE_READER_ONLY))


def test_a_socket_is_removed_only_while_it_is_the_same_file(tmp_path: Path) -> None:
    """The start-up and shutdown clean-up never remove a socket another process bound in its place."""
    path = str(tmp_path / "csi.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.bind(path)
    made = os.lstat(path)
    first.close()
    os.unlink(path)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        second.bind(path)
        # the first socket's identity no longer names the file at the path (keep the old file's inode
        # out of reuse: it was unlinked while a new file exists, so compare against the new one too)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (made.st_dev, made.st_ino):
            assert not server.remove_if_same(path, made.st_dev, made.st_ino)
            assert os.path.exists(path)
        assert server.remove_if_same(path, now.st_dev, now.st_ino)
        assert not os.path.exists(path)
    finally:
        second.close()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "csi.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # nobody listens: stale
    server.prepare_socket(path)
    assert not os.path.exists(path)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(path)
        live.listen(1)
        with pytest.raises(server.SocketInUse):
            server.prepare_socket(path)
        assert os.path.exists(path)
    finally:
        live.close()


def test_a_socket_path_at_the_length_limit_is_bound_and_removed(tmp_path: Path) -> None:
    """The private name bound first is never longer than the public one: a path gRPC can bind still works.

    gRPC refuses unix socket paths longer than 105 bytes (measured with grpcio 1.84), two less than
    sockaddr_un allows.
    """
    room = 105 - len(str(tmp_path)) - len("/csi.sock") - 1
    directory = tmp_path / ("d" * room)
    directory.mkdir()
    path = str(directory / "csi.sock")
    assert len(path) == 105
    grpc_server = server.build(1, 1, [])
    bound = server.bind(grpc_server, path)
    try:
        assert sorted(os.listdir(directory)) == ["csi.sock"]  # the private name is gone already
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        grpc_server.stop(None).wait()
        server.remove_sockets([bound])
    assert os.listdir(directory) == []
