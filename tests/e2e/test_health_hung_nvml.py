"""Health against a hanging NVML, end to end: the real `dra-driver run` process
on the fake NVML, a kubelet-side client on its sockets, the API server double.

A hang fault (fake NVML) blocks one GPU's calls the way a GPU off the bus does.
The plugin must then report that GPU Unknown (never Healthy with a fresh
timestamp) within its NVML deadline plus a second, taint it, keep reporting
XIDs of other GPUs, fail a claim step on the hung GPU in time and with a clear
error, and still exit within the shutdown grace on SIGTERM.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import Inventory
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as health_pb
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.fakenvml import FaultInjector, default_fault_log, load_topology
from dra_driver.testing.kubelet import DraClient, register
from dra_driver.testing.simhost import claim_object, populate_host

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(90)

DEADLINE = 1.0
POLL = 0.2
GRACE = 3.0
TEMPERATURE = "nvmlDeviceGetTemperature"
Health = dict[str, tuple[int, str, int]]  # device -> (status, message, last_updated_time)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


class Watch:
    """One NodeWatchResources stream (v1 or v1alpha1), as the kubelet reads it."""

    def __init__(self, stream: AsyncIterator[Any]) -> None:
        self._stream = stream
        self.last: Health = {}

    async def until(self, done: Callable[[Health], bool], timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while not self.last or not done(self.last):
            left = t0 + timeout - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not within {timeout}s: {what}; last {self.last}")
            try:
                msg = await asyncio.wait_for(anext(self._stream), left)
            except TimeoutError:
                continue
            self.last = {
                d.device.device_name: (d.health, d.message, d.last_updated_time)
                for d in msg.devices
            }
        return time.monotonic() - t0


class Node:
    def __init__(self, factory: PluginFactory, api: ApiServerDouble, inv: Inventory) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dra-e2e-hung-", dir="/tmp"))
        host = populate_host(self.root, inv)
        self.api = api
        self.plugin: PluginProcess = factory(
            [
                f"--kubeconfig={api.kubeconfig_path(self.root)}",
                f"--dev-root={host.dev_root}",
                f"--proc-root={host.proc_root}",
                f"--driver-root={host.driver_root}",
                f"--health-poll-interval={POLL}",
                f"--health-nvml-deadline={DEADLINE}",
                "--health-resend-interval=5",
                f"--shutdown-grace={GRACE}",
            ],
            root=self.root,
        )
        topology = load_topology("small")
        self.faults = FaultInjector(topology, default_fault_log(topology.name, self.plugin.env))
        gpu0 = topology.gpu(0)
        wait_until(lambda: len(api.slices(driver=DRIVER_NAME, node=NODE_NAME)) == 1, 10, "slices")
        names = {
            d["attributes"]["uuid"]["string"]: d["name"] for d in self.slice_devices().values()
        }
        self.gpu0 = {names[m.uuid] for m in gpu0.mig_devices}  # GPU 0 is in MIG mode
        self.claims = 0

    def slice_devices(self) -> dict[str, dict[str, Any]]:
        return {
            d["name"]: d
            for s in self.api.slices(driver=DRIVER_NAME, node=NODE_NAME)
            for d in s["spec"]["devices"]
        }

    def taint_keys(self) -> dict[str, set[str]]:
        return {
            n: {t["key"] for t in d.get("taints") or []}
            for n, d in self.slice_devices().items()
            if d.get("taints")
        }

    def time_sliced_claim(self, device: str) -> ClaimRef:
        self.claims += 1
        name = f"ts-{self.claims}-{secrets.token_hex(3)}"
        config = {
            "requests": ["gpu"],
            "parameters": {
                "apiVersion": "resource.nvidia.com/v1beta1",
                "kind": "GpuConfig",
                "sharing": {"strategy": "TimeSlicing"},
            },
        }
        obj = claim_object("", name, ({"request": "gpu", "device": device},), pool=NODE_NAME,
                           configs=(config,))  # fmt: skip
        del obj["metadata"]["uid"]
        created = self.api.create("resourceclaims", obj)
        return ClaimRef("default", created["metadata"]["uid"], name)


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        server.create_node(NODE_NAME)
        yield server


@pytest.fixture
def node(
    plugin_factory: PluginFactory, api: ApiServerDouble, inventory: Inventory
) -> Iterator[Node]:
    n = Node(plugin_factory, api, inventory)
    yield n
    n.faults.release()
    shutil.rmtree(n.root, ignore_errors=True)


@pytest.fixture
async def client(node: Node) -> AsyncIterator[DraClient]:
    async with DraClient(node.plugin.dra_socket) as c:
        yield c


def all_healthy(h: Health) -> bool:
    return bool(h) and all(s == health_pb.HEALTHY for s, _, _ in h.values())


async def test_hung_gpu_is_unknown_in_time_and_xids_elsewhere_still_stream(
    node: Node, client: DraClient
) -> None:
    reg = await register(node.plugin.registration_socket)
    assert reg.health_version == "v1"  # a 1.37 kubelet picks v1
    watch = Watch(client.watch_health("v1"))
    await watch.until(all_healthy, 5, "a healthy start")

    node.faults.hang(gpu=0, fn=TEMPERATURE)
    took = await watch.until(
        lambda h: all(h[d][0] == health_pb.UNKNOWN for d in node.gpu0), 5, "GPU 0 Unknown"
    )
    # The next sample starts within one poll interval, and overruns by the deadline.
    assert took < POLL + DEADLINE + 1.0, took
    some = sorted(node.gpu0)[0]
    assert "NVML has not answered for" in watch.last[some][1]
    assert watch.last["gpu-1"][0] == health_pb.HEALTHY
    wait_until(
        lambda: all(f"{DRIVER_NAME}/unknown" in node.taint_keys().get(d, set()) for d in node.gpu0),
        5,
        "GPU 0's devices tainted Unknown",
    )
    stale = watch.last[some][2]

    t0 = time.monotonic()
    node.faults.xid(1, 79)
    await watch.until(lambda h: h["gpu-1"][0] == health_pb.UNHEALTHY, 2, "XID 79 on GPU 1")
    assert time.monotonic() - t0 < 1.0  # a few ms in practice; slack for a loaded machine
    assert watch.last[some][2] == stale  # GPU 0 is not checked, so its time stands still

    node.faults.release(gpu=0)
    await watch.until(
        lambda h: all(h[d][0] == health_pb.HEALTHY for d in node.gpu0), 3, "GPU 0 answers"
    )
    assert watch.last[some][2] >= stale
    wait_until(
        lambda: not any(f"{DRIVER_NAME}/unknown" in k for k in node.taint_keys().values()),
        5,
        "Unknown taints removed",
    )


async def test_v1_and_v1alpha1_stream_the_same_verdicts(node: Node, client: DraClient) -> None:
    v1 = Watch(client.watch_health("v1"))
    alpha = Watch(client.watch_health("v1alpha1"))
    await v1.until(all_healthy, 5, "v1 healthy")
    await alpha.until(all_healthy, 5, "v1alpha1 healthy")
    node.faults.xid(1, 48)
    for w in (v1, alpha):
        await w.until(lambda h: h["gpu-1"][0] == health_pb.UNHEALTHY, 2, "XID 48")
        assert "needs a GPU reset" in w.last["gpu-1"][1]


async def test_compute_mode_on_a_hung_gpu_fails_the_claim_in_time(
    node: Node, client: DraClient
) -> None:
    node.faults.hang(gpu=1, fn="nvmlDeviceSetComputeMode")
    ref = node.time_sliced_claim("gpu-1")
    t0 = time.monotonic()
    resp = await client.prepare([ref], timeout=30)
    took = time.monotonic() - t0
    error = resp.claims[ref.uid].error
    assert took < DEADLINE + 1.0, took
    assert "compute mode" in error and "NVML has not answered" in error, error
    # A second try fails at once while the first call is still stuck.
    again = node.time_sliced_claim("gpu-1")
    t0 = time.monotonic()
    resp = await client.prepare([again], timeout=30)
    assert time.monotonic() - t0 < DEADLINE
    assert "has not answered for" in resp.claims[again.uid].error
    node.faults.release(gpu=1)


async def test_sigterm_exits_within_the_grace_with_a_call_hung(node: Node) -> None:
    node.faults.hang(gpu=0)  # every call on GPU 0, samples included
    time.sleep(POLL + DEADLINE + 0.5)  # a sample is now stuck inside NVML
    t0 = time.monotonic()
    rc = node.plugin.stop(signal.SIGTERM, timeout=GRACE + 5)
    took = time.monotonic() - t0
    assert took < GRACE + 0.5, (took, node.plugin.log_text()[-2000:])
    assert rc == 0


async def test_a_565_driver_classifies_by_its_recovery_action_and_clears_on_none(
    plugin_factory: PluginFactory, api: ApiServerDouble, tmp_path: Path
) -> None:
    """On a driver with NVML recovery actions, "none" again ends the condition: no hold."""
    import json

    from dra_driver.testing.fakenvml import topology_path

    raw = json.loads(topology_path("small").read_text())
    raw.update(name="small-r565", driver_version="565.57.01")
    topo = tmp_path / "small-r565.json"
    topo.write_text(json.dumps(raw))
    root = Path(tempfile.mkdtemp(prefix="dra-e2e-r565-", dir="/tmp"))
    try:
        plugin = plugin_factory(
            [
                f"--kubeconfig={api.kubeconfig_path(root)}",
                f"--health-poll-interval={POLL}",
                "--health-hold=600",  # a hold would outlast the test: only NVML can clear it
            ],
            topology=str(topo),
            root=root,
        )
        faults = FaultInjector(load_topology(str(topo)), default_fault_log(topo.stem, plugin.env))
        async with DraClient(plugin.dra_socket) as c:
            watch = Watch(c.watch_health("v1"))
            await watch.until(all_healthy, 5, "a healthy start")
            faults.xid(1, 94, action=1)  # the catalogue says "none"; the driver asks for a reset
            await watch.until(
                lambda h: h["gpu-1"][0] == health_pb.UNHEALTHY and "GPU reset" in h["gpu-1"][1],
                3,
                "XID 94 that needs a GPU reset",
            )

            def recovery_taint() -> set[str]:
                return {
                    t.get("value", "")
                    for s in api.slices(driver=DRIVER_NAME, node=NODE_NAME)
                    for d in s["spec"]["devices"]
                    if d["name"] == "gpu-1"
                    for t in d.get("taints") or []
                    if t["key"] == f"{DRIVER_NAME}/recovery"
                }

            wait_until(lambda: recovery_taint() == {"gpu-reset"}, 5, "the recovery taint")
            t0 = time.monotonic()
            faults.recovery_action(1, 0)  # the reset is done
            await watch.until(lambda h: h["gpu-1"][0] == health_pb.HEALTHY, 3, "cleared on none")
            assert time.monotonic() - t0 < 2  # a sample away, not the 600 s hold
            wait_until(lambda: recovery_taint() == set(), 5, "the taint removed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_hung_event_wait_makes_every_device_unknown_and_sigterm_still_ends_it(
    node: Node, client: DraClient
) -> None:
    watch = Watch(client.watch_health("v1"))
    await watch.until(all_healthy, 5, "a healthy start")
    node.faults.hang(fn="nvmlEventSetWait_v2")
    # The wait in flight returns within its 0.5 s timeout; the next one hangs, and
    # the watchdog notices once the wait timeout plus the deadline have passed.
    await watch.until(
        lambda h: all(s == health_pb.UNKNOWN for s, _, _ in h.values()), 5, "every device Unknown"
    )
    assert all("health checks stalled" in m for _, m, _ in watch.last.values())
    t0 = time.monotonic()
    rc = node.plugin.stop(signal.SIGTERM, timeout=GRACE + 5)
    assert time.monotonic() - t0 < GRACE + 0.5 and rc == 0
