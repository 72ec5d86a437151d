"""Kubelet plugin registration served by the agent itself (no node-driver-registrar)."""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

import grpc

from basalt_agent.proto import csi_pb2 as csi
from basalt_agent.proto import csi_pb2_grpc as csi_grpc
from basalt_agent.proto import pluginregistration_pb2 as reg
from basalt_agent.proto import pluginregistration_pb2_grpc as reg_grpc

KUBELET_VIEW = "/var/lib/kubelet/plugins/csi.basalt.dev/csi.sock"


def start(factory: Any) -> Any:
    agent = factory(launch=False)
    agent.registration_socket = os.path.join(agent.root, "registry", "csi.basalt.dev-reg.sock")
    agent.extra_args += ["--registration-socket", agent.registration_socket,
                         "--kubelet-registration-path", KUBELET_VIEW]
    return agent.start()


def test_kubelet_sees_the_plugin_and_its_endpoint(fresh_agent_factory: Any) -> None:
    agent = start(fresh_agent_factory)
    assert stat.S_IMODE(os.stat(agent.registration_socket).st_mode) == 0o600
    with grpc.insecure_channel(f"unix://{agent.registration_socket}") as channel:
        info = reg_grpc.RegistrationStub(channel).GetInfo(reg.InfoRequest(), timeout=1)  # kubelet allows 1 s
    assert (info.type, info.name, info.endpoint, list(info.supported_versions)) == (
        "CSIPlugin", "csi.basalt.dev", KUBELET_VIEW, ["1.0.0"])


def test_accepted_registration_keeps_serving_and_sigterm_removes_both_sockets(fresh_agent_factory: Any) -> None:
    agent = start(fresh_agent_factory)
    with grpc.insecure_channel(f"unix://{agent.registration_socket}") as channel:
        reg_grpc.RegistrationStub(channel).NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True))
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    assert not os.path.exists(agent.registration_socket) and not os.path.exists(agent.socket)


def test_refused_registration_stops_the_agent(fresh_agent_factory: Any) -> None:
    agent = start(fresh_agent_factory)
    with grpc.insecure_channel(f"unix://{agent.registration_socket}") as channel:
        reg_grpc.RegistrationStub(channel).NotifyRegistrationStatus(
            reg.RegistrationStatus(plugin_registered=False, error="driver name already taken"))
    assert agent.proc.wait(timeout=30) == 1  # like node-driver-registrar: exit, so the pod restarts
    assert not os.path.exists(agent.registration_socket)
    assert "driver name already taken" in agent.log()


def _unimplemented(call: Any, request: Any) -> bool:
    try:
        call(request, timeout=5)
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNIMPLEMENTED
    return False


def test_each_socket_serves_only_its_own_services(fresh_agent_factory: Any) -> None:
    """kubelet's registry socket answers Registration only; the CSI socket does not answer Registration."""
    agent = start(fresh_agent_factory)
    with grpc.insecure_channel(f"unix://{agent.registration_socket}") as channel:
        assert _unimplemented(csi_grpc.IdentityStub(channel).GetPluginInfo, csi.GetPluginInfoRequest())
        assert _unimplemented(csi_grpc.NodeStub(channel).NodeGetInfo, csi.NodeGetInfoRequest())
    with grpc.insecure_channel(f"unix://{agent.socket}") as channel:
        assert _unimplemented(reg_grpc.RegistrationStub(channel).GetInfo, reg.InfoRequest())
        assert csi_grpc.IdentityStub(channel).GetPluginInfo(csi.GetPluginInfoRequest(), timeout=5).name


def test_sigterm_leaves_a_socket_another_process_put_in_its_place(fresh_agent_factory: Any) -> None:
    """What node-driver-registrar does when pointed at the same registry: it replaces the agent's socket.

    On SIGTERM the agent removes its own CSI socket but leaves the newcomer's registration socket alone.
    """
    agent = start(fresh_agent_factory)
    os.unlink(agent.registration_socket)
    newcomer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        newcomer.bind(agent.registration_socket)
        newcomer.listen(1)
        identity = os.lstat(agent.registration_socket)
        assert agent.stop() == 0
        now = os.lstat(agent.registration_socket)
        assert (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino)
        assert not os.path.exists(agent.socket)
        assert "another process has replaced" in agent.log()
    finally:
        newcomer.close()
        os.unlink(agent.registration_socket)
