"""What the slice publisher is told: whose slices, which node, which features.

Frozen and free of the kubernetes client, so the command line can build one
without paying for that import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaintPolicy:
    """Which health verdicts get which taint effect (see slices/taints.py apply_taint_policy).

    evict: reasons ("gpu-lost", "xid-79", "reset-required", ...) or recovery
    classes ("gpu-reset", "node-reboot", ...) whose Unhealthy devices get
    NoExecute, so the pods using them are evicted; "all" for every Unhealthy
    device. Everything else Unhealthy stays NoSchedule.
    informational_degraded: Degraded devices carry an effect-None taint saying
    what is degraded, where the API server knows that effect (1.35+).
    """

    evict: frozenset[str] = frozenset()
    informational_degraded: bool = True


@dataclass(frozen=True)
class PublisherConfig:
    """Timings are production values; tests shorten them."""

    driver_name: str
    node_name: str  # also the pool's name
    partitionable_devices: bool = False  # KEP-4815 counter sets + abstract MIG devices
    dynamic_mig: bool = False  # MIG-mode GPUs: every (profile, placement), created at prepare
    debounce: float = 0.2  # coalesce desired-state changes and watch events this long
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    request_timeout: float = 10.0
    watch_timeout: int = 300  # seconds a watch runs before the server ends it
    # Relist and compare this often (jittered by +-20%; 0: never): a server that lost
    # its state (an etcd restore) sends no DELETED events, and the watch cache would
    # keep believing in slices that are gone.
    resync_interval: float = 300.0
    taint_policy: TaintPolicy = TaintPolicy()
