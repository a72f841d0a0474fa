"""Object builders and checks for the API server double tests (fixtures: conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

DRIVER = "gpu.nvidia.com"
NODE = "node-a"


def as_any(api: object) -> Any:
    """The generated client's pydantic types add nothing to these tests; use it untyped."""
    return api


def resource_v1(api_client: client.ApiClient) -> Any:
    return client.ResourceV1Api(api_client)


def core_v1(api_client: client.ApiClient) -> Any:
    return client.CoreV1Api(api_client)


def custom_objects(api_client: client.ApiClient) -> Any:
    return client.CustomObjectsApi(api_client)


def device(name: str = "gpu-0", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "attributes": {
            "type": {"string": "gpu"},
            "driverVersion": {"version": "570.86.10"},
            "resource.kubernetes.io/pciBusID": {"string": "0000:3b:00.0"},
        },
        "capacity": {"memory": {"value": "80Gi"}},
        **extra,
    }


def slice_body(
    name: str | None = "slice-a",
    *,
    node: str = NODE,
    driver: str = DRIVER,
    devices: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name} if name else {"generateName": f"{driver}-{node}-"}
    if labels:
        metadata["labels"] = labels
    body_spec: dict[str, Any] = {
        "driver": driver,
        "nodeName": node,
        "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
        "devices": [device()] if devices is None else devices,
    }
    body_spec.update(spec)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": metadata,
        "spec": body_spec,
    }


def claim_body(name: str = "claim-a", namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]
            }
        },
    }


def allocation(*devices: str) -> dict[str, Any]:
    return {
        "devices": {
            "results": [
                {"request": "gpu", "driver": DRIVER, "pool": NODE, "device": d} for d in devices
            ]
        }
    }


def status_of(err: client.ApiException) -> dict[str, Any]:
    """The decoded Status body of an ApiException (fails the test if it is not one)."""
    body = json.loads(err.body or "null")
    assert isinstance(body, dict), err.body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == err.status
    return dict(body)


def expect_error(call: Callable[[], object], code: int, reason: str) -> dict[str, Any]:
    with pytest.raises(client.ApiException) as info:
        call()
    assert info.value.status == code, info.value.body
    status = status_of(info.value)
    assert status["reason"] == reason, status
    return status


def expect_invalid(call: Callable[[], object], field: str, fragment: str = "") -> dict[str, Any]:
    """Assert a 422 Invalid whose causes name ``field`` (and ``fragment`` in its message)."""
    status = expect_error(call, 422, "Invalid")
    causes = status["details"]["causes"]
    matching = [c for c in causes if c["field"] == field and fragment in c["message"]]
    assert matching, f"no cause for {field!r} with {fragment!r} in {causes}"
    return status
