"""Where the preparer reads ResourceClaims from.

Kept behind a one-method protocol so the preparer's logic is tested with an
in-memory source (dra_driver.testing.claims), and the process can run without
an API server (every prepare then fails per claim with a clear message,
unprepare still works).
"""

from __future__ import annotations

from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..k8s import RESOURCE_GROUP, RESOURCE_VERSION, request_timeout


class ClaimSourceError(RuntimeError):
    """The claim could not be read (API server down, forbidden, timeout, ...)."""


class ClaimNotFound(ClaimSourceError):
    """The API server says the claim does not exist."""


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        """The ResourceClaim as the API's JSON dict. Blocks; raises ClaimSourceError."""
        ...


class ApiClaimSource:
    """GET resource.k8s.io/v1 ResourceClaims through the official client."""

    def __init__(self, api_client: client.ApiClient, timeout_s: float = 10.0) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout(timeout_s)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            obj = self._api.get_namespaced_custom_object(
                RESOURCE_GROUP,
                RESOURCE_VERSION,
                namespace,
                "resourceclaims",
                name,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status == 404:
                raise ClaimNotFound(f"ResourceClaim {namespace}/{name} not found") from e
            raise ClaimSourceError(
                f"get ResourceClaim {namespace}/{name}: HTTP {e.status} {e.reason}"
            ) from e
        except Exception as e:  # urllib3 timeouts, connection refused, TLS errors
            raise ClaimSourceError(
                f"get ResourceClaim {namespace}/{name}: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(obj, dict):
            raise ClaimSourceError(f"get ResourceClaim {namespace}/{name}: not a JSON object")
        return obj


class NoApiClaimSource:
    """The source when no API server is configured: every read fails, clearly."""

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        raise ClaimSourceError(
            f"no API server configured (pass --kubeconfig or run in a pod); "
            f"cannot read ResourceClaim {namespace}/{name}"
        )
