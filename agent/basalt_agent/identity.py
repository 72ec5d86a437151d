"""CSI Identity service."""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import Callable, Dict, List, Sequence

import grpc

from basalt_core.errors import Precondition, StorageError
from basalt_core.iscsi_target import TargetBackend
from basalt_core.pool import Pool

from . import DRIVER_NAME, __version__
from .bounded import BoundedRead
from .errors import RpcFailure, rpc_method
from .nodestate import NodeState
from .proto import csi_pb2, csi_pb2_grpc

# Tools the node service runs; Probe fails early and clearly when one is missing.
NODE_TOOLS = ("losetup", "blkid", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "fsfreeze")
#: Probe's checks (the pool, the target service, iscsid) answer within this many seconds or Probe fails
PROBE_BOUND = 5.0
#: a check that asks another process (``vgs``, a request to tgtd) and passed is run again only after this many seconds,
#: so that Probe (every few seconds from livenessprobe) runs no command; a failed one runs at every Probe
COMMAND_CHECK_MAX_AGE = 5.0
#: where iscsid (or its systemd socket) listens for iscsiadm: an abstract unix socket
ISCSID_SOCKET = "\0ISCSIADM_ABSTRACT_NAMESPACE"

Check = Callable[[], None]


def target_service_check(backend: TargetBackend) -> Check:
    """A storage host depends on its target service (tgtd, LIO's configfs) answering."""
    def check() -> None:
        try:
            backend.ping()  # not exports(): that waits for a publish or a reconciliation holding the service
        except StorageError as error:
            raise Precondition(f"the iSCSI target service does not answer: {error}") from error
    return check


def iscsid_answers() -> None:
    """Precondition unless iscsid (or its systemd socket) accepts a connection."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(ISCSID_SOCKET)
    except OSError as error:
        raise Precondition(f"iscsid does not answer ({error.strerror})") from error
    finally:
        probe.close()


def iscsid_check(state: NodeState) -> Check:
    """A node holding iSCSI attachments depends on iscsid (logins, session recovery)."""
    def check() -> None:
        if any(record.iscsi_target for record in state.all()):
            try:
                iscsid_answers()
            except Precondition as error:
                raise Precondition(f"{error} and this node has iSCSI volumes attached: start iscsid") from error
    return check


class PassedRecently:
    """Run *check* unless it passed within *max_age* seconds (a failure is never remembered)."""

    def __init__(self, check: Check, max_age: float) -> None:
        self.check = check
        self.max_age = max_age
        self._passed_at = float("-inf")

    def __call__(self) -> None:
        if time.monotonic() - self._passed_at < self.max_age:
            return
        self.check()
        self._passed_at = time.monotonic()


class ToolsOnPath:
    """Which of *tools* are missing from PATH: a tool found once is re-checked where it was (one ``access``),
    PATH searched again only for one gone from there."""

    def __init__(self, tools: Sequence[str]) -> None:
        self.tools = tools
        self._found: Dict[str, str] = {}

    def missing(self) -> List[str]:
        missing = []
        for tool in self.tools:
            known = self._found.get(tool)
            if known is not None and os.access(known, os.X_OK) and not os.path.isdir(known):
                continue
            path = shutil.which(tool)
            if path is None:
                self._found.pop(tool, None)
                missing.append(tool)
            else:
                self._found[tool] = path
        return missing


class IdentityService(csi_pb2_grpc.IdentityServicer):
    """*dependencies*: checks run at every Probe; *command_checks*: checks that run a command, see
    COMMAND_CHECK_MAX_AGE (the pool's own check is one when the pool's probe runs commands)."""

    def __init__(self, pool: Pool, services: Sequence[str], dependencies: Sequence[Check] = (),
                 command_checks: Sequence[Check] = ()) -> None:
        self.pool = pool
        self.services = services
        commands = [pool.probe, *command_checks] if pool.probe_runs_commands else list(command_checks)
        self.dependencies = ([] if pool.probe_runs_commands else [pool.probe]) + list(dependencies) + [
            PassedRecently(check, COMMAND_CHECK_MAX_AGE) for check in commands]
        self._checks = BoundedRead(self._check_dependencies, PROBE_BOUND, name="probe")
        self._tools = ToolsOnPath(NODE_TOOLS)

    def _check_dependencies(self) -> None:
        for check in self.dependencies:
            check()

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
        try:
            self._checks()
        except TimeoutError as error:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the pool or a service it depends on did not answer: {error}") from None
        if "node" in self.services:
            missing = self._tools.missing()
            if missing:
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"node tools missing from PATH: {', '.join(missing)}")
        response = csi_pb2.ProbeResponse()
        response.ready.value = True
        return response
