"""The gRPC server: sockets (mode 0600, stale ones replaced safely), services, shutdown."""

from __future__ import annotations

import logging
import os
import socket
import stat
from concurrent import futures
from typing import List, Sequence

import grpc

log = logging.getLogger(__name__)


class SocketInUse(Exception):
    pass


def prepare_socket(path: str) -> None:
    """Make way for a socket at *path*: remove a stale one, never a live one or a non-socket."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process is serving {path}")


def bind(server: grpc.Server, path: str) -> None:
    prepare_socket(path)
    previous = os.umask(0o177)  # the socket is born 0600: only root may talk to the driver
    try:
        server.add_insecure_port(f"unix://{path}")
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)


def build(workers: int, max_concurrent_rpcs: int, interceptors: Sequence[grpc.ServerInterceptor]) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def remove_sockets(paths: List[str]) -> None:
    for path in paths:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
