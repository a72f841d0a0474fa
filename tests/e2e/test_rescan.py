"""Re-enumeration without restart, end to end: the real `dra-driver run`, the fake NVML.

- an operator destroys and re-creates a MIG device (fault log mig_destroy /
  mig_create): the slice follows with one write each, and an XID on the new
  device's (GI, CI) reaches that device only (the monitor's map followed);
- a GPU lost at start is published and monitored (by polling: its NVML events were
  not registered at start) once it answers;
- a MIG device destroyed under a prepared claim stays on the health stream as
  Unhealthy "device no longer present" (and in the claim's status), until the
  claim is unprepared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import Inventory
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as health_pb
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.fakenvml import FaultInjector, load_topology
from dra_driver.testing.kubelet import DraClient, register
from dra_driver.testing.simhost import claim_object, populate_host

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(90)

TOPOLOGY = load_topology("small")
FAST = ["--rescan-interval=0.2", "--health-poll-interval=0.1", "--health-hold=60"]


def faults_of(root: Path) -> FaultInjector:
    """The fault log the plugin under root reads (PluginProcess puts it there)."""
    return FaultInjector(TOPOLOGY, root / "fakenvml" / f"{TOPOLOGY.name}.faults.jsonl")


def published(api: ApiServerDouble) -> dict[str, dict[str, Any]]:
    return {
        d["name"]: d
        for s in api.slices(driver=DRIVER_NAME, node=NODE_NAME)
        for d in s["spec"]["devices"]
    }


def uuid_of(device: dict[str, Any]) -> str:
    return str(device["attributes"]["uuid"]["string"])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def slice_writes(api: ApiServerDouble) -> int:
    return api.requests.writes("resourceslices")


def start(factory: PluginFactory, api: ApiServerDouble, root: Path, *args: str) -> PluginProcess:
    plugin = factory([f"--kubeconfig={api.kubeconfig_path(root)}", *FAST, *args], root=root)
    wait_until(lambda: len(api.slices(driver=DRIVER_NAME, node=NODE_NAME)) == 1, 10, "slices")
    return plugin


@pytest.fixture
async def streams() -> AsyncIterator[list[DraClient]]:
    clients: list[DraClient] = []
    yield clients
    for c in clients:
        await c.close()


async def latest(
    stream: AsyncIterator[health_pb.NodeWatchResourcesResponse],
    done: Callable[[dict[str, tuple[int, str]]], bool],
    timeout: float,
    what: str,
) -> dict[str, tuple[int, str]]:
    deadline = time.monotonic() + timeout
    last: dict[str, tuple[int, str]] = {}
    while time.monotonic() < deadline:
        try:
            msg = await asyncio.wait_for(anext(stream), deadline - time.monotonic())
        except TimeoutError:
            break
        last = {d.device.device_name: (d.health, d.message) for d in msg.devices}
        if done(last):
            return last
    raise AssertionError(f"not within {timeout}s: {what}; last list {last}")


async def test_operator_mig_relayout_is_followed(
    plugin_factory: PluginFactory, api: ApiServerDouble, root: Path, streams: list[DraClient]
) -> None:
    start(plugin_factory, api, root)
    faults = faults_of(root)
    wait_until(lambda: not any(d.get("taints") for d in published(api).values()), 10, "checked")
    mig = TOPOLOGY.gpu(0).mig_devices[0]
    name = next(n for n, d in published(api).items() if uuid_of(d) == mig.uuid)
    before = set(published(api))
    writes = slice_writes(api)

    faults.mig_destroy(0, mig.gi_id)
    took = wait_until(lambda: name not in published(api), 5, f"{name} unpublished")
    assert set(published(api)) == before - {name}
    assert slice_writes(api) - writes == 1
    print(f"MIG device destroyed -> slice updated: {took:.2f}s")

    writes = slice_writes(api)
    new_gi, new_uuid = 5, "MIG-0e0e0e0e-1111-4222-8333-444444444444"
    faults.mig_create(0, mig.profile_id, mig.placement_start, gi=new_gi, uuid=new_uuid)
    took = wait_until(
        lambda: name in published(api) and uuid_of(published(api)[name]) == new_uuid,
        5,
        f"{name} published again with its new UUID",
    )
    assert set(published(api)) == before
    print(f"MIG device created -> slice updated: {took:.2f}s")
    wait_until(lambda: not published(api)[name].get("taints"), 5, "the new device checked")
    assert slice_writes(api) - writes <= 2  # the device, and its Unknown-until-checked taint

    # The monitor's (GI, CI) map follows: an XID on the new instance hits that device only.
    # (Raw record: the injector checks GI ids against the topology file, not the live layout.)
    faults._append({"kind": "xid", "gpu": TOPOLOGY.gpu(0).uuid, "xid": 48, "gi": new_gi, "ci": 0})
    wait_until(lambda: bool(published(api)[name].get("taints")), 5, "the new device tainted")
    tainted = {n for n, d in published(api).items() if d.get("taints")}
    assert tainted == {name}
    assert published(api)[name]["taints"][0]["key"] == f"{DRIVER_NAME}/xid"


async def test_a_gpu_lost_at_start_is_published_once_it_answers(
    plugin_factory: PluginFactory, api: ApiServerDouble, root: Path, streams: list[DraClient]
) -> None:
    faults = faults_of(root)
    faults.lost(1)
    plugin = start(plugin_factory, api, root)
    assert "gpu-1" not in published(api)
    client = DraClient(plugin.dra_socket)
    streams.append(client)
    stream = client.watch_health()
    first = await latest(stream, lambda h: len(h) > 0, 5, "a first list")
    assert "gpu-1" not in first

    faults.recover(1)
    took = wait_until(lambda: "gpu-1" in published(api), 5, "gpu-1 published")
    print(f"lost GPU answers again -> published: {took:.2f}s")
    now = await latest(
        stream, lambda h: h.get("gpu-1", (0, ""))[0] == health_pb.HEALTHY, 5, "gpu-1 on stream"
    )
    # Its events were not registered at start: it is checked by polling, and says so.
    assert "appeared after start" in now["gpu-1"][1]
    faults.lost(1)
    wait_until(
        lambda: (
            [t["key"] for t in published(api)["gpu-1"].get("taints") or []][:1]
            == [f"{DRIVER_NAME}/gpu-lost"]
        ),
        5,
        "gpu-1 monitored: lost again, tainted",
    )


def make_claim(api: ApiServerDouble, name: str, device: str) -> ClaimRef:
    obj = claim_object("", name, [{"request": "mig", "device": device}], pool=NODE_NAME)
    del obj["metadata"]["uid"]
    created = api.create("resourceclaims", obj)
    return ClaimRef("default", created["metadata"]["uid"], name)


async def test_a_vanished_device_holding_a_claim_is_reported_not_dropped(
    plugin_factory: PluginFactory,
    api: ApiServerDouble,
    root: Path,
    inventory: Inventory,
    streams: list[DraClient],
) -> None:
    host = populate_host(root, inventory)
    plugin = start(
        plugin_factory,
        api,
        root,
        f"--dev-root={host.dev_root}",
        f"--proc-root={host.proc_root}",
        f"--driver-root={host.driver_root}",
    )
    mig = TOPOLOGY.gpu(0).mig_devices[1]
    name = next(n for n, d in published(api).items() if uuid_of(d) == mig.uuid)
    reg = await register(plugin.registration_socket)
    ref = make_claim(api, "held", name)
    async with DraClient.for_registration(reg) as dra:
        assert (await dra.prepare([ref])).claims[ref.uid].error == ""
        streams.append(client := DraClient(plugin.dra_socket))
        stream = client.watch_health()
        await latest(stream, lambda h: h.get(name, (0, ""))[0] == health_pb.HEALTHY, 5, "healthy")

        faults_of(root).mig_destroy(0, mig.gi_id)
        now = await latest(
            stream,
            lambda h: h.get(name, (0, ""))[0] == health_pb.UNHEALTHY,
            5,
            f"{name} Unhealthy, not dropped",
        )
        assert "no longer present" in now[name][1]
        wait_until(lambda: name not in published(api), 5, f"{name} unpublished")

        def condition() -> dict[str, Any]:
            obj = api.get("resourceclaims", "held", "default") or {}
            for e in (obj.get("status") or {}).get("devices") or []:
                if e["device"] == name:
                    return next(c for c in e["conditions"] if c["type"] == "Healthy")
            return {}

        wait_until(lambda: condition().get("reason") == "DeviceNotPresent", 5, "claim status")
        assert condition()["status"] == "False"

        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
        await latest(stream, lambda h: name not in h, 5, f"{name} gone from the stream")
