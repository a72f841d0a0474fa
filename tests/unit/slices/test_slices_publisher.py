"""SlicePublisher against the API server double, through the official kubernetes client.

The publisher runs in-process on the test's event loop; the double runs on
real HTTP in a background thread and counts every request, so "no writes"
and "exactly one write" are measured at the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from dra_driver import cli
from dra_driver.health.board import DeviceHealth, Health
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.k8s import load_api_client
from dra_driver.nvml.types import GpuRecord, MigProfile, NvmlSnapshot
from dra_driver.slices.builder import build_pool
from dra_driver.slices.options import PublisherConfig
from dra_driver.slices.publisher import SlicePublisher
from dra_driver.slices.taints import health_taints
from dra_driver.testing.apiserver import RESOURCES, ApiServerDouble
from dra_driver.testing.records import GiB, gpu_record, migs, snapshot

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
FAST = {"debounce": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}


def _gpu(index: int, layout: tuple[tuple[int, int], ...] = ()) -> GpuRecord:
    return gpu_record(index, migs(index, layout))


def node_inventory(
    gpus: int = 4, mig_gpus: int = 1, layout: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (2, 2))
) -> Inventory:
    """GPU 0..mig_gpus-1 in MIG mode with layout, the rest whole."""
    records = tuple(_gpu(i, layout if i < mig_gpus else ()) for i in range(gpus))
    return build_inventory(snapshot(*records))


def unhealthy(device: str, reason: str) -> DeviceHealth:
    return DeviceHealth(device, Health.UNHEALTHY, reason=reason)


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        yield s


@pytest.fixture
def api_client(server: ApiServerDouble, tmp_path: Path) -> client.ApiClient:
    return load_api_client(str(server.kubeconfig_path(tmp_path)))


@pytest.fixture
def node(server: ApiServerDouble) -> dict[str, Any]:
    return server.create_node(NODE)


def ours(server: ApiServerDouble) -> list[dict[str, Any]]:
    return sorted(server.slices(driver=DRIVER, node=NODE), key=lambda s: s["metadata"]["name"])


def published_devices(server: ApiServerDouble) -> list[dict[str, Any]]:
    return [d for s in ours(server) for d in s["spec"].get("devices", [])]


def writes(server: ApiServerDouble) -> int:
    return server.requests.writes("resourceslices")


@contextlib.asynccontextmanager
async def running(api: client.ApiClient, **kw: Any) -> AsyncIterator[SlicePublisher]:
    config = kw.pop("config", PublisherConfig(driver_name=DRIVER, node_name=NODE))
    pub = SlicePublisher(dataclasses.replace(config, **{**FAST, **kw}), api)
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def converge(pub: SlicePublisher, timeout: float = 5.0) -> None:
    assert await pub.wait_converged(timeout), f"not converged: {pub.stats}"


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait (on the loop) until predicate() holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def expected_devices(inv: Inventory, health: list[DeviceHealth] | None = None) -> list[str]:
    pool = build_pool(inv, health_taints(health or [], DRIVER))
    return [d["name"] for s in pool.slices for d in s.get("devices", [])]


async def test_publishes_with_owner_and_restart_writes_nothing(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory()
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        assert pub.stats.creates == 1
    stored = ours(server)
    assert len(stored) == 1
    assert stored[0]["metadata"]["name"].startswith("00000-gpu.nvidia.com-node-a-")
    assert stored[0]["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": NODE,
            "uid": node["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert stored[0]["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    assert [d["name"] for d in published_devices(server)] == expected_devices(inv)

    server.requests.reset()
    async with running(api_client) as pub:  # a restart: fresh publisher, same inventory
        pub.set_desired(node_inventory(), [DeviceHealth("gpu-1", Health.HEALTHY)])
        await converge(pub)
        await asyncio.sleep(0.3)
        assert pub.stats.writes == 0
    assert writes(server) == 0
    assert server.requests.count(method="GET", resource="resourceslices") >= 1
    assert ours(server) == stored


async def test_nothing_is_touched_before_the_first_desired_state(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await converge(pub)
    server.requests.reset()
    async with running(api_client):
        await asyncio.sleep(0.3)
    assert writes(server) == 0
    assert len(ours(server)) == 1


async def test_slices_deleted_behind_its_back_are_republished_within_seconds(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory(gpus=12, mig_gpus=12, layout=tuple((i, 1) for i in range(7)))
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        assert len(ours(server)) == 2
        # One slice vanishes: one create, nothing else.
        server.requests.reset()
        victim = ours(server)[1]["metadata"]["name"]
        server.delete("resourceslices", victim)
        took = await until(lambda: len(ours(server)) == 2)
        await converge(pub)
        assert took < 2.0
        assert writes(server) == 1
        assert server.requests.count(method="POST", resource="resourceslices") == 1
        # The kubelet wipes the node's slices when it starts: all come back.
        for s in ours(server):
            server.delete("resourceslices", s["metadata"]["name"])
        took = await until(lambda: len(ours(server)) == 2)
        await converge(pub)
        assert took < 2.0
    assert [d["name"] for d in published_devices(server)] == expected_devices(inv)
    assert {s["spec"]["pool"]["generation"] for s in ours(server)} == {2}


async def test_conflict_is_reread_and_retried(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory()
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        server.faults.fail_next(1, 409, method="PUT", path="resourceslices")
        pub.set_desired(inv, [unhealthy("gpu-2", "xid-79")])
        await converge(pub)
        assert pub.stats.conflicts == 1
        assert pub.stats.relists >= 2
    assert server.requests.count(method="PUT", resource="resourceslices", status=409) == 1
    assert server.requests.count(method="PUT", resource="resourceslices", status=200) == 1
    tainted = [d for d in published_devices(server) if d.get("taints")]
    assert [(d["name"], d["taints"][0]["value"]) for d in tainted] == [("gpu-2", "79")]


async def test_a_concurrent_edit_by_someone_else_converges(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    """Someone else edits the slice while our write is in flight (usually a real 409)."""
    inv = node_inventory()
    async with running(api_client, debounce=0.3) as pub:
        pub.set_desired(inv)
        await converge(pub)
        name = ours(server)[0]["metadata"]["name"]
        pub.set_desired(inv, [unhealthy("gpu-3", "gpu-lost")])
        server.faults.set_latency(0.2)  # our PUT is slow to arrive...
        await asyncio.sleep(0.35)  # ...the debounce is over and the PUT is on its way
        edited = server.get("resourceslices", name)
        assert edited is not None
        edited["spec"]["devices"] = edited["spec"]["devices"][:1]
        server.store.update(RESOURCES["resourceslices"], "", name, edited)
        server.faults.set_latency(0.0)
        await until(lambda: pub.converged, 5.0)
    final = published_devices(server)
    assert [d["name"] for d in final] == expected_devices(inv)
    assert [d["name"] for d in final if d.get("taints")] == ["gpu-3"]


async def test_api_server_down_for_a_while_then_back(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory()
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        server.go_down(3.0)
        changed = node_inventory(gpus=3)
        pub.set_desired(changed)
        loop_lag = await _max_loop_lag(3.5)
        await until(lambda: not server.is_down, 5.0)
        took = await until(lambda: pub.converged, 5.0)
        assert took < 1.5  # backoff_max is 0.5 s
        assert pub.stats.errors >= 2
    assert loop_lag < 0.1  # the event loop (and the gRPC servers on it) never waited
    assert [d["name"] for d in published_devices(server)] == expected_devices(changed)


async def test_starts_while_the_api_server_is_down(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    server.go_down(1.0)
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await converge(pub, 5.0)
        assert pub.stats.errors >= 1
    assert len(ours(server)) == 1


@pytest.mark.slow
async def test_thirty_second_outage_converges_within_the_backoff_cap(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    async with running(api_client, backoff_initial=0.2, backoff_max=2.0) as pub:
        pub.set_desired(node_inventory())
        await converge(pub)
        server.go_down(30.0)
        changed = node_inventory(gpus=2)
        pub.set_desired(changed, [unhealthy("gpu-1", "xid-48")])
        await until(lambda: not server.is_down, 35.0)
        took = await until(lambda: pub.converged, 5.0)
        assert took < 2.5
    assert [d["name"] for d in published_devices(server)] == expected_devices(changed)
    assert [d["name"] for d in published_devices(server) if d.get("taints")] == ["gpu-1"]


async def test_retry_after_and_server_errors_are_retried(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    server.faults.fail_next(1, 429, method="POST", retry_after=0.2)
    server.faults.fail_next(1, 503, method="POST", retry_after=0.1)
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await converge(pub)
        assert pub.stats.errors == 2
    assert server.requests.count(method="POST", resource="resourceslices") == 3
    assert len(ours(server)) == 1


async def test_gpu_lost_and_mig_relayout_cost_exactly_the_writes_needed(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    seven = tuple((i, 1) for i in range(7))
    inv = node_inventory(gpus=12, mig_gpus=12, layout=seven)  # 84 devices -> 63 + 21
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        names_before = [s["metadata"]["name"] for s in ours(server)]

        # GPU 10 falls off the bus: taint its devices -> one PUT of the second slice.
        server.requests.reset()
        lost = [unhealthy(d.name, "gpu-lost") for d in inv.devices if d.minor == 10]
        pub.set_desired(inv, lost)
        await converge(pub)
        assert (writes(server), server.requests.count(method="PUT")) == (1, 1)
        second = ours(server)[1]["spec"]["devices"]
        assert sum(1 for d in second if d.get("taints")) == 7

        # GPU 2 is re-partitioned (7x1g -> 1g,1g,2g): one PUT of the first slice.
        server.requests.reset()
        records = [_gpu(i, seven) for i in range(12)]
        records[2] = _gpu(2, ((0, 1), (1, 1), (2, 2)))
        relayout = build_inventory(NvmlSnapshot("550.54.15", 12040, tuple(records)))
        pub.set_desired(relayout, lost)
        await converge(pub)
        assert (writes(server), server.requests.count(method="PUT")) == (1, 1)

        # GPU 10 disappears from the inventory: one PUT again.
        server.requests.reset()
        gone = build_inventory(
            NvmlSnapshot("550.54.15", 12040, tuple(r for r in records if r.index != 10))
        )
        pub.set_desired(gone)
        await converge(pub)
        assert writes(server) == 1
    assert [s["metadata"]["name"] for s in ours(server)] == names_before
    assert {s["spec"]["pool"]["generation"] for s in ours(server)} == {1}
    assert [d["name"] for d in published_devices(server)] == expected_devices(gone)


async def test_health_flap_is_coalesced_into_at_most_one_write(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory()
    async with running(api_client, debounce=0.2) as pub:
        pub.set_desired(inv)
        await converge(pub)
        server.requests.reset()
        for i in range(20):  # a flap faster than the window: ends healthy
            pub.set_desired(inv, [unhealthy("gpu-1", "xid-79")] if i % 2 == 0 else [])
            await asyncio.sleep(0.005)
        await converge(pub)
        assert writes(server) == 0
        for i in range(21):  # ends unhealthy
            pub.set_desired(inv, [unhealthy("gpu-1", "xid-79")] if i % 2 == 0 else [])
            await asyncio.sleep(0.005)
        await converge(pub)
        assert writes(server) == 1


async def test_unchanged_taints_keep_their_time_added(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    inv = node_inventory()
    async with running(api_client) as pub:
        pub.set_desired(inv, [unhealthy("gpu-1", "xid-79")])
        await converge(pub)
        first = {d["name"]: d for d in published_devices(server)}["gpu-1"]["taints"][0]
        assert first["timeAdded"]
        await asyncio.sleep(1.1)  # timeAdded has second precision
        pub.set_desired(inv, [unhealthy("gpu-1", "xid-79"), unhealthy("gpu-2", "xid-94")])
        await converge(pub)
    devices = {d["name"]: d for d in published_devices(server)}
    assert devices["gpu-1"]["taints"] == [first]
    assert devices["gpu-2"]["taints"][0]["timeAdded"] != first["timeAdded"]


async def test_server_dropping_taints_causes_no_update_loop(
    server: ApiServerDouble,
    api_client: client.ApiClient,
    node: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.set_feature_gate("DRADeviceTaints", False)
    inv = node_inventory()
    caplog.set_level(logging.WARNING, logger="dra_driver.slices.publisher")
    async with running(api_client) as pub:
        pub.set_desired(inv)
        await converge(pub)
        server.requests.reset()
        pub.set_desired(inv, [unhealthy("gpu-1", "xid-79")])
        await converge(pub)
        assert writes(server) == 1  # sent once, stored without taints
        assert not any(d.get("taints") for d in published_devices(server))
        for _ in range(3):  # further reconciles, e.g. from more health reports
            pub.set_desired(inv, [unhealthy("gpu-1", "xid-79")])
            await converge(pub)
        await asyncio.sleep(0.3)
        assert writes(server) == 1
        # A real change is still written, and accepted the same way.
        pub.set_desired(node_inventory(gpus=3), [unhealthy("gpu-1", "xid-79")])
        await converge(pub)
        await asyncio.sleep(0.3)
        assert writes(server) == 2
    dropped = [r for r in caplog.records if "without spec.devices[].taints" in r.getMessage()]
    assert len(dropped) == 1


async def test_an_invalid_write_is_not_retried_until_the_state_changes(
    server: ApiServerDouble,
    api_client: client.ApiClient,
    node: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.faults.fail_next(1, 422, method="POST", path="resourceslices")
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await until(lambda: pub.stats.rejected == 1)
        await asyncio.sleep(0.5)
        assert server.requests.count(method="POST", resource="resourceslices") == 1
        assert any(
            r.getMessage().startswith("BUG: the API server rejected") for r in caplog.records
        )
        changed = node_inventory(gpus=3)
        pub.set_desired(changed)
        await converge(pub)
    assert [d["name"] for d in published_devices(server)] == expected_devices(changed)


async def test_without_a_node_object_slices_have_no_owner(
    server: ApiServerDouble, api_client: client.ApiClient
) -> None:
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await converge(pub)
    assert "ownerReferences" not in ours(server)[0]["metadata"]


async def test_watch_interruptions_do_not_cause_writes(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    async with running(api_client) as pub:
        pub.set_desired(node_inventory())
        await converge(pub)
        server.requests.reset()
        for mode in ("reset", "end", "expire"):
            server.drop_watches(mode)
            await asyncio.sleep(0.3)
        server.store.compact()
        server.drop_watches("reset")
        await asyncio.sleep(0.5)
        pub.set_desired(node_inventory())
        await converge(pub)
        # Still watching: an external delete is noticed.
        server.delete("resourceslices", ours(server)[0]["metadata"]["name"])
        await until(lambda: len(ours(server)) == 1, 3.0)
    assert writes(server) == 1


async def test_partitionable_devices_publish_counter_slices(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any]
) -> None:
    profiles = (
        MigProfile(19, "1g.10gb", 1, 10 * GiB, 16, 1, 1, 0, 1, 0, tuple((i, 1) for i in range(7))),
        MigProfile(0, "7g.80gb", 8, 80 * GiB, 132, 8, 7, 0, 7, 1, ((0, 8),)),
    )
    records = tuple(dataclasses.replace(_gpu(i), mig_profiles=profiles) for i in range(10))
    inv = build_inventory(NvmlSnapshot("550.54.15", 12040, records))
    config = PublisherConfig(driver_name=DRIVER, node_name=NODE, partitionable_devices=True)
    async with running(api_client, config=config) as pub:
        pub.set_desired(inv)
        await converge(pub)
    stored = ours(server)
    # Only the full GPUs: no MIG device exists yet, and prepare serves only existing ones.
    assert [len(s["spec"].get("sharedCounters", [])) for s in stored] == [8, 2, 0]
    assert [len(s["spec"].get("devices", [])) for s in stored] == [0, 0, 10]
    assert len(published_devices(server)) == 10
    assert all(d["consumesCounters"] for d in published_devices(server))


async def test_cleanup_deletes_only_this_nodes_slices(
    server: ApiServerDouble, api_client: client.ApiClient, node: dict[str, Any], tmp_path: Path
) -> None:
    other = PublisherConfig(driver_name=DRIVER, node_name="node-b")
    async with running(api_client) as a, running(api_client, config=other) as b:
        a.set_desired(node_inventory())
        b.set_desired(node_inventory())
        await converge(a)
        await converge(b)
    kubeconfig = str(server.kubeconfig_path(tmp_path))
    argv = ["cleanup", "--kubeconfig", kubeconfig, "--node-name", NODE]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert ours(server) == []
    assert len(server.slices(driver=DRIVER, node="node-b")) == 1
    assert server.requests.count(method="DELETE", verb="deletecollection") == 1
    assert await asyncio.to_thread(cli.main, argv) == 0  # nothing left: fine


async def _max_loop_lag(seconds: float) -> float:
    """The longest the event loop was blocked over a period (10 ms ticks)."""
    worst = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(0.01)
        worst = max(worst, time.monotonic() - t - 0.01)
    return worst
