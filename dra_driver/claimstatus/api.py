"""Read a ResourceClaim and server-side apply its status, through the official client. Blocking.

Failures leave as StatusApiError (the server answered with an error status)
or StatusUnreachable (no usable answer); callers never see the client's types.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..k8s import RESOURCE_GROUP, RESOURCE_VERSION, request_timeout

APPLY_PATCH = "application/apply-patch+yaml"
API_VERSION = f"{RESOURCE_GROUP}/{RESOURCE_VERSION}"


class StatusApiError(Exception):
    """The API server refused the call; status is its HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class StatusUnreachable(Exception):
    """No usable answer: connection refused, timeout, TLS, an unreadable body."""


class ClaimStatusApi(Protocol):
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The claim, or None when it does not exist."""
        ...

    def apply(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Apply `body` to the claim's status subresource; the stored claim."""
        ...


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.reason)


class KubeClaimStatusApi:
    """ClaimStatusApi over an ApiClient, applying as `field_manager` with force."""

    def __init__(self, api: client.ApiClient, field_manager: str, timeout: float = 10.0) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._manager = field_manager
        self._timeout = request_timeout(timeout)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self._objects.get_namespaced_custom_object(
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                namespace,
                "resourceclaims",
                name,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise StatusApiError(int(e.status or 0), _message(e)) from e
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise StatusUnreachable(f"{type(e).__name__}: {e}") from e
        return obj if isinstance(obj, dict) else None

    def apply(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            obj = self._objects.patch_namespaced_custom_object_status(
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                namespace,
                "resourceclaims",
                name,
                body,  # the client sends it as JSON, which is YAML, under the apply type
                field_manager=self._manager,
                force=True,  # our entries are ours alone; take them back from anyone
                _content_type=APPLY_PATCH,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            raise StatusApiError(int(e.status or 0), _message(e)) from e
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise StatusUnreachable(f"{type(e).__name__}: {e}") from e
        if not isinstance(obj, dict):
            raise StatusUnreachable("the apply answer is not a JSON object")
        return obj
