"""Fault injection and request accounting for the API server double.

Both are plain thread-safe objects so a test can drive them in-process, and the
standalone server exposes the same operations under ``/_test/``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class FailureRule:
    """Fail the next ``remaining`` requests that match ``method`` and the ``path`` regex."""

    status: int
    remaining: int
    method: str | None = None
    path: str | None = None
    retry_after: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or re.search(self.path, path) is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "remaining": self.remaining,
            "method": self.method,
            "path": self.path,
            "retryAfter": self.retry_after,
        }


class Faults:
    """Latency and scripted failures applied to every API request (not to ``/_test/``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency = 0.0
        self._rules: list[FailureRule] = []

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self._latency = seconds

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
    ) -> FailureRule:
        """Queue a failure rule; 429 and 503 get a Retry-After of 1 s unless told otherwise."""
        if count < 1:
            raise ValueError("count must be >= 1")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error code, got {status}")
        if path is not None:
            re.compile(path)
        if retry_after is None and status in (429, 503):
            retry_after = 1.0
        rule = FailureRule(status, count, method.upper() if method else None, path, retry_after)
        with self._lock:
            self._rules.append(rule)
        return rule

    def take(self, method: str, path: str) -> FailureRule | None:
        """The first rule matching this request, with its budget decremented."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    def rules(self) -> list[FailureRule]:
        with self._lock:
            return [FailureRule(**asdict(r)) for r in self._rules]

    def clear(self) -> None:
        with self._lock:
            self._latency = 0.0
            self._rules.clear()


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the server answered it."""

    method: str
    path: str
    query: str
    status: int
    verb: str  # Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection
    resource: str  # plural, with "/status" for the subresource; "" for non-resource paths
    namespace: str
    name: str
    time: float

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """Thread-safe log of every API request, with counters for assertions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def count(
        self,
        *,
        method: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        status: int | None = None,
    ) -> int:
        """How many requests match every given filter (``resource`` "x" also counts "x/status")."""
        return sum(
            1
            for r in self.records()
            if (method is None or r.method == method.upper())
            and (verb is None or r.verb == verb)
            and (resource is None or r.resource.split("/")[0] == resource)
            and (status is None or r.status == status)
        )

    def writes(self, resource: str | None = None, *, successful_only: bool = False) -> int:
        """POST/PUT/PATCH/DELETE requests, optionally for one resource and only 2xx answers."""
        return sum(
            1
            for r in self.records()
            if r.is_write
            and (resource is None or r.resource.split("/")[0] == resource)
            and (not successful_only or 200 <= r.status < 300)
        )

    def writes_by_resource(self) -> dict[str, int]:
        return dict(Counter(r.resource for r in self.records() if r.is_write))

    def wait_for(self, predicate: Callable[[RequestLog], bool], timeout: float = 5.0) -> bool:
        """Poll until ``predicate(self)`` holds; for tests that wait on a background client."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.01)
        return bool(predicate(self))
