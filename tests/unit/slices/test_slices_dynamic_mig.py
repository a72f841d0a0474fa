"""Dynamic MIG publishing: counter sets and every (profile, placement), checked against the fake.

The allocator check models the upstream scheduler's rule for KEP-4815 devices
(a set of devices fits when, for every counter, what they consume adds up to
at most the counter set's value) and holds it against the fake NVML's own
rules for every combination of MIG devices on one GPU: every set the counters
admit is one the fake creates, and every maximal one leaves no device the fake
would still create.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml import migops, open_backend
from dra_driver.nvml.errors import NvmlInsufficientResourcesError
from dra_driver.slices.builder import build_pool, build_slices
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


# -- the scheduler's own allocator ----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[3]
ALLOCATOR_BUILD = ROOT / "hack" / "allocator" / "build"
DEVICE_CLASSES = ROOT / "deploy" / "deviceclasses.yaml"


def _allocator() -> str:
    """hack/allocator (k8s.io/dynamic-resource-allocation/structured), built by .ci/run.

    Like helm for the chart tests: where Go or the module proxy cannot be had it
    is not built, and the test skips saying so.
    """
    res = subprocess.run(
        [str(ALLOCATOR_BUILD), "--cached-only"], capture_output=True, text=True, timeout=60
    )
    if res.returncode != 0:
        pytest.skip(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "not built")
    return res.stdout.strip()


def _claim(uid: int, parent: str, counts: dict[str, int]) -> dict[str, Any]:
    requests = [
        {
            "name": f"r{i}",
            "exactly": {
                "deviceClassName": "mig.nvidia.com",
                "count": n,
                "allocationMode": "ExactCount",
                "selectors": [
                    {
                        "cel": {
                            "expression": f"device.attributes['gpu.nvidia.com'].profile == "
                            f"'{profile}' && device.attributes['gpu.nvidia.com'].parentUUID"
                            f" == '{parent}'"
                        }
                    }
                ],
            },
        }
        for i, (profile, n) in enumerate(sorted(counts.items()))
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": f"c{uid}", "namespace": "default", "uid": f"uid-{uid}"},
        "spec": {"devices": {"requests": requests}},
    }


def _profile_multisets(memory: dict[str, int], budget: int) -> Iterator[dict[str, int]]:
    """Every multiset of profiles whose memory slices add up to at most budget."""
    names = sorted(memory)

    def walk(i: int, left: int, chosen: dict[str, int]) -> Iterator[dict[str, int]]:
        if chosen:
            yield dict(chosen)
        for j in range(i, len(names)):
            if memory[names[j]] <= left:
                chosen[names[j]] = chosen.get(names[j], 0) + 1
                yield from walk(j, left - memory[names[j]], chosen)
                chosen[names[j]] -= 1
                if not chosen[names[j]]:
                    del chosen[names[j]]

    yield from walk(0, budget, {})


def test_the_schedulers_allocator_hands_out_only_what_the_fake_creates(
    node: fakenvml.FakeNode,
) -> None:
    """kube-scheduler's allocator, over our slices, for every profile mix on one A100.

    Every mix whose memory fits the GPU plus one slice more: the allocator must
    find devices exactly when some placement of the mix exists under the fake's
    rules, and the fake library must then create the very devices it chose.
    """
    binary = _allocator()
    inventory = _inventory()
    pool = build_pool(inventory, dynamic_mig=True)
    slices, problems = build_slices(
        inventory, driver="gpu.nvidia.com", node_name="node-a", dynamic_mig=True
    )
    assert not problems
    for i, s in enumerate(slices):
        s["metadata"] = {"name": f"s{i}"}
    devices = _devices(pool)
    _, consumption = _gpu_model(pool, "gpu-0")
    allowed, _ = _fake_rules(node.spec, 0)
    parent = node.spec.gpu(0).uuid
    profile_of = {n: devices[n]["attributes"]["profile"]["string"] for n in consumption}
    memory = {
        profile_of[n]: sum(1 for k in c if k.startswith("memory-slice"))
        for n, c in consumption.items()
    }
    total = max(memory.values())  # the 7g profile takes every memory slice
    by_profile: dict[str, list[str]] = {}
    for n in sorted(consumption):
        by_profile.setdefault(profile_of[n], []).append(n)

    def placeable(counts: dict[str, int]) -> bool:
        wanted = [p for p, k in sorted(counts.items()) for _ in range(k)]

        def fill(i: int, chosen: tuple[str, ...]) -> bool:
            if i == len(wanted):
                return True
            return any(
                fill(i + 1, (*chosen, n))
                for n in by_profile[wanted[i]]
                if n not in chosen and allowed((*chosen, n))
            )

        return fill(0, ())

    mixes = list(_profile_multisets(memory, total + 1))
    classes = [d for d in yaml.safe_load_all(DEVICE_CLASSES.read_text()) if d]
    request = {
        "node": "node-a",
        "classes": classes,
        "slices": slices,
        "cases": [[_claim(i, parent, m)] for i, m in enumerate(mixes)],
    }
    res = subprocess.run(
        [binary], input=json.dumps(request), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    answers = json.loads(res.stdout)
    assert len(answers) == len(mixes)
    manager = migops.CffiMigManager(fakenvml.library_path())
    allocated = refused = 0
    try:
        for mix, answer in zip(mixes, answers, strict=True):
            assert not (isinstance(answer, dict) and "error" in answer), (mix, answer)
            if answer is None:
                assert not placeable(mix), f"{mix} fits the GPU; the allocator found nothing"
                refused += 1
                continue
            chosen = [r["device"] for r in answer[0]["devices"]["results"]]
            assert sorted(profile_of[n] for n in chosen) == sorted(
                p for p, k in mix.items() for _ in range(k)
            ), (mix, chosen)
            made = []
            for n in chosen:
                try:
                    made.append(manager.create(parent, *_placement(n)))
                except NvmlInsufficientResourcesError:
                    pytest.fail(f"{mix}: the allocator chose {chosen}; the fake cannot make {n}")
            for m in made:
                assert manager.destroy(parent, m.gpu_instance_id, m.compute_instance_id)
            allocated += 1
    finally:
        manager.close()
    assert allocated > 100 and refused > 10, (allocated, refused)
