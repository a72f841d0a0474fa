"""Taint effects end to end: the real `dra-driver run` on the fake NVML, the API double's slices.

- without an opt-in an XID 79 taints NoSchedule; with --health-evict=xid-79 NoExecute,
  which is what makes kube-controller-manager evict the pods using the device;
- a Degraded GPU (hardware slowdown) carries an effect-None taint on a 1.36 server,
  none on a 1.34 one (which would refuse the effect), and nothing is rejected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.fakenvml import (
    THROTTLE_REASONS,
    FaultInjector,
    default_fault_log,
    load_topology,
)

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        s.create_node(NODE_NAME)
        yield s


def taints(server: ApiServerDouble) -> dict[str, list[tuple[str, str, str]]]:
    return {
        d["name"]: [(t["key"], t.get("value", ""), t["effect"]) for t in d["taints"]]
        for s in server.slices(driver=DRIVER_NAME, node=NODE_NAME)
        for d in s["spec"]["devices"]
        if d.get("taints")
    }


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def start(
    factory: PluginFactory, server: ApiServerDouble, tmp_path: Path, *args: str
) -> tuple[PluginProcess, FaultInjector]:
    plugin = factory(
        [
            f"--kubeconfig={server.kubeconfig_path(tmp_path)}",
            "--health-poll-interval=0.1",
            "--health-hold=60",
            *args,
        ],
        topology="small",
    )
    topology = load_topology("small")
    wait_until(lambda: len(server.slices(driver=DRIVER_NAME, node=NODE_NAME)) == 1, 10, "slices")
    # Devices start Unknown (tainted) until their first check answers.
    wait_until(lambda: taints(server) == {}, 10, "every device checked")
    return plugin, FaultInjector(topology, default_fault_log(topology.name, plugin.env))


@pytest.mark.parametrize(
    ("args", "effect"),
    [
        ((), "NoSchedule"),
        (("--health-evict=xid-79,gpu-lost",), "NoExecute"),
        (("--health-evict=node-reboot",), "NoExecute"),  # XID 79's recovery class
        (("--health-evict=gpu-reset",), "NoSchedule"),
    ],
)
def test_xid_79_effect_follows_the_opt_in(
    plugin_factory: PluginFactory,
    server: ApiServerDouble,
    tmp_path: Path,
    args: tuple[str, ...],
    effect: str,
) -> None:
    _, faults = start(plugin_factory, server, tmp_path, *args)
    faults.xid(1, 79)
    took = wait_until(
        lambda: (f"{DRIVER_NAME}/xid", "79", effect) in taints(server).get("gpu-1", []),
        10,
        f"gpu-1 tainted xid=79:{effect}",
    )
    # What the fault needs rides along, NoSchedule: only the health taint evicts.
    assert taints(server)["gpu-1"] == [
        (f"{DRIVER_NAME}/xid", "79", effect),
        (f"{DRIVER_NAME}/recovery", "node-reboot", "NoSchedule"),
    ]
    print(f"XID 79 -> {effect} taint in the slice: {took:.2f}s")


@pytest.mark.parametrize(("minor", "informational"), [(36, True), (34, False)])
def test_degraded_is_informational_only_where_the_server_knows_none(
    plugin_factory: PluginFactory,
    server: ApiServerDouble,
    tmp_path: Path,
    minor: int,
    informational: bool,
) -> None:
    server.set_version(minor)
    plugin, faults = start(plugin_factory, server, tmp_path)
    faults.throttle(1, THROTTLE_REASONS["hw_slowdown"])
    if informational:
        wait_until(lambda: "gpu-1" in taints(server), 5, "gpu-1 degraded taint")
        assert taints(server)["gpu-1"] == [(f"{DRIVER_NAME}/degraded", "hw-slowdown", "None")]
    else:
        time.sleep(1.0)
        assert taints(server) == {}
    faults.recover(1)
    wait_until(lambda: taints(server) == {}, 5, "taint gone after recovery")
    assert server.requests.count(method="POST", status=422) == 0
    assert server.requests.count(method="PUT", status=422) == 0
    assert plugin.alive()
