"""Claims held in memory: a ClaimSource for tests and benchmarks of the preparer."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..prepare.sources import ClaimNotFound


class MemoryClaimSource:
    """Claims held in memory, keyed by (namespace, name): tests and benchmarks."""

    def __init__(self, claims: Mapping[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], dict[str, Any]] = dict(claims or {})
        self.gets = 0

    def put(self, claim: dict[str, Any]) -> None:
        meta = claim["metadata"]
        with self._lock:
            self._claims[(meta["namespace"], meta["name"])] = claim

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            self._claims.pop((namespace, name), None)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            self.gets += 1
            claim = self._claims.get((namespace, name))
        if claim is None:
            raise ClaimNotFound(f"ResourceClaim {namespace}/{name} not found")
        return claim
