"""What the slice publisher is told: whose slices, which node, which features.

Frozen and free of the kubernetes client, so the command line can build one
without paying for that import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublisherConfig:
    """Timings are production values; tests shorten them."""

    driver_name: str
    node_name: str  # also the pool's name
    partitionable_devices: bool = False  # KEP-4815 counter sets + abstract MIG devices
    debounce: float = 0.2  # coalesce desired-state changes and watch events this long
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    request_timeout: float = 10.0
    watch_timeout: int = 300  # seconds a watch runs before the server ends it
    # Relist and compare this often (jittered by +-20%; 0: never): a server that lost
    # its state (an etcd restore) sends no DELETED events, and the watch cache would
    # keep believing in slices that are gone.
    resync_interval: float = 300.0
