"""Prometheus metrics and ``/healthz`` on ``--metrics-address`` (prometheus-client).

RPCs are counted by one server interceptor; pool, export and session gauges
are read when Prometheus scrapes (a custom collector), each source through a
:class:`BoundedRead`: cached for ``READ_MAX_AGE`` seconds and answered within
``READ_BOUND`` seconds, so a slow LVM or target command never stalls a scrape.
``/healthz`` answers as the livenessprobe sidecar does: 200 when Probe says
ready, 500 with the reason otherwise.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from basalt_core.pool import Pool, Usage

from .bounded import BoundedRead
from .observing import ObservingInterceptor
from .proto import csi_pb2, csi_pb2_grpc

log = logging.getLogger("basalt.metrics")

READ_MAX_AGE = 5.0
READ_BOUND = 10.0
#: /healthz waits this long for Probe (which bounds its own checks to PROBE_BOUND in identity.py)
HEALTH_TIMEOUT = 8.0
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def method_name(full_method: str) -> str:
    """``/csi.v1.Controller/CreateVolume`` -> ``CreateVolume`` (CSI method names are unique)."""
    return full_method.rpartition("/")[2] or full_method


class Metrics:
    """The agent's metrics, in a registry of its own."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpcs = Counter("basalt_rpc_requests", "CSI RPCs answered, by method and gRPC status code",
                            ["node", "method", "code"], registry=self.registry)
        self.rpc_seconds = Histogram("basalt_rpc_duration_seconds", "Time to answer a CSI RPC",
                                     ["node", "method", "code"], buckets=RPC_BUCKETS, registry=self.registry)
        self.cleanup_repairs = Counter(
            "basalt_cleanup_repairs", "Objects the start-up and periodic clean-up removed or finished "
            "(debris of interrupted writes, abandoned creations, interrupted deletions)",
            ["node", "pool"], registry=self.registry)
        self.reconcile_actions = Counter(
            "basalt_reconcile_actions", "iSCSI reconciliation actions by result (applied: an export or grant "
            "repaired; skipped: could not be restored; failed)", ["node", "result"], registry=self.registry)

    def observe_rpc(self, full_method: str, code: grpc.StatusCode, seconds: float) -> None:
        labels = (self.node_id, method_name(full_method), code.name)
        self.rpcs.labels(*labels).inc()
        self.rpc_seconds.labels(*labels).observe(seconds)

    def repaired(self, pool: Pool, count: int) -> None:
        self.cleanup_repairs.labels(self.node_id, pool.location).inc(count)

    def reconciled(self, applied: int, skipped: int, failed: int) -> None:
        for result, count in (("applied", applied), ("skipped", skipped), ("failed", failed)):
            self.reconcile_actions.labels(self.node_id, result).inc(count)

    def watch(self, pool: Pool, *, exports: Optional[Callable[[], int]] = None,
              sessions: Optional[Callable[[], int]] = None,
              orphans: Optional[Callable[[], Dict[str, int]]] = None) -> None:
        """Read the pool (and the exports of a storage host, the sessions of an iSCSI node, the orphans) on
        scrape."""
        self.registry.register(StateCollector(self.node_id, pool, exports, sessions, orphans))

    def interceptor(self) -> grpc.ServerInterceptor:
        return RpcMetricsInterceptor(self)

    def serve(self, address: Tuple[str, int], health: Callable[[], Tuple[bool, str]]) -> ThreadingHTTPServer:
        """Serve /metrics and /healthz on *address* in a daemon thread; the caller shuts it down."""
        handler = type("Handler", (_Handler,), {"registry": self.registry, "health": staticmethod(health)})
        server_class = _Ipv6Server if ":" in address[0] else ThreadingHTTPServer
        httpd = server_class(address, handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
        return httpd


class _Ipv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(MetricsHandler):
    health: Callable[[], Tuple[bool, str]]

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            super().do_GET()
        elif path == "/healthz":
            ready, reason = self.health()
            self._answer(200 if ready else 500, reason)
        else:
            self._answer(404, "not found: try /metrics or /healthz")

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics listener: " + format, *args)


def probe_health(socket_path: str, timeout: float = HEALTH_TIMEOUT) -> Callable[[], Tuple[bool, str]]:
    """The livenessprobe sidecar's check: Probe over the agent's own socket (so a wedged server shows).

    The channel is made at the first check: gRPC's client side (grpc._channel) is not loaded by an agent
    nobody has asked yet.
    """
    stubs: List[Any] = []
    made = threading.Lock()

    def health() -> Tuple[bool, str]:
        with made:
            if not stubs:
                stubs.append(csi_pb2_grpc.IdentityStub(grpc.insecure_channel(f"unix://{socket_path}")))
        identity = stubs[0]
        try:
            response = identity.Probe(csi_pb2.ProbeRequest(), timeout=timeout)
        except grpc.RpcError as error:
            return False, f"Probe failed: {error.code().name}: {error.details()}"
        if response.HasField("ready") and not response.ready.value:
            return False, "Probe: driver is not ready"
        return True, "ok"

    return health


class RpcMetricsInterceptor(ObservingInterceptor):
    """Counts and times every unary RPC by method and status code."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, method: str, request: Any, context: grpc.ServicerContext, code: grpc.StatusCode,
                seconds: float) -> None:
        self.metrics.observe_rpc(method, code, seconds)


class StateCollector(Collector):
    """Gauges read on scrape: the pool's space and objects, exports, sessions."""

    def __init__(self, node_id: str, pool: Pool, exports: Optional[Callable[[], int]],
                 sessions: Optional[Callable[[], int]], orphans: Optional[Callable[[], Dict[str, int]]]) -> None:
        self.node_id = node_id
        self.pool = pool
        self.usage = BoundedRead(pool.usage, READ_BOUND, READ_MAX_AGE, name="metrics-pool")
        self.orphans = BoundedRead(orphans, READ_BOUND, READ_MAX_AGE, name="metrics-orphans") if orphans else None
        self.counts: Dict[str, BoundedRead[int]] = {
            name: BoundedRead(read, READ_BOUND, READ_MAX_AGE, name=f"metrics-{name}")
            for name, read in (("exports", exports), ("sessions", sessions)) if read is not None}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read only on scrape, never at registration

    def collect(self) -> Iterator[Metric]:
        node, pool = self.node_id, self.pool.location
        up = GaugeMetricFamily("basalt_pool_up", "1 when the pool answered the last scrape in time",
                               labels=["node", "pool"])
        try:
            usage: Optional[Usage] = self.usage()
        except Exception as error:  # the pool is down or slow: say so, keep the other metrics
            log.warning("metrics: reading the pool failed: %s", error)
            usage = None
        up.add_metric([node, pool], 1.0 if usage is not None else 0.0)
        yield up
        if usage is not None:
            yield from _usage_metrics(node, pool, usage)
        for name, read in self.counts.items():
            try:
                value = read()
            except Exception as error:
                log.warning("metrics: reading the %s failed: %s", name, error)
                continue
            family = GaugeMetricFamily(f"basalt_iscsi_{name}", _COUNT_HELP[name], labels=["node"])
            family.add_metric([node], value)
            yield family
        if self.orphans is not None:
            try:
                found = self.orphans()
            except Exception as error:
                log.warning("metrics: looking for orphans failed: %s", error)
                return
            family = GaugeMetricFamily("basalt_orphans", "Objects under Basalt's names that no record owns "
                                       "(basalt doctor lists them, basalt gc removes them)",
                                       labels=["node", "pool", "kind"])
            for kind, count in sorted(found.items()):
                family.add_metric([node, pool, kind], count)
            yield family


_COUNT_HELP = {
    "exports": "iSCSI targets this storage host exports for Basalt volumes",
    "sessions": "iSCSI sessions this node holds to the targets its volume records name",
}


def _usage_metrics(node: str, pool: str, usage: Usage) -> Iterator[Metric]:
    gauges: List[Tuple[str, str, float]] = [
        ("basalt_pool_size_bytes", "Size of the pool's own storage (filesystem, VG, thin pool)",
         usage.storage.size),
        ("basalt_pool_allocated_bytes", "Bytes of the pool's storage in use (by anything)",
         usage.storage.allocated),
        ("basalt_pool_available_bytes", "Bytes a new volume may still take (thin: virtual, under the "
         "over-provisioning ratio; bounded by --pool-capacity-limit)", usage.available),
        ("basalt_pool_provisioned_bytes", "Bytes given to Basalt's volumes and snapshots", usage.provisioned),
        ("basalt_pool_volumes", "Volume records in the pool (any state)", usage.volumes),
        ("basalt_pool_snapshots", "Snapshot records in the pool (any state)", usage.snapshots),
    ]
    if usage.storage.data_percent is not None:
        gauges.append(("basalt_pool_thin_data_percent", "Thin pool data space used, percent",
                       usage.storage.data_percent))
    if usage.storage.metadata_percent is not None:
        gauges.append(("basalt_pool_thin_metadata_percent", "Thin pool metadata space used, percent",
                       usage.storage.metadata_percent))
    for name, help_text, value in gauges:
        family = GaugeMetricFamily(name, help_text, labels=["node", "pool"])
        family.add_metric([node, pool], float(value))
        yield family
