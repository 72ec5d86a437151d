#!/usr/bin/env python3
"""The floor of bench_agent.py: a bare gRPC server answering CSI Identity.Probe, and nothing else.

    python3 bench/bare_grpc_server.py SOCKET

The CSI Identity stub answers an empty ProbeResponse: no interceptor, no
validation, no log. It imports only grpc and the CSI stubs (not the bench's
own modules), so that its VmRSS is the memory floor of a CSI server in this
interpreter. It exits on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from basalt_agent.proto import csi_pb2, csi_pb2_grpc


class Identity(csi_pb2_grpc.IdentityServicer):
    def Probe(self, request: Any, context: Any) -> Any:
        return csi_pb2.ProbeResponse()


def main(socket_path: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    csi_pb2_grpc.add_IdentityServicer_to_server(Identity(), server)
    server.add_insecure_port("unix://" + socket_path)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    main(sys.argv[1])
