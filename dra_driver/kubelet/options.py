"""Names, paths, timings and limits of the kubelet-facing servers.

No gRPC import here: the command line reads these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..health.monitor import DEFAULT_POLL_INTERVAL

DEFAULT_PLUGINS_DIR = Path("/var/lib/kubelet/plugins")
DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")

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
class PluginConfig:
    """Who the plugin is to the kubelet, and where its two sockets live."""

    driver_name: str
    node_name: str
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    registry_dir: Path = DEFAULT_REGISTRY_DIR
    health: bool = True  # serve the DRA health stream

    @property
    def plugin_dir(self) -> Path:
        """This driver's own directory under the kubelet plugins dir."""
        return self.plugins_dir / self.driver_name

    @property
    def dra_socket(self) -> Path:
        return self.plugin_dir / "dra.sock"

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver_name}-reg.sock"


@dataclass(frozen=True)
class PluginOptions:
    """Defaults are production values; tests shorten them."""

    health_resend_interval: float = DEFAULT_RESEND_INTERVAL
    health_timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT
    # How often the health monitor checks each device: the stream timeout the
    # kubelet is given must outlast a resend and a fresh check.
    health_check_interval: float = DEFAULT_POLL_INTERVAL
    socket_poll_interval: float = 0.25
    registration_backoff: float = 1.0
    registration_backoff_max: float = 120.0
    shutdown_grace: float = 5.0
    max_concurrent_claim_calls: int = 32
    max_health_streams: int = DEFAULT_MAX_HEALTH_STREAMS
