"""ResourceSlice and Node REST calls through the official client's ApiClient. Blocking.

Requests go through ApiClient.param_serialize/call_api (the client's own
auth, TLS, proxy and timeout handling) with plain JSON bodies, not through
the generated model classes: the models would silently drop any field they
do not know, and the publisher must compare exactly what the server stored.

Every failure leaves this module as one of our own errors, ApiError (the
server answered with an error status) or ApiUnreachable (no usable answer),
so callers never touch the kubernetes client's exception types.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..k8s import RESOURCE_GROUP, RESOURCE_VERSION, parse_server_version

log = logging.getLogger(__name__)

SLICES_PATH = f"/apis/{RESOURCE_GROUP}/{RESOURCE_VERSION}/resourceslices"


class SliceApiError(Exception):
    """A ResourceSlice or Node call failed."""


class ApiError(SliceApiError):
    """The API server answered with an error status; message is its own explanation."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def of(cls, e: ApiException) -> ApiError:
        return cls(int(e.status or 0), _api_message(e), _retry_after(e))


class ApiUnreachable(SliceApiError):
    """The API server could not be reached, or its answer could not be read."""

    @classmethod
    def of(cls, e: Exception) -> ApiUnreachable:
        return cls(f"{type(e).__name__}: {e}")


# What the client and urllib3 raise when there is no usable answer.
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError, ValueError)


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (ValueError, AttributeError):
        return str(e.reason)


def _retry_after(e: ApiException) -> float | None:
    value = (e.headers or {}).get("Retry-After") if e.headers else None
    try:
        return float(value) if value else None
    except ValueError:
        return None


def slice_field_selector(driver: str, node_name: str) -> str:
    return f"spec.nodeName={node_name},spec.driver={driver}"


class WatchStream:
    """One open watch: yields decoded events; close() from any thread unblocks a read."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._lines = self._iter_lines()
        self._ended = False

    def _iter_lines(self) -> Iterator[bytes]:
        buf = b""
        for chunk in self._response.stream(amt=None, decode_content=False):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield line
        if buf.strip():
            yield buf

    def next_event(self) -> dict[str, Any] | None:
        """The next event ({"type", "object"}), or None when the server ended the watch.

        Raises ApiUnreachable when the stream breaks or carries something not JSON.
        """
        try:
            line = next(self._lines)
        except StopIteration:
            self._ended = True
            return None
        except _TRANSPORT_ERRORS as e:
            raise ApiUnreachable.of(e) from e
        try:
            event: dict[str, Any] = json.loads(line)
        except ValueError as e:
            raise ApiUnreachable.of(e) from e
        return event

    def close(self) -> None:
        """Release a finished stream; interrupt one that another thread may be reading.

        shutdown() (urllib3 >= 2.3) makes a read blocked in another thread
        return at once; that connection is then dropped, never pooled.
        """
        if self._ended:
            self._response.release_conn()
            return
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            self._response.shutdown()


class SliceApi:
    """The handful of API calls the publisher and `dra-driver cleanup` make."""

    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self._api = api
        self._timeout = (min(timeout, 5.0), timeout)

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        timeout: Any = None,
        stream: bool = False,
    ) -> Any:
        """One request; raises ApiError or ApiUnreachable."""
        try:
            return self._request(method, path, query, body, timeout, stream)
        except ApiException as e:
            raise ApiError.of(e) from e
        except _TRANSPORT_ERRORS as e:
            raise ApiUnreachable.of(e) from e

    def _request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        body: Any,
        timeout: Any,
        stream: bool,
    ) -> Any:
        params = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*params, _request_timeout=timeout or self._timeout)
        if not 200 <= response.status <= 299:
            raw: bytes = response.read() or b""
            raise ApiException.from_response(
                http_resp=response, body=raw.decode("utf-8", "replace"), data=None
            )
        if stream:
            return response.response
        data = response.read()
        return json.loads(data) if data else {}

    def list_slices(self, field_selector: str) -> tuple[list[dict[str, Any]], str]:
        """All matching slices (following continue tokens) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("fieldSelector", field_selector), ("limit", "500")]
            if token:
                query.append(("continue", token))
            page = self._call("GET", SLICES_PATH, query)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    def watch_slices(
        self, field_selector: str, resource_version: str, timeout_seconds: int
    ) -> WatchStream:
        query = [
            ("fieldSelector", field_selector),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        response = self._call(
            "GET", SLICES_PATH, query, timeout=(self._timeout[0], timeout_seconds + 30), stream=True
        )
        return WatchStream(response)

    def create_slice(self, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", SLICES_PATH, body=obj)
        return result

    def replace_slice(self, obj: dict[str, Any]) -> dict[str, Any]:
        name = quote(obj["metadata"]["name"], safe="")
        result: dict[str, Any] = self._call("PUT", f"{SLICES_PATH}/{name}", body=obj)
        return result

    def delete_slice(self, name: str, uid: str | None, resource_version: str | None) -> bool:
        """Delete with preconditions; False if it was already gone."""
        preconditions = {
            k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v
        }
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
        try:
            self._call("DELETE", f"{SLICES_PATH}/{quote(name, safe='')}", body=body)
        except ApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    def delete_collection(self, field_selector: str) -> None:
        self._call("DELETE", SLICES_PATH, [("fieldSelector", field_selector)])

    def server_version(self) -> tuple[int, int] | None:
        """The API server's (major, minor) from /version; None if it does not say.

        /version is public (system:public-info-viewer): it needs no RBAC rule.
        """
        try:
            info = client.VersionApi(self._api).get_code(_request_timeout=self._timeout)
        except ApiException as e:
            raise ApiError.of(e) from e
        except _TRANSPORT_ERRORS as e:
            raise ApiUnreachable.of(e) from e
        return parse_server_version(
            {"major": info.major, "minor": info.minor, "gitVersion": info.git_version}
        )

    def get_node(self, name: str) -> dict[str, Any] | None:
        """The Node object, or None if no such Node exists."""
        try:
            node: dict[str, Any] = self._call("GET", f"/api/v1/nodes/{quote(name, safe='')}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return node
