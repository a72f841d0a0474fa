"""Device health end to end: the real `dra-driver run` on the fake NVML.

Faults go into the plugin's own fault log (<root>/fakenvml/small.faults.jsonl,
from the hermetic FAKE_NVML_STATE_DIR); the kubelet side watches the
DRAResourceHealth stream over the plugin's socket, and the API server double
shows the ResourceSlice taints. Short --health-poll-interval and
--health-hold keep every scenario within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as health_pb
from dra_driver.testing import ApiServerDouble, DraClient
from dra_driver.testing.fakenvml import (
    THROTTLE_REASONS,
    FaultInjector,
    default_fault_log,
    load_topology,
)

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(60)

HOLD = 1.0
XID_TAINT_KEY = f"{DRIVER_NAME}/xid"

Health = dict[str, tuple[int, str]]  # device -> (health status, message)


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        yield s


@dataclass
class Node:
    plugin: PluginProcess
    server: ApiServerDouble
    faults: FaultInjector
    devices: dict[str, str]  # MIG device uuid -> published name

    def slice_devices(self) -> dict[str, dict[str, Any]]:
        return {
            d["name"]: d
            for s in self.server.slices(driver=DRIVER_NAME, node=NODE_NAME)
            for d in s["spec"]["devices"]
        }

    def taints(self) -> dict[str, list[tuple[str, str, str]]]:
        return {
            name: [(t["key"], t.get("value", ""), t["effect"]) for t in d.get("taints") or []]
            for name, d in self.slice_devices().items()
            if d.get("taints")
        }

    def mig(self, gpu: int, slot: int) -> tuple[str, int, int]:
        """(published name, GI, CI) of a MIG device of the topology."""
        m = self.faults.topology.gpu(gpu).mig_devices[slot]
        return self.devices[m.uuid], m.gi_id, m.ci_id


@pytest.fixture
def node_factory(
    server: ApiServerDouble, plugin_factory: PluginFactory, tmp_path: Path
) -> Callable[..., Node]:
    server.create_node(NODE_NAME)
    kubeconfig = server.kubeconfig_path(tmp_path)

    def make(poll: float = 0.1, hold: float = HOLD) -> Node:
        plugin = plugin_factory(
            [
                f"--kubeconfig={kubeconfig}",
                f"--health-poll-interval={poll}",
                f"--health-hold={hold}",
                "--health-resend-interval=5",
            ],
            topology="small",
        )
        topology = load_topology("small")
        injector = FaultInjector(topology, default_fault_log(topology.name, plugin.env))
        wait_until(lambda: len(server.slices(driver=DRIVER_NAME, node=NODE_NAME)) == 1, 10)
        node = Node(plugin, server, injector, {})
        for name, d in node.slice_devices().items():
            node.devices[d["attributes"]["uuid"]["string"]] = name
        return node

    return make


def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "") -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def as_map(message: health_pb.NodeWatchResourcesResponse) -> Health:
    return {d.device.device_name: (d.health, d.message) for d in message.devices}


class Watch:
    """The kubelet's side of NodeWatchResources: the latest list, and every one seen."""

    def __init__(self, stream: AsyncIterator[health_pb.NodeWatchResourcesResponse]) -> None:
        self._stream = stream
        self.seen: list[Health] = []

    async def until(self, done: Callable[[Health], bool], timeout: float, what: str) -> Health:
        deadline = time.monotonic() + timeout
        while self.seen == [] or not done(self.seen[-1]):
            left = deadline - time.monotonic()
            if left <= 0:
                last = self.seen[-1] if self.seen else {}
                raise AssertionError(f"not within {timeout}s: {what}; last list {last}")
            try:
                self.seen.append(as_map(await asyncio.wait_for(anext(self._stream), left)))
            except TimeoutError:
                continue
        return self.seen[-1]


@pytest.fixture
async def watch_of() -> AsyncIterator[Callable[[Node], Any]]:
    clients: list[DraClient] = []

    async def open_watch(node: Node) -> Watch:
        client = DraClient(node.plugin.dra_socket)
        clients.append(client)
        return Watch(client.watch_health())

    yield open_watch
    for c in clients:
        await c.close()


def healthy(h: Health, devices: list[str] | None = None) -> bool:
    return all(h[d][0] == health_pb.HEALTHY for d in devices or h)


async def test_mig_xid_reaches_the_stream_and_the_slice_then_recovers(
    node_factory: Callable[..., Node], watch_of: Callable[[Node], Any]
) -> None:
    node = node_factory()
    watch: Watch = await watch_of(node)
    first = await watch.until(lambda h: True, 5, "the first list")
    assert healthy(first) and len(first) == 5
    assert node.taints() == {}
    target, gi, ci = node.mig(0, 0)

    t0 = time.monotonic()
    node.faults.xid(0, 48, gi=gi, ci=ci)
    # Within a second (a few ms in practice; the slack is for a loaded machine).
    now = await watch.until(lambda h: h[target][0] == health_pb.UNHEALTHY, 2, "the XID")
    latency = time.monotonic() - t0
    assert "XID 48" in now[target][1] and "xid-48" in now[target][1]
    assert healthy(now, [d for d in now if d != target]), now  # only that device
    assert latency < 2

    wait_until(lambda: target in node.taints(), 5, "the slice taint")
    assert node.taints() == {
        target: [
            (XID_TAINT_KEY, "48", "NoSchedule"),
            ("gpu.nvidia.com/recovery", "gpu-reset", "NoSchedule"),  # XID 48's catalogue class
        ]
    }

    node.faults.recover(0)
    await watch.until(lambda h: healthy(h), HOLD + 5, "recovery after the hold")
    wait_until(lambda: node.taints() == {}, 5, "the taint removed")
    assert node.plugin.alive()


async def test_lost_gpu_hits_its_devices_only_and_comes_back(
    node_factory: Callable[..., Node], watch_of: Callable[[Node], Any]
) -> None:
    node = node_factory()
    watch: Watch = await watch_of(node)
    await watch.until(healthy, 5, "a healthy start")
    gpu0 = [node.mig(0, i)[0] for i in range(len(node.faults.topology.gpu(0).mig_devices))]

    node.faults.lost(0)
    now = await watch.until(
        lambda h: all(h[d][0] == health_pb.UNHEALTHY and "gpu-lost" in h[d][1] for d in gpu0),
        3,
        "GPU 0's MIG devices lost",
    )
    assert now["gpu-1"] == (health_pb.HEALTHY, ""), now
    wait_until(lambda: set(node.taints()) == set(gpu0), 5, "GPU 0's devices tainted")
    # The driver reports XID 79 ("fallen off the bus") before the GPU stops
    # answering, so the first reason, and the taint, is usually the XID.
    lost = {(f"{DRIVER_NAME}/gpu-lost", "", "NoSchedule"), (XID_TAINT_KEY, "79", "NoSchedule")}
    reboot = (f"{DRIVER_NAME}/recovery", "node-reboot", "NoSchedule")  # XID 79: RESTART_BM
    assert all(
        len(node.taints()[d]) == 2 and node.taints()[d][0] in lost and node.taints()[d][1] == reboot
        for d in gpu0
    ), node.taints()

    node.faults.recover(0)
    await watch.until(healthy, HOLD + 5, "GPU 0 back after the hold")
    wait_until(lambda: node.taints() == {}, 5, "the taints removed")
    assert all(h["gpu-1"][0] == health_pb.HEALTHY for h in watch.seen)  # never touched


async def test_degraded_is_a_message_without_a_write_and_a_flap_costs_at_most_two(
    node_factory: Callable[..., Node], watch_of: Callable[[Node], Any]
) -> None:
    node = node_factory(poll=0.02, hold=HOLD)
    server = node.server
    watch: Watch = await watch_of(node)
    await watch.until(healthy, 5, "a healthy start")
    time.sleep(0.5)  # past the first publish and its debounce
    server.requests.reset()

    # A degraded GPU stays schedulable: the stream says why, the slice is unchanged.
    node.faults.throttle(1, THROTTLE_REASONS["hw_slowdown"])
    now = await watch.until(lambda h: "hw-slowdown" in h["gpu-1"][1], 3, "the slowdown")
    assert now["gpu-1"][0] == health_pb.HEALTHY
    node.faults.recover(1)
    await watch.until(lambda h: h["gpu-1"] == (health_pb.HEALTHY, ""), 3, "the slowdown over")
    time.sleep(0.5)
    assert server.requests.writes("resourceslices") == 0

    # Ten alternating remap-failure / recover injections inside about one debounce window.
    for i in range(10):
        if i % 2 == 0:
            node.faults.remap(1, failure=True)
        else:
            node.faults.recover(1)
        time.sleep(0.025)
    flapped = False

    def settled(h: Health) -> bool:
        nonlocal flapped
        flapped = flapped or h["gpu-1"][0] == health_pb.UNHEALTHY
        return flapped and h["gpu-1"] == (health_pb.HEALTHY, "")

    await watch.until(settled, 3, "the flap seen on the stream and settled")
    time.sleep(1.0)  # let any pending reconcile finish
    assert node.taints() == {}
    writes = server.requests.writes("resourceslices")
    assert writes <= 2, server.requests.writes_by_resource()
