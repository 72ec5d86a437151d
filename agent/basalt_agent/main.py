"""``basalt-agent``: wire the configuration, the pool and the CSI services together and serve."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import grpc

from basalt_core import iscsiadm, runner, volumes
from basalt_core.errors import InvalidRequest, Precondition, StorageError
from basalt_core.exports import ExportSettings
from basalt_core.facts import volume_id_of_target
from basalt_core.iscsi_target import TargetBackend
from basalt_core.pool import Pool
from basalt_core.pool_factory import open_pool
from basalt_core.target_backends import open_target_backend

from . import DRIVER_NAME, __version__, config, initiator, logs, recovery, server, terminal
from .controller import ControllerService
from .identity import Check, IdentityService, iscsid_check, target_service_check
from .locks import ObjectLocks
from .logs import RpcLogInterceptor
from .node import NodeService
from .nodestate import NodeState
from .proto import csi_pb2, csi_pb2_grpc, pluginregistration_pb2_grpc
from .publishing import IscsiPublishing, LocalPublishing, Publishing
from .registration import RegistrationService

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("basalt.agent")
SHUTDOWN_GRACE = 30.0
PROBE_TIMEOUT = 10.0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = config.parser().parse_args(argv)
    try:
        settings = config.from_args(args)
    except StorageError as error:
        print(f"basalt-agent: {error}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"basalt-agent: settings valid: endpoint {settings.endpoint}, node {settings.node_id}, "
              f"pool {settings.pool_spec}, services {','.join(settings.services)}")
        return 0
    if args.probe:
        return probe(settings.endpoint)
    logs.configure(settings.log_level)
    terminal.install(sys.stderr)  # run by hand: progress bars for long copies and formats
    try:
        return serve(settings)
    except (StorageError, server.SocketInUse) as error:
        log.error("cannot start: %s", error)
        return 1


def probe(endpoint: str) -> int:
    """CSI Probe of the agent serving *endpoint*: 0 when it answers ready (an unset ``ready`` means ready)."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            answer = csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=PROBE_TIMEOUT)
        except grpc.RpcError as error:
            print(f"basalt-agent: {endpoint} does not answer Probe: {error.code().name} {error.details()}",
                  file=sys.stderr)
            return 1
    ready = not answer.HasField("ready") or answer.ready.value
    print(f"basalt-agent: {endpoint} {'ready' if ready else 'not ready'}")
    return 0 if ready else 1


def publishing(settings: config.Config, pool: Pool) -> Publishing:
    """Local pools publish in place; a storage host exports over iSCSI."""
    if not settings.iscsi_backend:
        return LocalPublishing(pool, settings.node_id)
    if not settings.iscsi_portals:
        raise InvalidRequest("--iscsi-backend needs at least one --iscsi-portal for nodes to log in to")
    backend = open_target_backend(settings.iscsi_backend, base_iqn=settings.iscsi_base_iqn,
                                  portals=settings.iscsi_portals, state_dir=settings.state_dir,
                                  tgt_control_port=settings.tgt_control_port or None, tgt_conf=settings.tgt_conf)
    export_settings = ExportSettings(settings.iscsi_base_iqn, tuple(settings.iscsi_portals))
    return IscsiPublishing(pool, settings.node_id, backend, export_settings, settings.iscsi_initiators,
                           settings.iscsi_require_chap, settings.iscsi_initiator_base)


def _reconcile(exporting: IscsiPublishing, locks: ObjectLocks, metrics: Optional[Metrics]) -> None:
    from . import reconcile  # a storage host's only: not loaded by agents that export nothing

    try:
        summary = reconcile.reconcile(exporting, locks)
        if metrics is not None:
            metrics.reconciled(summary.applied, summary.skipped, summary.failed)
    except Exception:  # e.g. the target service is down: keep serving, the exports stay as they are
        log.exception("iscsi reconciliation failed")


def _clean_up(pool: Pool, grace: float, locks: ObjectLocks, metrics: Optional[Metrics], which: str) -> None:
    """Finish interrupted deletes, remove abandoned creations (claiming each object as an RPC would)."""
    try:
        repaired = volumes.clean_up(pool, grace, claim=locks.try_hold)
        if metrics is not None:
            metrics.repaired(pool, len(repaired))
    except Exception:  # keep serving; the next round retries
        log.exception("%s clean-up failed", which)
        return
    log.info("%s clean-up finished", which)


def _orphan_count(pool: Pool, exporting: Optional[IscsiPublishing], state: Optional[NodeState], base_iqn: str
                  ) -> Callable[[], Dict[str, int]]:
    """Orphans by kind: the pool's (images, loop devices), a storage host's exports of no volume, and a node's
    sessions to Basalt's targets that no record names."""
    def count() -> Dict[str, int]:
        found = {"image": 0, "loop_device": 0}
        for orphan in pool.orphans():
            kind = orphan.kind.replace(" ", "_")
            found[kind] = found.get(kind, 0) + 1
        if exporting is not None:
            known = {volume.id for volume in pool.all_volumes()}
            base = exporting.settings.base_iqn + ":"
            found["export"] = sum(1 for export in exporting.backend.exports() if export.target_iqn.startswith(base)
                                  and volume_id_of_target(export.target_iqn) not in (None, *known))
        if state is not None:
            found["session"] = len(state.stray_sessions(base_iqn))
        return found
    return count


def _export_count(backend: TargetBackend) -> Callable[[], int]:
    return lambda: len(backend.exports())


def _session_count(state: NodeState) -> Callable[[], int]:
    """Live iSCSI sessions to the targets this node's records name."""
    def count() -> int:
        wanted = state.iscsi_targets()
        return sum(1 for session in iscsiadm.sessions() if session.target_iqn in wanted) if wanted else 0
    return count


def serve(settings: config.Config) -> int:
    os.makedirs(settings.state_dir, mode=0o700, exist_ok=True)
    pool = open_pool(settings.pool_spec, config.given_pool_settings(settings), labels=config.pool_setting_labels())
    pool.freeze_limit = settings.freeze_limit
    metrics: Optional[Metrics] = None
    if settings.metrics_address:  # else nothing reads them: prometheus-client is not even loaded
        from .metrics import Metrics

        metrics = Metrics(settings.node_id)
    observers = [RpcLogInterceptor(), *([metrics.interceptor()] if metrics is not None else [])]
    locks = ObjectLocks()
    state = NodeState(os.path.join(settings.state_dir, "node")) if "node" in settings.services else None
    repaired = recovery.recover(pool, state if "controller" in settings.services else None,
                                bool(settings.iscsi_backend))
    if metrics is not None:
        metrics.repaired(pool, len(repaired))

    grpc_server = server.build(settings.workers, settings.max_concurrent_rpcs,
                               observers)
    dependencies: List[Check] = []
    command_checks: List[Check] = []
    exporting: Optional[IscsiPublishing] = None
    if "controller" in settings.services:
        published = publishing(settings, pool)
        exporting = published if isinstance(published, IscsiPublishing) else None
        if exporting is not None:
            command_checks.append(target_service_check(exporting.backend))
        controller = ControllerService(pool, published, locks, settings.default_volume_size)
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, grpc_server)
    if state is not None:
        dependencies.append(iscsid_check(state))
        own_name = initiator.for_node(settings)
        if own_name is not None:
            own_name.ensure()
        node = NodeService(pool, settings.node_id, locks, state,
                           os.path.join(settings.state_dir, "ephemeral"), settings.default_volume_size, own_name)
        csi_pb2_grpc.add_NodeServicer_to_server(node, grpc_server)
    csi_pb2_grpc.add_IdentityServicer_to_server(
        IdentityService(pool, settings.services, dependencies, command_checks), grpc_server)
    metrics_server = None
    if metrics is not None:
        from .metrics import probe_health

        metrics.watch(pool, exports=_export_count(exporting.backend) if exporting else None,
                      sessions=_session_count(state) if state else None,
                      orphans=_orphan_count(pool, exporting, state, settings.iscsi_base_iqn))
        try:
            metrics_server = metrics.serve(config.metrics_address(settings.metrics_address),
                                           probe_health(settings.socket_path))
        except OSError as error:
            raise Precondition(f"--metrics-address {settings.metrics_address}: {error.strerror}") from error

    stop = threading.Event()
    refused = threading.Event()
    sockets = [server.bind(grpc_server, settings.socket_path)]
    # Registration on its own server and socket: kubelet's registry socket serves nothing else, and
    # the CSI socket does not answer Registration.
    servers = [grpc_server]
    if settings.registration_socket:
        registration_server = server.build(2, 4, observers)
        registration = RegistrationService(settings.kubelet_registration_path or settings.socket_path, refused)
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(registration, registration_server)
        sockets.append(server.bind(registration_server, settings.registration_socket))
        servers.append(registration_server)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Logged before the servers start: whoever sees an answer (Probe) finds the line already written.
    log.info("serving", extra={"fields": {
        "driver": DRIVER_NAME, "version": __version__, "endpoint": settings.endpoint, "node_id": settings.node_id,
        "pool": settings.pool_spec, "services": settings.services, "metrics": settings.metrics_address or None}})
    for started in servers:
        started.start()
    # In the background: the socket serves meanwhile, under the same volume locks.
    threading.Thread(target=_clean_up, args=(pool, settings.cleanup_grace, locks, metrics, "start-up"),
                     name="cleanup", daemon=True).start()
    if exporting is not None:
        threading.Thread(target=_reconcile, args=(exporting, locks, metrics), name="reconcile",
                         daemon=True).start()

    every = max(settings.cleanup_grace / 2, 1.0)
    next_cleanup = time.monotonic() + every
    while not stop.wait(1.0) and not refused.is_set():
        if time.monotonic() >= next_cleanup:
            next_cleanup = time.monotonic() + every
            _clean_up(pool, settings.cleanup_grace, locks, metrics, "periodic")

    log.info("stopping: finishing in-flight calls")
    for stopped in [running.stop(SHUTDOWN_GRACE) for running in servers]:  # both drain at once
        stopped.wait()
    runner.settle(SHUTDOWN_GRACE)  # the tools answered for before their exit (LVM's teardown after a commit)
    if metrics_server is not None:
        metrics_server.shutdown()
        metrics_server.server_close()
    server.remove_sockets(sockets)
    log.info("stopped")
    return 1 if refused.is_set() else 0
