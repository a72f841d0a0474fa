"""ResourceSlice and ResourceClaim validation of the API server double (422 Invalid)."""

from __future__ import annotations

from typing import Any

import pytest
from apiserver_fixtures import (
    DRIVER,
    claim_body,
    custom_objects,
    device,
    expect_invalid,
    resource_v1,
    slice_body,
)
from kubernetes import client

from dra_driver.testing.apiserver import validation as v

GROUP, VERSION = "resource.k8s.io", "v1"


@pytest.fixture
def create(kube: client.ApiClient) -> Any:
    """Create a slice through CustomObjectsApi, which sends the body exactly as given."""
    custom = custom_objects(kube)

    def do(body: dict[str, Any]) -> Any:
        return custom.create_cluster_custom_object(GROUP, VERSION, "resourceslices", body)

    return do


def taint(key: str = "gpu.nvidia.com/xid", effect: str = "NoSchedule") -> dict[str, Any]:
    return {"key": key, "value": "79", "effect": effect}


def test_valid_slice_round_trips_and_gets_taint_time(create: Any) -> None:
    body = slice_body(devices=[device(taints=[taint()])])
    body["spec"]["devices"][0]["attributes"]["version"] = {"version": "1.0.0-rc.1+build.5"}
    stored = create(body)
    assert stored["spec"]["devices"][0]["attributes"] == body["spec"]["devices"][0]["attributes"]
    assert stored["spec"]["devices"][0]["taints"][0]["timeAdded"].endswith("Z")


def test_device_count_limits(create: Any) -> None:
    plain = [{"name": f"gpu-{i}"} for i in range(v.RESOURCE_SLICE_MAX_DEVICES)]
    create(slice_body("max", devices=plain))
    too_many = [*plain, {"name": "gpu-extra"}]
    status = expect_invalid(lambda: create(slice_body(devices=too_many)), "spec.devices")
    assert "Too many: 129: must have at most 128 items" in status["message"]
    tainted: list[dict[str, Any]] = [
        {"name": f"gpu-{i}"} for i in range(v.RESOURCE_SLICE_MAX_DEVICES_WITH_ADVANCED_FEATURES + 1)
    ]
    tainted[0]["taints"] = [taint()]
    expect_invalid(lambda: create(slice_body(devices=tainted)), "spec.devices", "at most 64")
    counters = [dict(d) for d in tainted]
    del counters[0]["taints"]
    counters[5]["consumesCounters"] = [{"counterSet": "gpu-0", "counters": {"sm": {"value": "1"}}}]
    expect_invalid(lambda: create(slice_body(devices=counters)), "spec.devices", "at most 64")
    create(slice_body("sixty-four", devices=tainted[:64]))


def test_attribute_and_capacity_limits(create: Any) -> None:
    attrs = {f"a{i}": {"int": i} for i in range(20)}
    caps = {f"c{i}": {"value": "1"} for i in range(13)}
    expect_invalid(
        lambda: create(
            slice_body(devices=[{"name": "gpu-0", "attributes": attrs, "capacity": caps}])
        ),
        "spec.devices[0]",
        "must not exceed 32",
    )
    del caps["c12"]
    create(slice_body(devices=[{"name": "gpu-0", "attributes": attrs, "capacity": caps}]))


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("x" * 33, "Too long: may not be more than 32"),
        ("bad-name", "C identifier"),
        ("9lives", "C identifier"),
        ("-bad.example.com/x", "RFC 1123 subdomain"),
        ("a.example.com/b/c", "C identifier"),
        ("/x", "Required value"),
    ],
)
def test_qualified_names(create: Any, name: str, fragment: str) -> None:
    dev = {"name": "gpu-0", "attributes": {name: {"bool": True}}}
    expect_invalid(
        lambda: create(slice_body(devices=[dev])), f"spec.devices[0].attributes[{name}]", fragment
    )


def test_qualified_name_forms_that_pass(create: Any) -> None:
    dev = {
        "name": "gpu-0",
        "attributes": {"_x": {"bool": True}, "Gpu.NVIDIA.com/productName": {"string": "H100"}},
        "capacity": {"resource.kubernetes.io/" + "m" * 32: {"value": "1"}},
    }
    created = create(slice_body(devices=[dev]))
    (stored,) = created["spec"]["devices"]
    assert stored["attributes"] == dev["attributes"]
    assert stored["capacity"] == dev["capacity"]
    assert created["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("attribute", "field", "fragment"),
    [
        (
            {"string": "s" * 65},
            "spec.devices[0].attributes[a].string",
            "Too long: may not be more than 64",
        ),
        ({"version": "v1.2.3"}, "spec.devices[0].attributes[a].version", "semver"),
        ({"version": "1.2"}, "spec.devices[0].attributes[a].version", "semver"),
        ({"version": "01.2.3"}, "spec.devices[0].attributes[a].version", "semver"),
        ({"int": 1, "string": "x"}, "spec.devices[0].attributes[a]", "exactly one value"),
        ({}, "spec.devices[0].attributes[a]", "exactly one value"),
        ({"int": "1"}, "spec.devices[0].attributes[a].int", "integer"),
        ({"strings": ["a"]}, "spec.devices[0].attributes[a]", "exactly one value"),  # gate off
    ],
)
def test_attribute_values(
    create: Any, attribute: dict[str, Any], field: str, fragment: str
) -> None:
    dev = {"name": "gpu-0", "attributes": {"a": attribute}}
    expect_invalid(lambda: create(slice_body(devices=[dev])), field, fragment)


def test_device_names(create: Any) -> None:
    expect_invalid(
        lambda: create(slice_body(devices=[{"name": "GPU_0"}])),
        "spec.devices[0].name",
        "RFC 1123 label",
    )
    expect_invalid(lambda: create(slice_body(devices=[{}])), "spec.devices[0].name", "Required")
    dupes = [{"name": "gpu-0"}, {"name": "gpu-0"}]
    expect_invalid(
        lambda: create(slice_body(devices=dupes)), "spec.devices[1].name", "Duplicate value"
    )


def test_driver_and_pool(create: Any) -> None:
    expect_invalid(lambda: create(slice_body(driver="Not_Valid")), "spec.driver", "RFC 1123")
    expect_invalid(lambda: create(slice_body(driver="d" * 64)), "spec.driver", "Too long")
    create(slice_body("upper", driver="GPU.example.com"))  # checked lower-cased, like upstream
    no_name = slice_body()
    del no_name["spec"]["pool"]["name"]
    expect_invalid(lambda: create(no_name), "spec.pool.name", "Required")
    zero = slice_body(pool={"name": "p", "generation": 0, "resourceSliceCount": 0})
    expect_invalid(lambda: create(zero), "spec.pool.resourceSliceCount", "greater than 0")
    negative = slice_body(pool={"name": "p", "generation": -1, "resourceSliceCount": 1})
    expect_invalid(lambda: create(negative), "spec.pool.generation")
    bad_pool = slice_body(pool={"name": "a/B", "generation": 0, "resourceSliceCount": 1})
    expect_invalid(lambda: create(bad_pool), "spec.pool.name", "DNS sub-domains")
    create(
        slice_body(
            "multi", pool={"name": "zone-a/rack-1", "generation": 0, "resourceSliceCount": 1}
        )
    )


def test_node_selection_is_exactly_one(create: Any) -> None:
    none = slice_body()
    del none["spec"]["nodeName"]
    expect_invalid(lambda: create(none), "spec", "exactly one of `nodeName`")
    expect_invalid(lambda: create(slice_body(allNodes=True)), "spec", "multiple fields are set")
    everywhere = slice_body("everywhere", allNodes=True)
    del everywhere["spec"]["nodeName"]
    create(everywhere)
    false_all = slice_body(allNodes=False)
    del false_all["spec"]["nodeName"]
    expect_invalid(lambda: create(false_all), "spec.allNodes", "must be true")
    two_terms = slice_body(nodeSelector={"nodeSelectorTerms": [{}, {}]})
    del two_terms["spec"]["nodeName"]
    expect_invalid(lambda: create(two_terms), "spec.nodeSelector.nodeSelectorTerms", "exactly one")
    stray = slice_body(devices=[{"name": "gpu-0", "nodeName": "n"}])
    expect_invalid(lambda: create(stray), "spec.devices[0].nodeName", "perDeviceNodeSelection")


def test_taints(create: Any) -> None:
    many = [taint(f"gpu.nvidia.com/t{i}") for i in range(v.DEVICE_TAINTS_MAX_LENGTH + 1)]
    expect_invalid(
        lambda: create(slice_body(devices=[device(taints=many)])),
        "spec.devices[0].taints",
        "at most 16",
    )
    bad_effect = [taint(effect="PreferNoSchedule")]
    status = expect_invalid(
        lambda: create(slice_body(devices=[device(taints=bad_effect)])),
        "spec.devices[0].taints[0].effect",
    )
    assert '"NoSchedule", "NoExecute", "None"' in status["message"]
    expect_invalid(
        lambda: create(slice_body(devices=[device(taints=[{"effect": "None"}])])),
        "spec.devices[0].taints[0].key",
        "Required",
    )
    create(slice_body(devices=[device(taints=[taint(effect=e) for e in v.DEVICE_TAINT_EFFECTS])]))


def test_counters(create: Any) -> None:
    sets = [{"name": f"set-{i}", "counters": {"memory": {"value": "1Gi"}}} for i in range(9)]
    no_devices = slice_body(devices=[], sharedCounters=sets)
    expect_invalid(lambda: create(no_devices), "spec.sharedCounters", "at most 8")
    mixed = slice_body(sharedCounters=sets[:1])
    expect_invalid(lambda: create(mixed), "spec", "only one of `devices` or `sharedCounters`")
    bad_counter = slice_body(
        devices=[], sharedCounters=[{"name": "s", "counters": {"Mem": {"value": "x"}}}]
    )
    expect_invalid(lambda: create(bad_counter), "spec.sharedCounters[0].counters[Mem]")
    expect_invalid(lambda: create(bad_counter), "spec.sharedCounters[0].counters[Mem].value")
    consumes = [{"counterSet": f"s{i}", "counters": {"m": {"value": "1"}}} for i in range(3)]
    expect_invalid(
        lambda: create(slice_body(devices=[{"name": "gpu-0", "consumesCounters": consumes}])),
        "spec.devices[0].consumesCounters",
        "at most 2",
    )
    create(slice_body("counters", devices=[], sharedCounters=sets[:8]))


def test_immutable_fields_on_update(kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body())
    for patch, field in (
        ({"spec": {"driver": "other.example.com"}}, "spec.driver"),
        ({"spec": {"nodeName": "node-b"}}, "spec.nodeName"),
        ({"spec": {"pool": {"name": "other"}}}, "spec.pool.name"),
    ):
        expect_invalid(lambda p=patch: res.patch_resource_slice("slice-a", p), field, "immutable")  # type: ignore[misc]


def test_claim_validation(kube: client.ApiClient) -> None:
    custom = custom_objects(kube)

    def create(body: dict[str, Any]) -> Any:
        return custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", "resourceclaims", body
        )

    neither = claim_body()
    neither["spec"]["devices"]["requests"][0] = {"name": "gpu"}
    expect_invalid(lambda: create(neither), "spec.devices.requests[0]", "exactly one of `exactly`")
    mode = claim_body()
    mode["spec"]["devices"]["requests"][0]["exactly"]["allocationMode"] = "Some"
    expect_invalid(lambda: create(mode), "spec.devices.requests[0].exactly.allocationMode")
    count = claim_body()
    count["spec"]["devices"]["requests"][0]["exactly"]["count"] = 0
    expect_invalid(lambda: create(count), "spec.devices.requests[0].exactly.count")
    config = claim_body()
    config["spec"]["devices"]["config"] = [
        {"opaque": {"driver": DRIVER, "parameters": {"x": "y" * 11000}}}
    ]
    expect_invalid(lambda: create(config), "spec.devices.config[0].opaque.parameters", "Too long")
    bad_name = claim_body("Bad_Name")
    expect_invalid(lambda: create(bad_name), "metadata.name")
    namespace_mismatch = claim_body(namespace="elsewhere")
    with pytest.raises(client.ApiException) as info:
        create(namespace_mismatch)
    assert info.value.status == 400
