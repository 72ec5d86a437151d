"""One way to watch every unary RPC (method, request, outcome, time): the log and the metrics use it."""

from __future__ import annotations

import abc
import time
from typing import Any, Callable, Optional

import grpc


class ObservingInterceptor(grpc.ServerInterceptor, abc.ABC):
    @abc.abstractmethod
    def observe(self, method: str, request: Any, context: grpc.ServicerContext, code: grpc.StatusCode,
                seconds: float) -> None:
        """Called once per unary RPC after its handler returned or raised."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Optional[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Optional[grpc.RpcMethodHandler]:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        behaviour = handler.unary_unary

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.monotonic()
            code = grpc.StatusCode.OK
            try:
                return behaviour(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self.observe(method, request, context, code, time.monotonic() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
