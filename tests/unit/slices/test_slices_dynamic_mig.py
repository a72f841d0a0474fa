"""Dynamic MIG publishing: counter sets and every (profile, placement), checked against the fake.

The allocator check models the upstream scheduler's rule for KEP-4815 devices
(a set of devices fits when, for every counter, what they consume adds up to
at most the counter set's value) and holds it against the fake NVML's own
rules for every combination of MIG devices on one GPU: every set the counters
admit is one the fake creates, and every maximal one leaves no device the fake
would still create.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml import migops, open_backend
from dra_driver.nvml.errors import NvmlInsufficientResourcesError
from dra_driver.slices.builder import build_pool
from dra_driver.slices.quantity import parse_quantity
from dra_driver.testing import fakenvml


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fakenvml.FakeNode:
    fake = fakenvml.FakeNode("a100-dynamic", tmp_path / "a100-dynamic.faults.jsonl")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


def _inventory() -> Inventory:
    backend = open_backend(fakenvml.library_path(), "cffi")
    try:
        return build_inventory(backend.inventory(), backend.name)
    finally:
        backend.close()


def _devices(pool: Any) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in pool.slices for d in s.get("devices", [])}


def _counter_sets(pool: Any) -> dict[str, dict[str, int]]:
    return {
        cs["name"]: {k: parse_quantity(v["value"]) for k, v in cs["counters"].items()}
        for s in pool.slices
        for cs in s.get("sharedCounters", [])
    }


def test_mig_gpus_publish_counters_and_placements_and_no_full_gpu(node: fakenvml.FakeNode) -> None:
    operator = node.faults.create_mig_device(0, "3g.20gb", placement=4)
    pool = build_pool(_inventory(), dynamic_mig=True)
    assert pool.problems == ()
    devices = _devices(pool)
    assert set(_counter_sets(pool)) == {"gpu-0-counter-set", "gpu-1-counter-set"}
    # MIG mode on: no full GPU; MIG off: only the full GPU, no MIG devices.
    assert "gpu-0" not in devices and "gpu-1" not in devices
    assert {"gpu-2", "gpu-3"} <= set(devices)
    assert not [n for n in devices if n.startswith(("gpu-2-", "gpu-3-"))]
    gpu0 = sorted(n for n in devices if n.startswith("gpu-0-mig-"))
    # A100 40GB: 1g.5gb x7, 1g.5gb+me x7, 1g.10gb x4, 2g.10gb x3, 3g.20gb x2, 4g x1, 7g x1
    assert len(gpu0) == 25
    assert "gpu-0-mig-1g5gb-19-0" in gpu0 and "gpu-0-mig-7g40gb-0-0" in gpu0
    for name in gpu0:
        (consumes,) = devices[name]["consumesCounters"]
        assert consumes["counterSet"] == "gpu-0-counter-set"
    # The operator's device is published as it is, and consumes its counters.
    made = devices["gpu-0-mig-3g20gb-9-4"]
    assert made["attributes"]["uuid"] == {"string": operator.uuid}
    slices = {k for k in made["consumesCounters"][0]["counters"] if k.startswith("memory-slice")}
    assert slices == {f"memory-slice-{i}" for i in range(4, 8)}
    # Abstract devices carry no UUID (none exists yet).
    assert "uuid" not in devices["gpu-0-mig-3g20gb-9-0"]["attributes"]
    # Our own created device stays abstract: creating it does not rewrite the slice.
    ours = build_pool(_inventory(), dynamic_mig=True, created_migs=frozenset({operator.uuid}))
    assert "uuid" not in _devices(ours)["gpu-0-mig-3g20gb-9-4"]["attributes"]


def test_without_dynamic_mig_the_empty_mig_gpu_publishes_nothing_to_allocate(
    node: fakenvml.FakeNode,
) -> None:
    devices = _devices(build_pool(_inventory()))
    assert not [n for n in devices if n.startswith(("gpu-0", "gpu-1"))]


# -- the allocator check ------------------------------------------------------------------


def _gpu_model(pool: Any, gpu: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    capacity = _counter_sets(pool)[f"{gpu}-counter-set"]
    consumption = {
        name: {k: parse_quantity(v["value"]) for k, v in counters.items()}
        for name, d in _devices(pool).items()
        if name.startswith(f"{gpu}-mig-")
        for counters in [d["consumesCounters"][0]["counters"]]
    }
    return capacity, consumption


def _fits(capacity: dict[str, int], used: dict[str, int], extra: dict[str, int]) -> bool:
    return all(used.get(k, 0) + v <= capacity[k] for k, v in extra.items())


def _counter_feasible_sets(
    capacity: dict[str, int], consumption: dict[str, dict[str, int]]
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every set of devices the counters admit, with the devices they then refuse to add."""
    names = sorted(consumption)

    def walk(start: int, chosen: tuple[str, ...], used: dict[str, int]) -> Iterator[Any]:
        refused = tuple(
            n for n in names if n not in chosen and not _fits(capacity, used, consumption[n])
        )
        yield chosen, refused
        for i in range(start, len(names)):
            n = names[i]
            if n not in refused:
                grown = dict(used)
                for k, v in consumption[n].items():
                    grown[k] = grown.get(k, 0) + v
                yield from walk(i + 1, (*chosen, n), grown)

    yield from walk(0, (), {})


def _placement(name: str) -> tuple[int, int]:
    *_, profile_id, start = name.split("-")
    return int(profile_id), int(start)


def _fake_rules(topology: fakenvml.Topology, gpu: int) -> Any:
    """The fake's placement rules (native/fakenvml/migmgmt.c) for one GPU, as a predicate."""
    model = topology.raw["models"][topology.gpu(gpu).model]["mig"]
    profiles = {int(p["id"]): p for p in model["profiles"]}

    def allowed(chosen: tuple[str, ...]) -> bool:
        used = 0
        counts: dict[int, int] = {}
        for name in chosen:
            pid, start = _placement(name)
            p = profiles[pid]
            mask = ((1 << p["placement_size"]) - 1) << start
            if used & mask or start not in p["placements"]:
                return False
            used |= mask
            counts[pid] = counts.get(pid, 0) + 1
            if counts[pid] > p["instances"]:
                return False
        return len(chosen) <= model["max_devices"]

    return allowed, [(pid, s) for pid, p in profiles.items() for s in p["placements"]]


def test_counters_admit_exactly_the_sets_the_fake_can_create(node: fakenvml.FakeNode) -> None:
    pool = build_pool(_inventory(), dynamic_mig=True)
    capacity, consumption = _gpu_model(pool, "gpu-0")
    allowed, offered = _fake_rules(node.spec, 0)
    assert {_placement(n) for n in consumption} == set(offered)
    feasible = list(_counter_feasible_sets(capacity, consumption))
    assert len(feasible) > 1000
    for chosen, refused in feasible:
        assert allowed(chosen), f"counters admit {chosen}, which the fake refuses"
        for n in refused:
            assert not allowed((*chosen, n)), f"{chosen} + {n} fits the GPU; counters refuse it"


@pytest.mark.slow
def test_every_maximal_counter_set_is_created_by_the_fake_library(
    node: fakenvml.FakeNode,
) -> None:
    """The same check against the library itself, for every maximal set."""
    pool = build_pool(_inventory(), dynamic_mig=True)
    capacity, consumption = _gpu_model(pool, "gpu-0")
    gpu_uuid = node.spec.gpu(0).uuid
    manager = migops.CffiMigManager(fakenvml.library_path())
    checked = 0
    try:
        for chosen, refused in _counter_feasible_sets(capacity, consumption):
            if len(chosen) + len(refused) < len(consumption):
                continue  # not maximal
            made = [manager.create(gpu_uuid, *_placement(n)) for n in chosen]
            for n in refused:
                with pytest.raises(NvmlInsufficientResourcesError):
                    manager.create(gpu_uuid, *_placement(n))
            for m in made:
                assert manager.destroy(gpu_uuid, m.gpu_instance_id, m.compute_instance_id)
            checked += 1
    finally:
        manager.close()
    assert checked > 10
