"""From core failures to gRPC status codes, in one place.

Servicer methods raise ``RpcFailure`` (or let a core ``StorageError``
escape); ``rpc_method`` turns either into ``context.abort`` with the code the
CSI spec asks for.  Anything unexpected becomes INTERNAL with a short message;
the traceback goes to the log, never to the caller.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, Type, TypeVar

import grpc

from basalt_core import errors as core

log = logging.getLogger(__name__)

_CODES: Dict[Type[core.StorageError], grpc.StatusCode] = {
    core.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    core.NotFound: grpc.StatusCode.NOT_FOUND,
    core.Conflict: grpc.StatusCode.ALREADY_EXISTS,
    core.InUse: grpc.StatusCode.FAILED_PRECONDITION,
    core.Precondition: grpc.StatusCode.FAILED_PRECONDITION,
    core.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    core.NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    core.CommandFailed: grpc.StatusCode.INTERNAL,
}


class RpcFailure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


def status_of(error: core.StorageError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in _CODES:
            return _CODES[kind]
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(method: F) -> F:
    """Wrap a servicer method: map failures to status codes, never leak a traceback."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except RpcFailure as failure:
            context.abort(failure.code, failure.message)
        except core.StorageError as error:
            context.abort(status_of(error), str(error))
        except Exception as error:  # a bug: report it, keep the daemon serving
            log.exception("unexpected failure in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}: {type(error).__name__}")

    return wrapper  # type: ignore[return-value]
