"""CSI Identity service."""

from __future__ import annotations

import shutil
from typing import Sequence

import grpc

from basalt_core.pool import Pool

from . import DRIVER_NAME, __version__
from .errors import RpcFailure, rpc_method
from .proto import csi_pb2, csi_pb2_grpc

# Tools the node service runs; Probe fails early and clearly when one is missing.
NODE_TOOLS = ("losetup", "blkid", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "fsfreeze")


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, pool: Pool, services: Sequence[str]) -> None:
        self.pool = pool
        self.services = services

    @rpc_method
    def GetPluginInfo(self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
                      ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    @rpc_method
    def GetPluginCapabilities(self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
                              ) -> csi_pb2.GetPluginCapabilitiesResponse:
        Service = csi_pb2.PluginCapability.Service
        Expansion = csi_pb2.PluginCapability.VolumeExpansion
        caps = [
            csi_pb2.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi_pb2.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE)),
        ]
        if "controller" in self.services:
            caps.insert(0, csi_pb2.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)))
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc_method
    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        self.pool.probe()
        if "node" in self.services:
            missing = [tool for tool in NODE_TOOLS if shutil.which(tool) is None]
            if missing:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"node tools missing from PATH: {', '.join(missing)}")
        response = csi_pb2.ProbeResponse()
        response.ready.value = True
        return response
