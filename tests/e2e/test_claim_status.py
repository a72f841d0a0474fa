"""Claim status.devices end to end: the real `dra-driver run`, the fake NVML, the API double.

A claim prepared over the kubelet's gRPC gets our entries (Ready, Healthy, data)
beside another driver's; an XID 79 on its GPU turns Healthy False within the
debounce; unprepare removes our entries and leaves the other driver's; an API
server that refuses every status write never fails a prepare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import Inventory
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.fakenvml import FaultInjector, default_fault_log, load_topology
from dra_driver.testing.kubelet import DraClient, register
from dra_driver.testing.simhost import claim_object, populate_host

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(60)

OTHER = {
    "driver": "nic.example.com",
    "pool": "p",
    "device": "nic-0",
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Up",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


def start(
    factory: PluginFactory, api: ApiServerDouble, inventory: Inventory, root: Path, *args: str
) -> PluginProcess:
    host = populate_host(root, inventory)
    return factory(
        [
            f"--kubeconfig={api.kubeconfig_path(root)}",
            f"--dev-root={host.dev_root}",
            f"--proc-root={host.proc_root}",
            f"--driver-root={host.driver_root}",
            "--health-poll-interval=0.1",
            "--health-hold=60",
            *args,
        ],
        root=root,
    )


def make_claim(api: ApiServerDouble, name: str, device: str) -> ClaimRef:
    obj = claim_object(
        "",
        name,
        [
            {"request": "gpu", "device": device},
            {"request": "nic", "device": "nic-0", "driver": OTHER["driver"], "pool": "p"},
        ],
        pool=NODE_NAME,
    )
    del obj["metadata"]["uid"]
    created = api.create("resourceclaims", obj)
    api.update_status("resourceclaims", name, {**created["status"], "devices": [OTHER]}, "default")
    return ClaimRef("default", created["metadata"]["uid"], name)


def entries(api: ApiServerDouble, name: str) -> dict[str, dict[str, Any]]:
    obj = api.get("resourceclaims", name, "default") or {}
    return {e["driver"]: e for e in (obj.get("status") or {}).get("devices") or []}


def healthy(entry: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in entry["conditions"] if c["type"] == "Healthy")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


async def test_conditions_follow_prepare_health_and_unprepare(
    plugin_factory: PluginFactory, api: ApiServerDouble, inventory: Inventory, root: Path
) -> None:
    plugin = start(plugin_factory, api, inventory, root)
    reg = await register(plugin.registration_socket)
    ref = make_claim(api, "train", "gpu-1")
    async with DraClient.for_registration(reg) as dra:
        resp = await dra.prepare([ref])
        assert resp.claims[ref.uid].error == ""
        wait_until(lambda: DRIVER_NAME in entries(api, "train"), 5, "our entry written")
        ours = entries(api, "train")[DRIVER_NAME]
        gpu1 = inventory.device("gpu-1")
        assert gpu1 is not None
        assert (ours["pool"], ours["device"], ours["data"]) == (
            NODE_NAME,
            "gpu-1",
            {"uuid": gpu1.uuid, "type": "gpu"},
        )
        assert [c["type"] for c in ours["conditions"]] == ["Ready", "Healthy"]
        wait_until(
            lambda: healthy(entries(api, "train")[DRIVER_NAME])["status"] == "True",
            5,
            "Healthy True once checked",
        )

        topology = load_topology("small")
        FaultInjector(topology, default_fault_log(topology.name, plugin.env)).xid(1, 79)
        took = wait_until(
            lambda: healthy(entries(api, "train")[DRIVER_NAME])["status"] == "False",
            5,
            "Healthy False after XID 79",
        )
        cond = healthy(entries(api, "train")[DRIVER_NAME])
        assert cond["reason"] == "Xid79", cond
        assert "79" in cond["message"]
        print(f"XID 79 -> Healthy=False in the claim's status: {took:.2f}s")
        assert entries(api, "train")[OTHER["driver"]] == OTHER

        resp = await dra.unprepare([ref])
        assert resp.claims[ref.uid].error == ""
        wait_until(lambda: DRIVER_NAME not in entries(api, "train"), 5, "our entry removed")
        assert entries(api, "train") == {OTHER["driver"]: OTHER}


async def test_refused_status_writes_never_fail_a_prepare(
    plugin_factory: PluginFactory, api: ApiServerDouble, inventory: Inventory, root: Path
) -> None:
    plugin = start(plugin_factory, api, inventory, root)
    reg = await register(plugin.registration_socket)
    api.faults.fail_next(1000, 500, method="PATCH", path="/status")
    ref = make_claim(api, "serve", "gpu-1")
    async with DraClient.for_registration(reg) as dra:
        t0 = time.monotonic()
        resp = await dra.prepare([ref])
        assert resp.claims[ref.uid].error == ""
        assert time.monotonic() - t0 < 2.0
        wait_until(
            lambda: api.requests.count(method="PATCH", resource="resourceclaims") >= 2,
            5,
            "status writes retried",
        )
        assert DRIVER_NAME not in entries(api, "serve")
        api.faults.clear()
        wait_until(lambda: DRIVER_NAME in entries(api, "serve"), 40, "written once the API heals")
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""


async def test_the_flag_turns_it_off(
    plugin_factory: PluginFactory, api: ApiServerDouble, inventory: Inventory, root: Path
) -> None:
    plugin = start(plugin_factory, api, inventory, root, "--no-claim-device-status")
    reg = await register(plugin.registration_socket)
    ref = make_claim(api, "off", "gpu-1")
    async with DraClient.for_registration(reg) as dra:
        assert (await dra.prepare([ref])).claims[ref.uid].error == ""
        time.sleep(1.0)
        assert DRIVER_NAME not in entries(api, "off")
        assert api.requests.count(method="PATCH", resource="resourceclaims") == 0
