"""Claim status rules of the API double that the writer relies on, as the real server has them.

- an apply or patch naming another metadata.uid is refused (uid is immutable), so a
  UID in an applied configuration is a precondition;
- status.devices conditions are metav1.Conditions: reason format, type a qualified name;
- /version says what the double claims to be, and a pre-1.35 server refuses effect None.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dra_driver.testing.apiserver import RESOURCES, ApiError, ApiServerDouble
from dra_driver.testing.simhost import claim_object

APPLY = "application/apply-patch+yaml"


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


def _claim(api: ApiServerDouble) -> dict[str, Any]:
    obj = claim_object("", "c", [{"request": "gpu", "device": "gpu-0"}], pool="node-1")
    del obj["metadata"]["uid"]
    return api.create("resourceclaims", obj)


def _entry(**cond: str) -> dict[str, Any]:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Prepared",
        "message": "",
        "lastTransitionTime": "2026-12-01T00:00:00Z",
        **cond,
    }
    return {
        "driver": "gpu.nvidia.com",
        "pool": "node-1",
        "device": "gpu-0",
        "conditions": [condition],
    }


def _apply(api: ApiServerDouble, uid: str, entry: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "c", "namespace": "default", "uid": uid},
        "status": {"devices": [entry]},
    }
    return api.store.patch(
        RESOURCES["resourceclaims"], "default", "c", APPLY, body, subresource="status",
        field_manager="gpu.nvidia.com/node-1",
    )  # fmt: skip


def test_an_apply_with_another_uid_is_refused(api: ApiServerDouble) -> None:
    claim = _claim(api)
    stored = _apply(api, claim["metadata"]["uid"], _entry())
    assert stored["status"]["devices"][0]["device"] == "gpu-0"
    with pytest.raises(ApiError) as err:
        _apply(api, "00000000-0000-0000-0000-000000000001", _entry(reason="Other"))
    assert err.value.code == 422
    assert "metadata.uid" in str(err.value.status())
    assert (
        api.get("resourceclaims", "c", "default")["status"]["devices"][0]["conditions"][0]["reason"]
        == "Prepared"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("reason", "xid-79"), ("reason", "79Xid"), ("type", "not a type"), ("message", "m" * 32769)],
)
def test_condition_fields_are_validated_like_metav1(
    api: ApiServerDouble, field: str, value: str
) -> None:
    claim = _claim(api)
    with pytest.raises(ApiError) as err:
        _apply(api, claim["metadata"]["uid"], _entry(**{field: value}))
    assert err.value.code == 422


def test_version_and_pre_135_taint_effects(api: ApiServerDouble) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{api.url}/version") as resp:
        assert json.load(resp)["minor"] == "36"
    api.set_version(34)
    with urllib.request.urlopen(f"{api.url}/version") as resp:
        doc = json.load(resp)
    assert (doc["major"], doc["minor"], doc["gitVersion"]) == ("1", "34", "v1.34.0")
    slice_ = {
        "metadata": {"name": "s"},
        "spec": {
            "driver": "gpu.nvidia.com",
            "nodeName": "node-1",
            "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {"name": "gpu-0", "taints": [{"key": "gpu.nvidia.com/degraded", "effect": "None"}]}
            ],
        },
    }
    with pytest.raises(ApiError) as err:
        api.create("resourceslices", slice_)
    assert err.value.code == 422
    api.set_version(35)
    assert (
        api.create("resourceslices", slice_)["spec"]["devices"][0]["taints"][0]["effect"] == "None"
    )
    api.clear_faults()
    with urllib.request.urlopen(f"{api.url}/version") as resp:
        assert json.load(resp)["minor"] == "36"
