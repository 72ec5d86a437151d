"""The gRPC server: sockets (mode 0600, stale ones replaced safely), services, shutdown.

A socket path may be taken over by another process (node-driver-registrar pointed at the same
registry directory removes and re-creates ``<driver>-reg.sock``): the agent removes a socket only
while it is still the very file it bound or probed (same device and inode), never a newcomer's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import stat
from concurrent import futures
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import grpc

log = logging.getLogger(__name__)


class SocketInUse(Exception):
    pass


class BoundSocket(NamedTuple):
    """A socket file the agent made, known by its identity as well as its path."""

    path: str
    device: int
    inode: int


def _identity(path: str) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def remove_if_same(path: str, device: int, inode: int) -> bool:
    """Unlink *path* only while it is still the socket file (device, inode); True when removed."""
    now = _identity(path)
    if now is None or not stat.S_ISSOCK(now.st_mode) or (now.st_dev, now.st_ino) != (device, inode):
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def prepare_socket(path: str) -> None:
    """Make way for a socket at *path*: remove a stale one, never a live one or a non-socket."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    found = _identity(path)
    if found is None:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Only the file found dead: another process may have bound a new one there since.
        if remove_if_same(path, found.st_dev, found.st_ino):
            log.info("removed stale socket %s", path)
            return
        if _identity(path) is not None:
            raise SocketInUse(f"another process replaced {path} while the agent was starting") from None
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process is serving {path}")


def bind(server: grpc.Server, path: str) -> BoundSocket:
    """Serve *path*: bound under a private name, then linked into place (never over an existing file).

    gRPC unlinks the path it bound when it stops, whoever's file is there by then; binding under a
    hidden name of our own in the same directory (kubelet's plugin watcher skips names starting with a
    dot; never longer than the public name, so within the socket path limit) and removing that name at
    once leaves gRPC nothing to unlink but its own, and ``remove_sockets`` the public name.
    """
    prepare_socket(path)
    private = os.path.join(os.path.dirname(path), "." + secrets.token_hex(3))
    previous = os.umask(0o177)  # the socket is born 0600: only root may talk to the driver
    try:
        server.add_insecure_port(f"unix://{private}")
        os.chmod(private, 0o600)
        os.link(private, path)
    except FileExistsError:
        raise SocketInUse(f"another process made {path} while the agent was starting") from None
    finally:
        os.umask(previous)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(private)
    made = os.lstat(path)
    return BoundSocket(path, made.st_dev, made.st_ino)


class Undecodable:
    """What a request's bytes decode to when they are not the method's request message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # protobuf's DecodeError, or anything a malformed message raises
            return Undecodable(error)

    return decode


class RequestDecoding(grpc.ServerInterceptor):
    """Bytes that are not a valid request message: INVALID_ARGUMENT, as the CSI spec has it.

    Left to itself, the gRPC library answers INTERNAL ("Exception
    deserializing request!") before any of the agent's code runs.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Optional[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Optional[grpc.RpcMethodHandler]:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        behaviour = handler.unary_unary
        method = handler_call_details.method

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request is not a valid {method} request message "
                              f"({type(request.error).__name__})")
            return behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def build(workers: int, max_concurrent_rpcs: int, interceptors: Sequence[grpc.ServerInterceptor]) -> grpc.Server:
    """A server running *interceptors* around every call, and request decoding innermost."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        interceptors=[*interceptors, RequestDecoding()],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


def remove_sockets(sockets: List[BoundSocket]) -> None:
    """Remove the agent's own sockets; one replaced by another process since is left alone."""
    for bound in sockets:
        if not remove_if_same(*bound) and _identity(bound.path) is not None:
            log.warning("left %s in place: another process has replaced the agent's socket there", bound.path)
