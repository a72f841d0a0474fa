"""Timings and limits of the kubelet-facing servers (no gRPC import: the CLI reads these)."""

from __future__ import annotations

from dataclasses import dataclass

# Re-send the full health list this often: the kubelet judges staleness only
# when a report arrives, against last_updated_time.
DEFAULT_RESEND_INTERVAL = 10.0
# The kubelet's own default; always larger than three resend intervals.
DEFAULT_HEALTH_TIMEOUT = 30
# Health streams have a cap of their own, far below the server's MAX_CONCURRENT_RPCS
# (1024, which counts open streams too): the kubelet opens one per plugin connection,
# and idle streams past the cap must never take the capacity prepare calls need.
DEFAULT_MAX_HEALTH_STREAMS = 128


@dataclass(frozen=True)
class PluginOptions:
    """Defaults are production values; tests shorten them."""

    health_resend_interval: float = DEFAULT_RESEND_INTERVAL
    health_timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT
    socket_poll_interval: float = 0.25
    registration_backoff: float = 1.0
    registration_backoff_max: float = 120.0
    shutdown_grace: float = 5.0
    max_concurrent_claim_calls: int = 32
    max_health_streams: int = DEFAULT_MAX_HEALTH_STREAMS
