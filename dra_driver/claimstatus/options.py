"""What the claim status writer is told: whose entries, which node, how patient.

Frozen and free of the kubernetes client, so the command line builds one cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELD_MANAGER = 128  # the API server's limit on a fieldManager


@dataclass(frozen=True)
class ClaimStatusConfig:
    """Timings are production values; tests shorten them."""

    driver_name: str
    pool_name: str  # this node's pool: the node name
    debounce: float = 0.5  # coalesce prepares and health flaps this long
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    request_timeout: float = 10.0
    workers: int = 4  # status writes in flight at once

    @property
    def field_manager(self) -> str:
        """One manager per node: each node's plugin owns only the entries it applied."""
        return f"{self.driver_name}/{self.pool_name}"[:MAX_FIELD_MANAGER]
