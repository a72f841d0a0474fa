"""Prometheus metrics of `dra-driver run --metrics-address`: one registry, every series.

Only this module imports prometheus_client, and only a process that serves
metrics imports this module (the import alone costs about 0.15 s of startup).
Components never touch metric objects. The kubelet servicers report each
claim through their CallObserver hook (kubelet/dra.py), which Metrics
implements; everything else is read at scrape time, by one collector, from
state the driver keeps anyway: the health board, the monitor's and the
publisher's counters, the checkpoint, the inventory. No number is kept twice,
so none can drift.

The request series keep the names, labels, label values and (upper) buckets
of NVIDIA's driver (pkg/metrics/dra_requests.go), so dashboards built for it
work unchanged. The health series are ours: NVIDIA exports none.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .health.board import Health, HealthBoard
from .hostport import parse_host_port
from .inventory import DeviceType, Inventory
from .prepare.types import ErrorKind

if TYPE_CHECKING:
    from .health.monitor import MonitorStats
    from .prepare.dynamic import MigStats

log = logging.getLogger(__name__)

# Go's client has no `<name>_created` series; dashboards written for it expect none.
disable_created_metrics()  # type: ignore[no-untyped-call]

METRICS_PATH = "/metrics"
OPERATIONS = ("prepare", "unprepare")  # NVIDIA's label values (kubelet/dra.py uses the same)
# NVIDIA's buckets are ExponentialBuckets(0.05, 2, 9) = 0.05 ... 12.8 s. A prepare here
# takes milliseconds, so finer buckets come first; NVIDIA's are all kept, so their
# quantile queries still line up.
NVIDIA_BUCKETS = tuple(0.05 * 2**i for i in range(9))
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, *NVIDIA_BUCKETS)
HEALTH_STATES = {
    Health.UNKNOWN: "unknown",
    Health.HEALTHY: "healthy",
    Health.DEGRADED: "degraded",
    Health.UNHEALTHY: "unhealthy",
}
# Event types the monitor registers for; their series exist from the start, at 0.
WATCHED_EVENT_TYPES = ("xid", "dbe", "lost", "recovery_action")
# XIDs NVIDIA documents are three-digit numbers; anything else is one "other" series,
# so a misbehaving driver cannot create series without bound.
MAX_XID_LABEL = 999
# The causes an unprepare can have (it reads only the checkpoint and the CDI directory).
UNPREPARE_ERROR_KINDS = (
    ErrorKind.INVALID_CLAIM,
    ErrorKind.CDI_OR_CHECKPOINT,
    ErrorKind.BUSY,
    ErrorKind.INTERNAL,
)


class PublisherCounters(Protocol):
    """The part of slices.publisher.PublisherStats reported."""

    creates: int
    updates: int
    deletes: int
    conflicts: int
    rejected: int
    errors: int


class PublisherView(Protocol):
    """What is read of the SlicePublisher."""

    @property
    def stats(self) -> PublisherCounters: ...

    @property
    def converged(self) -> bool: ...


class MonitorView(Protocol):
    """What is read of the HealthMonitor."""

    def counters(self) -> MonitorStats: ...


class PreparerView(Protocol):
    """What is read of the ClaimPreparer."""

    def prepared_devices(self) -> Mapping[str, int]: ...


class MigView(Protocol):
    """What is read of the dynamic MIG layout (prepare/dynamic.py MigLayout)."""

    def stats(self) -> MigStats: ...


class ClaimStatusCounters(Protocol):
    """The part of claimstatus.writer.ClaimStatusStats reported."""

    applies: int
    removals: int
    errors: int
    rejected: int


class ClaimStatusView(Protocol):
    """What is read of the ClaimStatusWriter."""

    @property
    def stats(self) -> ClaimStatusCounters: ...


class Metrics:
    """The registry and every series. Implements kubelet.dra.CallObserver.

    Use a fresh CollectorRegistry per instance (the default): the names are
    fixed, so a second Metrics on one registry is refused as a duplicate.
    """

    def __init__(
        self,
        driver: str,
        node: str,
        registry: CollectorRegistry | None = None,
        *,
        process_collectors: bool = False,
    ) -> None:
        self.driver = driver
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        op_labels = ("driver", "operation")
        self._requests = Counter(
            "nvidia_dra_requests",
            "DRA prepare and unprepare requests, counted per claim; failures included "
            "(and also counted in node_*_errors_total).",
            op_labels,
            registry=r,
        )
        self._duration = Histogram(
            "nvidia_dra_request_duration_seconds",
            "Time until the kubelet's call had each claim's answer, per claim.",
            op_labels,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._inflight = Gauge(
            "nvidia_dra_requests_inflight",
            "Claims being prepared or unprepared now.",
            op_labels,
            registry=r,
        )
        self._prepare_errors = Counter(
            "nvidia_dra_node_prepare_errors",
            "Claims whose NodePrepareResources failed, by cause.",
            ("driver", "error_type"),
            registry=r,
        )
        self._unprepare_errors = Counter(
            "nvidia_dra_node_unprepare_errors",
            "Claims whose NodeUnprepareResources failed, by cause.",
            ("driver", "error_type"),
            registry=r,
        )
        # Every series exists from the first scrape, so rate() sees the first increment.
        for op in OPERATIONS:
            self._requests.labels(driver, op)
            self._duration.labels(driver, op)
            self._inflight.labels(driver, op)
        for kind in ErrorKind:
            self._prepare_errors.labels(driver, kind.value)
        for kind in UNPREPARE_ERROR_KINDS:
            self._unprepare_errors.labels(driver, kind.value)
        self.inventory: Inventory | None = None
        self.board: HealthBoard | None = None
        self.monitor: MonitorView | None = None
        self.publisher: PublisherView | None = None
        self.preparer: PreparerView | None = None
        self.migs: MigView | None = None
        self.claim_status: ClaimStatusView | None = None
        r.register(_StateCollector(self))
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def watch(
        self,
        *,
        inventory: Inventory | None = None,
        board: HealthBoard | None = None,
        monitor: MonitorView | None = None,
        publisher: PublisherView | None = None,
        preparer: PreparerView | None = None,
        migs: MigView | None = None,
        claim_status: ClaimStatusView | None = None,
    ) -> None:
        """Report this state from now on (components come up one by one during startup)."""
        if inventory is not None:
            self.inventory = inventory
        if board is not None:
            self.board = board
        if monitor is not None:
            self.monitor = monitor
        if publisher is not None:
            self.publisher = publisher
        if preparer is not None:
            self.preparer = preparer
        if migs is not None:
            self.migs = migs
        if claim_status is not None:
            self.claim_status = claim_status

    # -- kubelet.dra.CallObserver --------------------------------------------------------

    def claims_started(self, operation: str, count: int) -> None:
        self._inflight.labels(self.driver, operation).inc(count)

    def claims_finished(
        self, operation: str, seconds: float, outcomes: Sequence[ErrorKind | None]
    ) -> None:
        errors = self._prepare_errors if operation == "prepare" else self._unprepare_errors
        requests = self._requests.labels(self.driver, operation)
        duration = self._duration.labels(self.driver, operation)
        for kind in outcomes:
            requests.inc()
            duration.observe(seconds)
            if kind is not None:
                errors.labels(self.driver, kind.value).inc()
        self._inflight.labels(self.driver, operation).dec(len(outcomes))


class _StateCollector(Collector):
    """Builds the state series at scrape time (on the HTTP server's thread).

    A source that fails is left out of that scrape and logged once; the rest
    still answers, so one bug cannot blind every dashboard.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        self._logged: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        return ()  # the series depend on what is running; nothing to check at register time

    def collect(self) -> Iterator[Metric]:
        sections: tuple[tuple[str, Callable[[], list[Metric]]], ...] = (
            ("inventory", self._inventory),
            ("health board", self._health),
            ("health monitor", self._monitor),
            ("slice publisher", self._publisher),
            ("checkpoint", self._prepared),
            ("dynamic MIG", self._migs),
            ("claim status writer", self._claim_status),
        )
        for name, section in sections:
            try:
                families = section()
            except Exception:
                if name not in self._logged:
                    self._logged.add(name)
                    log.exception("metrics: reading the %s failed; its series are left out", name)
                continue
            yield from families

    def _inventory(self) -> list[Metric]:
        inv = self._m.inventory
        if inv is None:
            return []
        info = GaugeMetricFamily(
            "dra_driver_info",
            "The driver's version, its NVML backend and the node's NVIDIA driver; always 1.",
            labels=("version", "nvml_backend", "driver_version", "cuda_driver_version"),
        )
        info.add_metric((__version__, inv.backend, inv.driver_version, inv.cuda_driver_version), 1)
        devices = GaugeMetricFamily(
            "dra_driver_devices", "Devices this node publishes, by type.", labels=("type",)
        )
        counts = Tally(d.type.value for d in inv.devices)
        for t in DeviceType:
            devices.add_metric((t.value,), counts[t.value])
        return [info, devices]

    def _health(self) -> list[Metric]:
        board = self._m.board
        if board is None:
            return []
        base = (self._m.driver, self._m.node)
        state = GaugeMetricFamily(
            "dra_gpu_device_health",
            "Health verdict of each published device: 1 for its current state, 0 for the others.",
            labels=("driver", "pool", "device", "state"),
        )
        reason = GaugeMetricFamily(
            "dra_gpu_device_health_reason",
            "1 for the reason of each device that is not healthy (its worst condition, the "
            "taint value: xid-<n>, gpu-lost, ecc-dbe, pcie-x<n>-of-x<m>, thermal, ...).",
            labels=("driver", "pool", "device", "reason"),
        )
        for h in board.snapshot():
            for value, name in HEALTH_STATES.items():
                state.add_metric((*base, h.device, name), 1 if h.health is value else 0)
            if h.reason:
                reason.add_metric((*base, h.device, h.reason), 1)
        return [state, reason]

    def _monitor(self) -> list[Metric]:
        monitor, inv = self._m.monitor, self._m.inventory
        if monitor is None:
            return []
        stats = monitor.counters()
        events = CounterMetricFamily(
            "dra_gpu_nvml_events",
            "NVML events received, by GPU and type (xid, dbe: double-bit ECC, lost: GPU "
            "unavailable, recovery_action, sbe, other); ignored XIDs included.",
            labels=("gpu", "type"),
        )
        by_event: Tally[tuple[str, str]] = Tally()
        for gpu in inv.gpus if inv is not None else ():
            for kind in WATCHED_EVENT_TYPES:
                by_event[gpu.name, kind] += 0
        by_event.update(stats.events_by_gpu)
        for key, n in sorted(by_event.items()):
            events.add_metric(key, n)
        xids = CounterMetricFamily(
            "dra_gpu_xid_errors",
            f"XID events by GPU and XID number (numbers above {MAX_XID_LABEL} as 'other').",
            labels=("gpu", "xid"),
        )
        by_xid: Tally[tuple[str, str]] = Tally()
        for (gpu_name, xid), n in stats.xids_by_gpu.items():
            by_xid[gpu_name, str(xid) if 0 <= xid <= MAX_XID_LABEL else "other"] += n
        for key, n in sorted(by_xid.items()):
            xids.add_metric(key, n)
        return [
            events,
            xids,
            CounterMetricFamily(
                "dra_gpu_health_polls",
                "Health samples taken of all GPUs (degradation polling and lost-GPU attribution).",
                value=stats.polls,
            ),
            CounterMetricFamily(
                "dra_gpu_health_poll_errors",
                "Health samples that failed as a whole (device health left unchanged).",
                value=stats.poll_errors,
            ),
            CounterMetricFamily(
                "dra_gpu_nvml_event_wait_errors",
                "Failed waits for NVML events (retried with backoff).",
                value=stats.wait_errors,
            ),
            GaugeMetricFamily(
                "dra_gpu_health_unmonitored_gpus",
                "GPUs whose NVML events could not be registered (health by polling only).",
                value=stats.unmonitored_gpus,
            ),
            CounterMetricFamily(
                "dra_gpu_nvml_deadline_misses",
                "Times a GPU's NVML call overran --health-nvml-deadline (the GPU read Unknown).",
                value=stats.deadline_misses,
            ),
            CounterMetricFamily(
                "dra_gpu_nvml_late_answers",
                "Hung NVML calls that returned after all (the GPU answered again).",
                value=stats.late_answers,
            ),
        ]

    def _publisher(self) -> list[Metric]:
        publisher = self._m.publisher
        if publisher is None:
            return []
        stats = publisher.stats
        writes = CounterMetricFamily(
            "dra_resourceslice_writes",
            "Successful ResourceSlice writes, by verb.",
            labels=("verb",),
        )
        for verb, n in (
            ("create", stats.creates),
            ("update", stats.updates),
            ("delete", stats.deletes),
        ):
            writes.add_metric((verb,), n)
        return [
            writes,
            CounterMetricFamily(
                "dra_resourceslice_api_errors",
                "Failed ResourceSlice API calls (retried with backoff).",
                value=stats.errors,
            ),
            CounterMetricFamily(
                "dra_resourceslice_conflicts",
                "Writes that met a conflict (409 or a vanished slice) and were re-planned.",
                value=stats.conflicts,
            ),
            CounterMetricFamily(
                "dra_resourceslice_rejected",
                "Slices the API server refused as invalid (422); each one is a bug.",
                value=stats.rejected,
            ),
            GaugeMetricFamily(
                "dra_resourceslice_converged",
                "1 when the stored ResourceSlices equal the desired ones, else 0.",
                value=1 if publisher.converged else 0,
            ),
        ]

    def _claim_status(self) -> list[Metric]:
        writer = self._m.claim_status
        if writer is None:
            return []
        stats = writer.stats
        writes = CounterMetricFamily(
            "dra_claim_status_writes",
            "Successful server-side applies of ResourceClaim status.devices, by what they did.",
            labels=("op",),
        )
        writes.add_metric(("apply",), stats.applies)
        writes.add_metric(("remove",), stats.removals)
        return [
            writes,
            CounterMetricFamily(
                "dra_claim_status_api_errors",
                "Failed claim status writes (retried with backoff; never fail a prepare).",
                value=stats.errors,
            ),
            CounterMetricFamily(
                "dra_claim_status_rejected",
                "Claim status writes the API server refused as invalid (422); each one is a bug.",
                value=stats.rejected,
            ),
        ]

    def _prepared(self) -> list[Metric]:
        preparer = self._m.preparer
        if preparer is None:
            return []
        counts = dict(preparer.prepared_devices())
        family = GaugeMetricFamily(
            "nvidia_dra_prepared_devices",
            "Devices of prepared claims, by type, from the checkpoint.",
            labels=("node", "driver", "device_type"),
        )
        for t in sorted({*(t.value for t in DeviceType), *counts}):
            family.add_metric((self._m.node, self._m.driver, t), counts.get(t, 0))
        return [family]

    def _migs(self) -> list[Metric]:
        view = self._m.migs
        if view is None:
            return []
        from .prepare.dynamic import CREATE_BUCKETS

        stats = view.stats()
        labels = ("node", "driver")
        key = (self._m.node, self._m.driver)
        created = CounterMetricFamily(
            "nvidia_dra_mig_devices_created",
            "MIG devices this driver created at prepare (dynamic MIG).",
            labels=labels,
        )
        created.add_metric(key, stats.created)
        destroyed = CounterMetricFamily(
            "nvidia_dra_mig_devices_destroyed",
            "MIG devices this driver destroyed (unprepare, rollback, recovery).",
            labels=labels,
        )
        destroyed.add_metric(key, stats.destroyed)
        failures = CounterMetricFamily(
            "nvidia_dra_mig_create_failures",
            "MIG device creations that failed, by NVML error.",
            labels=(*labels, "error"),
        )
        for error, n in sorted(stats.create_failures.items()):
            failures.add_metric((*key, error), n)
        seconds = HistogramMetricFamily(
            "nvidia_dra_mig_create_duration_seconds",
            "Time to create a MIG device (GPU instance + compute instance).",
            labels=labels,
        )
        buckets = [(repr(b), c) for b, c in zip(CREATE_BUCKETS, stats.create_buckets, strict=True)]
        seconds.add_metric(key, [*buckets, ("+Inf", stats.created)], stats.create_seconds_sum)
        return [created, destroyed, failures, seconds]


# -- the HTTP endpoint -------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that stops talking does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, address: tuple[Any, ...], family: int, dualstack: bool) -> None:
        self.address_family = family
        self._dualstack = dualstack
        super().__init__(address, _QuietHandler)  # binds and listens: raises OSError

    def server_bind(self) -> None:
        if self._dualstack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # TCPServer's bind, without HTTPServer's reverse DNS lookup of the address.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


def _only_metrics_path(app: WSGIApplication) -> WSGIApplication:
    def serve(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in (METRICS_PATH, METRICS_PATH + "/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found; metrics are at {METRICS_PATH}\n".encode()]

    return serve


class MetricsServer:
    """Serves a registry at http://ADDRESS/metrics from daemon threads."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        """Bind exactly the address given ("" host: every interface, IPv6 too if the
        kernel has it); raises ValueError for a malformed address, OSError when
        the address cannot be bound (in use, not local, unresolvable)."""
        host, port = parse_host_port(address)
        if host == "":
            dualstack = socket.has_dualstack_ipv6()
            family = socket.AF_INET6 if dualstack else socket.AF_INET
            sockaddr: tuple[Any, ...] = ("::" if dualstack else "0.0.0.0", port)
        else:
            dualstack = False
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        self._server = _Server(sockaddr, family, dualstack)
        self._server.set_app(_only_metrics_path(make_wsgi_app(registry)))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_name, self._server.server_port
        shown = f"[{host}]" if self._server.address_family == socket.AF_INET6 else host
        return f"http://{shown}:{port}{METRICS_PATH}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the socket (blocks up to half a second)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
