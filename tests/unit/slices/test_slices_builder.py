"""ResourceSlice builder and the API's documented validation rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dra_driver.health.board import DeviceHealth, Health
from dra_driver.inventory import Inventory, Version, build_inventory
from dra_driver.nvml.types import MIG_DISABLE, GpuRecord, MigProfile
from dra_driver.nvml.types import NvmlSnapshot as Snapshot
from dra_driver.slices import validation
from dra_driver.slices.builder import (
    attribute_json,
    build_pool,
    build_slices,
    counter_name,
    slice_generate_name,
)
from dra_driver.slices.quantity import QuantityError, format_quantity, parse_quantity
from dra_driver.slices.taints import health_taints, taint_value
from dra_driver.testing.records import H100_PROFILES, GiB, gpu_record, mig_record

MiB = 1024**2


def gpu(index: int, migs: int = 0, profiles: tuple[MigProfile, ...] = H100_PROFILES) -> GpuRecord:
    """GPU `index` with `migs` 1g.10gb MIG devices at placements 0..migs-1."""
    return gpu_record(
        index,
        (mig_record(i, gpu=index) for i in range(migs)),
        bus=f"00000000:{0x10 + index:02X}:00.0",
        mig_profiles=profiles,
    )


def snapshot(gpus: int, migs: int = 0) -> Snapshot:
    return Snapshot(
        driver_version="550.54.15",
        cuda_driver_version=12040,
        gpus=tuple(gpu(i, migs) for i in range(gpus)),
    )


def inventory(gpus: int, migs: int = 0) -> Inventory:
    return build_inventory(snapshot(gpus, migs))


def devices(pool_slices: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [d for s in pool_slices for d in s.get("devices", [])]


# -- quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "binary", "text"),
    [
        (80 * GiB, True, "80Gi"),
        (81559 * MiB, True, "81559Mi"),
        (1536, True, "1536"),
        (1000, True, "1k"),  # Go switches to DecimalSI below 1024
        (2000, True, "2000"),
        (0, True, "0"),
        (132, False, "132"),
        (1000, False, "1k"),
        (2_000_000, False, "2M"),
        (1500, False, "1500"),
    ],
)
def test_quantities_are_go_canonical_and_parse_back(value: int, binary: bool, text: str) -> None:
    assert format_quantity(value, binary) == text
    assert parse_quantity(text) == value


def test_quantity_parsing_is_exact_and_strict() -> None:
    assert parse_quantity("1500m") * 2 == 3
    assert parse_quantity("12e3") == 12000
    assert parse_quantity("0.5Ki") == 512
    with pytest.raises(QuantityError):
        parse_quantity("12 GB")


# -- validation rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("productName", True),
        ("_x9", True),
        ("a" * 32, True),
        ("a" * 33, False),
        ("9lives", False),
        ("with-dash", False),
        ("resource.kubernetes.io/pciBusID", True),
        ("Example.COM/x", False),
        ("a/b/c", False),
        (("d" * 64) + ".io/x", False),
        ("gpu.nvidia.com/", False),
    ],
)
def test_qualified_attribute_names(name: str, ok: bool) -> None:
    assert (validation.qualified_name_problem(name) is None) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"string": "x" * 64}, True),
        ({"string": "x" * 65}, False),
        ({"int": 2**63 - 1}, True),
        ({"int": 2**63}, False),
        ({"int": True}, False),
        ({"bool": False}, True),
        ({"version": "1.2.3"}, True),
        ({"version": "1.2.3-rc.1+build.5"}, True),
        ({"version": "535.104.05"}, False),
        ({"version": "12.4"}, False),
        ({"version": "v1.2.3"}, False),
        ({"string": "a", "int": 1}, False),
        ({"ints": [1]}, False),
        ({}, False),
    ],
)
def test_attribute_values(value: dict[str, Any], ok: bool) -> None:
    assert (validation.attribute_value_problem(value) is None) is ok


def test_bad_attribute_is_dropped_loudly_and_the_device_survives() -> None:
    dev = {
        "name": "gpu-0",
        "attributes": {
            "type": {"string": "gpu"},
            "productName": {"string": "N" * 80},
            "driverVersion": {"version": "535.104.05"},
            "bad-key": {"string": "x"},
        },
        "capacity": {"memory": {"value": "80Gi"}, "broken": {"value": "lots"}},
    }
    checked = validation.check_device(dev)
    assert checked.value is not None
    assert checked.value["attributes"] == {"type": {"string": "gpu"}}
    assert checked.value["capacity"] == {"memory": {"value": "80Gi"}}
    assert len(checked.problems) == 4
    assert all(p.startswith("BUG: device gpu-0:") for p in checked.problems)
    assert any("productName" in p and "80 characters" in p for p in checked.problems)


def test_attributes_and_capacities_are_clipped_to_32_attributes_first() -> None:
    dev = {
        "name": "gpu-0",
        "attributes": {f"a{i}": {"int": i} for i in range(30)},
        "capacity": {f"c{i}": {"value": "1"} for i in range(5)},
    }
    checked = validation.check_device(dev)
    assert checked.value is not None
    assert len(checked.value["attributes"]) == 30
    assert list(checked.value["capacity"]) == ["c0", "c1"]
    assert len(checked.problems) == 3


@pytest.mark.parametrize("name", ["GPU-0", "gpu_0", "-gpu", "g" * 64, ""])
def test_device_with_invalid_name_is_dropped(name: str) -> None:
    checked = validation.check_device({"name": name, "attributes": {}})
    assert checked.value is None
    assert "not a DNS label" in checked.problems[0]


def test_taint_rules() -> None:
    good = {"key": "gpu.nvidia.com/unhealthy", "value": "xid-79", "effect": "NoSchedule"}
    assert validation.taint_problem(good) is None
    assert validation.taint_problem({**good, "effect": "None"}) is None
    assert validation.taint_problem({**good, "effect": "PreferNoSchedule"})
    assert validation.taint_problem({**good, "key": "bad key"})
    assert validation.taint_problem({**good, "value": "has space"})
    assert validation.taint_problem({**good, "value": "v" * 64})
    assert validation.taint_problem({"value": "x", "effect": "NoSchedule"})


def test_taints_are_deduplicated_and_clipped_keeping_the_most_severe() -> None:
    taints = [{"key": f"example.com/t{i}", "effect": "None"} for i in range(5)]
    taints += [{"key": "example.com/evict", "effect": "NoExecute"}]
    taints += [{"key": "example.com/t0", "effect": "None"}]  # duplicate
    problems: list[str] = []
    out = validation.clean_taints("device gpu-0", taints, problems)
    assert len(out) == validation.MAX_TAINTS_PER_DEVICE
    assert {"key": "example.com/evict", "effect": "NoExecute"} in out
    assert [t["key"] for t in out] == [
        "example.com/t0",
        "example.com/t1",
        "example.com/t2",
        "example.com/evict",
    ]
    assert len(problems) == 1 and "t3, example.com/t4" in problems[0]


def test_counter_rules() -> None:
    counters: dict[str, Any] = {f"c{i}": {"value": "1"} for i in range(40)}
    counters["copyEngines"] = {"value": "1"}
    cs = {"name": "gpu-0-counter-set", "counters": counters}
    checked = validation.check_counter_set(cs)
    assert checked.value is not None
    assert len(checked.value["counters"]) == validation.MAX_COUNTERS_PER_SET
    assert any("copyEngines" in p for p in checked.problems)
    assert validation.check_counter_set({"name": "empty", "counters": {}}).value is None
    assert validation.check_counter_set({"name": "Bad_Name", "counters": {"a": 1}}).value is None


def test_pool_rules_drop_duplicates_and_dangling_consumption() -> None:
    sets: list[dict[str, Any]] = [{"name": "s", "counters": {"memory": {"value": "1Gi"}}}]
    devs: list[dict[str, Any]] = [
        {
            "name": "a",
            "consumesCounters": [{"counterSet": "s", "counters": {"memory": {"value": "1"}}}],
        },
        {"name": "a"},
        {
            "name": "b",
            "consumesCounters": [{"counterSet": "t", "counters": {"memory": {"value": "1"}}}],
        },
        {
            "name": "c",
            "consumesCounters": [{"counterSet": "s", "counters": {"cores": {"value": "1"}}}],
        },
    ]
    out, out_sets, problems = validation.check_pool(devs, sets + sets)
    assert [d["name"] for d in out] == ["a"]
    assert len(out_sets) == 1
    assert len(problems) == 4


def test_driver_and_pool_names() -> None:
    assert validation.driver_name_problem("gpu.nvidia.com") is None
    assert validation.driver_name_problem("x" * 64)
    assert validation.driver_name_problem("not_a_domain")
    assert validation.pool_name_problem("node-a") is None
    assert validation.pool_name_problem("zone.a/node-a") is None
    assert validation.pool_name_problem("Node A")


# -- builder --------------------------------------------------------------------------------


def test_attribute_union_shapes() -> None:
    assert attribute_json(True) == {"bool": True}
    assert attribute_json(3) == {"int": 3}
    assert attribute_json(Version("1.2.3")) == {"version": "1.2.3"}
    assert attribute_json("gpu") == {"string": "gpu"}


def test_full_gpu_slice_shape() -> None:
    objs, problems = build_slices(
        inventory(2), driver="gpu.nvidia.com", node_name="node-a", node_uid="u-1"
    )
    assert problems == ()
    assert len(objs) == 1
    obj = objs[0]
    assert obj["apiVersion"] == "resource.k8s.io/v1"
    assert obj["metadata"] == {
        "generateName": "00000-gpu.nvidia.com-node-a-",
        "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "u-1", "controller": True}
        ],
    }
    spec = obj["spec"]
    assert spec["driver"] == "gpu.nvidia.com"
    assert spec["nodeName"] == "node-a"
    assert spec["pool"] == {"name": "node-a", "generation": 1, "resourceSliceCount": 1}
    dev = spec["devices"][0]
    assert dev["name"] == "gpu-0"
    assert dev["attributes"]["type"] == {"string": "gpu"}
    assert dev["attributes"]["driverVersion"] == {"version": "550.54.15"}
    assert dev["attributes"]["resource.kubernetes.io/pciBusID"] == {"string": "0000:10:00.0"}
    assert dev["capacity"] == {"memory": {"value": "80Gi"}}
    assert "taints" not in dev


def test_no_owner_reference_without_node_uid() -> None:
    objs, _ = build_slices(inventory(1), driver="gpu.nvidia.com", node_name="node-a")
    assert "ownerReferences" not in objs[0]["metadata"]


def test_empty_node_publishes_one_empty_slice() -> None:
    pool = build_pool(build_inventory(snapshot(0)))
    assert pool.slices == ({"devices": []},)


def test_sixteen_gpus_with_seven_mig_devices_split_within_limits() -> None:
    pool = build_pool(inventory(16, migs=7))
    sizes = [len(s["devices"]) for s in pool.slices]
    assert sizes == [63, 49]  # whole GPUs per slice, at most 64
    names = [d["name"] for d in devices(pool.slices)]
    assert names == [d.name for d in inventory(16, migs=7).devices]
    for s in pool.slices:
        assert validation.slice_problems(s) == []
        gpus_in_slice = {d["attributes"]["parentUUID"]["string"] for d in s["devices"]}
        assert len(gpus_in_slice) * 7 == len(s["devices"])


def test_a_gpu_larger_than_a_slice_is_split() -> None:
    pool = build_pool(inventory(3, migs=7), devices_per_slice=5)
    assert [len(s["devices"]) for s in pool.slices] == [5, 2, 5, 2, 5, 2]


def test_taints_attach_and_a_gpu_taint_reaches_its_mig_devices() -> None:
    inv = inventory(2, migs=2)
    taint = {"key": "gpu.nvidia.com/unhealthy", "value": "gpu-lost", "effect": "NoSchedule"}
    pool = build_pool(inv, {"gpu-1": [taint], "gpu-0-mig-1g10gb-19-1": [taint]})
    tainted = {d["name"]: d["taints"] for d in devices(pool.slices) if "taints" in d}
    assert tainted == {
        "gpu-0-mig-1g10gb-19-1": [taint],
        "gpu-1-mig-1g10gb-19-0": [taint],
        "gpu-1-mig-1g10gb-19-1": [taint],
    }


def test_invalid_taint_from_health_is_dropped_not_sent() -> None:
    pool = build_pool(inventory(1), {"gpu-0": [{"key": "x", "effect": "Evict"}]})
    assert "taints" not in devices(pool.slices)[0]
    assert len(pool.problems) == 1 and "Evict" in pool.problems[0]


def test_partitionable_layout() -> None:
    inv = inventory(10)
    pool = build_pool(inv, partitionable=True)
    counter_slices = [s for s in pool.slices if "sharedCounters" in s]
    device_slices = [s for s in pool.slices if "devices" in s]
    assert [len(s["sharedCounters"]) for s in counter_slices] == [8, 2]
    assert pool.slices[:2] == tuple(counter_slices)
    for s in pool.slices:
        assert validation.slice_problems(s) == []
        assert not ("devices" in s and "sharedCounters" in s)
    sets = {cs["name"]: cs["counters"] for s in counter_slices for cs in s["sharedCounters"]}
    gpu0 = sets["gpu-0-counter-set"]
    assert gpu0["memory-slice-7"] == {"value": "1"}
    assert gpu0["memory"] == {"value": "80Gi"}
    assert gpu0["multiprocessors"] == {"value": "128"}
    devs = {d["name"]: d for s in device_slices for d in s["devices"]}
    # No MIG device exists yet: only the full GPUs, which prepare can serve.
    assert len(devs) == 10
    full = devs["gpu-0"]
    assert full["consumesCounters"] == [{"counterSet": "gpu-0-counter-set", "counters": gpu0}]
    assert full["attributes"]["uuid"] == {"string": "GPU-00000000-1111-2222-3333-444444444444"}
    # Every consumption stays within its counter set.
    for d in devs.values():
        for c in d["consumesCounters"]:
            for name, v in c["counters"].items():
                assert parse_quantity(v["value"]) <= parse_quantity(
                    sets[c["counterSet"]][name]["value"]
                )


def test_partitionable_skips_gpus_without_profiles_and_ampere_in_mig_mode() -> None:
    snap = snapshot(2, migs=1)
    ampere = dataclasses.replace(snap.gpus[0], architecture=7)
    plain = dataclasses.replace(snap.gpus[1], mig_profiles=(), mig_mode_current=MIG_DISABLE)
    inv = build_inventory(dataclasses.replace(snap, gpus=(ampere, plain)))
    pool = build_pool(inv, partitionable=True)
    names = [d["name"] for d in devices(pool.slices)]
    assert "gpu-0" not in names  # Ampere in MIG mode: no full GPU
    # Only the MIG device that exists: the others would need dynamic MIG to prepare.
    assert "gpu-0-mig-1g10gb-19-0" in names
    assert "gpu-0-mig-7g80gb-0-0" not in names
    assert "gpu-1" in names
    assert not any(n.startswith("gpu-1-mig") for n in names)
    assert len([s for s in pool.slices if "sharedCounters" in s]) == 1


def test_counter_names_are_dns_labels() -> None:
    for cap in ("multiprocessors", "copyEngines", "jpegEngines", "ofaEngines", "memorySlice7"):
        assert validation.is_dns_label(counter_name(cap))


def test_generate_name_uses_the_helper_index_prefix() -> None:
    assert slice_generate_name(0, "gpu.nvidia.com", "n") == "00000-gpu.nvidia.com-n-"
    assert slice_generate_name(26, "gpu.nvidia.com", "n") == "0001a-gpu.nvidia.com-n-"


def test_builder_is_deterministic() -> None:
    a = build_pool(inventory(4, migs=3), partitionable=True)
    b = build_pool(inventory(4, migs=3), partitionable=True)
    assert a == b


# -- health -> taints -----------------------------------------------------------------------


def test_unhealthy_and_unknown_devices_are_tainted() -> None:
    health = [
        DeviceHealth("gpu-0", Health.UNHEALTHY, reason="xid-79"),
        DeviceHealth("gpu-1", Health.DEGRADED, reason="thermal"),
        DeviceHealth("gpu-2", Health.UNKNOWN),
        DeviceHealth("gpu-3", Health.UNHEALTHY),
        DeviceHealth("gpu-4", Health.UNHEALTHY, reason="gpu-lost"),
        DeviceHealth("gpu-5", Health.UNHEALTHY, reason="remap-failure"),
    ]
    # NVIDIA's keys for XIDs and lost GPUs, so their tolerations keep matching.
    assert health_taints(health, "gpu.nvidia.com") == {
        "gpu-0": [{"key": "gpu.nvidia.com/xid", "value": "79", "effect": "NoSchedule"}],
        "gpu-2": [
            {"key": "gpu.nvidia.com/unknown", "value": "not-checked", "effect": "NoSchedule"}
        ],
        "gpu-3": [{"key": "gpu.nvidia.com/unhealthy", "value": "unknown", "effect": "NoSchedule"}],
        "gpu-4": [{"key": "gpu.nvidia.com/gpu-lost", "effect": "NoSchedule"}],
        "gpu-5": [
            {"key": "gpu.nvidia.com/unhealthy", "value": "remap-failure", "effect": "NoSchedule"}
        ],
    }


@pytest.mark.parametrize(
    ("reason", "value"),
    [
        ("xid-79", "xid-79"),
        ("XID 79 (fell off the bus)", "XID-79-fell-off-the-bus"),
        ("--", "unknown"),
    ],
)
def test_taint_values_are_label_values(reason: str, value: str) -> None:
    assert taint_value(reason) == value
    assert (
        validation.taint_problem(
            {"key": "a/b", "value": taint_value(reason * 20), "effect": "None"}
        )
        is None
    )
