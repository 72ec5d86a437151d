"""Kubelet plugin registration, served directly (no node-driver-registrar needed).

Kubelet finds our socket in its plugins_registry directory, calls GetInfo
(within 1 s), then NotifyRegistrationStatus.
"""

from __future__ import annotations

import logging
import threading

import grpc

from . import DRIVER_NAME
from .proto import pluginregistration_pb2 as pb
from .proto import pluginregistration_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
CSI_PLUGIN = "CSIPlugin"
SUPPORTED_VERSIONS = ["1.0.0"]


class RegistrationService(pb_grpc.RegistrationServicer):
    def __init__(self, endpoint_path: str, failed: threading.Event) -> None:
        self.endpoint_path = endpoint_path
        self.failed = failed

    def GetInfo(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.PluginInfo:
        return pb.PluginInfo(type=CSI_PLUGIN, name=DRIVER_NAME, endpoint=self.endpoint_path,
                             supported_versions=SUPPORTED_VERSIONS)

    def NotifyRegistrationStatus(self, request: pb.RegistrationStatus, context: grpc.ServicerContext
                                 ) -> pb.RegistrationStatusResponse:
        if request.plugin_registered:
            log.info("kubelet registered the plugin")
        else:
            # Like node-driver-registrar: stop, so the pod restarts and registers again.
            log.error("kubelet refused the registration: %s", request.error)
            self.failed.set()
        return pb.RegistrationStatusResponse()
