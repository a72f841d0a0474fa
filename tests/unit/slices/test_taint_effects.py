"""Taint effects by class: NoSchedule by default, NoExecute by opt-in, None for Degraded on 1.35+.

Pure policy first, then the flag's parsing, then the publisher against the API
double claiming different versions (/version is asked once; a 1.34 server would
refuse effect None, so it is never sent there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dra_driver.health.board import DeviceHealth, Health
from dra_driver.inventory import build_inventory
from dra_driver.k8s import load_api_client, parse_server_version
from dra_driver.settings import evict_list
from dra_driver.slices.options import PublisherConfig, TaintPolicy
from dra_driver.slices.publisher import SlicePublisher
from dra_driver.slices.taints import apply_taint_policy, evicts, health_taints
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.records import gpu_record, snapshot

D = "gpu.nvidia.com"
NODE = "node-a"


def sick(device: str, reason: str, recovery: str = "") -> DeviceHealth:
    return DeviceHealth(device, Health.UNHEALTHY, "", reason, recovery=recovery)


def effects(
    health: list[DeviceHealth], policy: TaintPolicy, version: tuple[int, int] | None = (1, 36)
) -> dict[str, list[tuple[str, str, str]]]:
    out = apply_taint_policy(health_taints(health, D), health, D, policy, version)
    return {
        dev: [(t["key"], t.get("value", ""), t["effect"]) for t in ts] for dev, ts in out.items()
    }


def test_default_is_no_schedule_and_degraded_is_informational_on_136() -> None:
    health = [
        sick("gpu-0", "xid-79"),
        DeviceHealth("gpu-1", Health.DEGRADED, "slow", "hw-slowdown"),
        DeviceHealth("gpu-2", Health.HEALTHY),
    ]
    assert effects(health, TaintPolicy()) == {
        "gpu-0": [(f"{D}/xid", "79", "NoSchedule")],
        "gpu-1": [(f"{D}/degraded", "hw-slowdown", "None")],
    }


@pytest.mark.parametrize("version", [(1, 34), None])
def test_degraded_gets_no_taint_before_135_or_when_unknown(
    version: tuple[int, int] | None,
) -> None:
    health = [DeviceHealth("gpu-1", Health.DEGRADED, "slow", "hw-slowdown")]
    assert effects(health, TaintPolicy(), version) == {}
    assert effects(health, TaintPolicy(), (1, 35)) != {}
    assert effects(health, TaintPolicy(informational_degraded=False), (1, 37)) == {}


def test_evict_by_reason() -> None:
    policy = TaintPolicy(evict=frozenset({"gpu-lost", "reset-required", "xid-79"}))
    health = [
        sick("gpu-0", "xid-79"),
        sick("gpu-1", "xid-48"),
        sick("gpu-2", "gpu-lost"),
        sick("gpu-3", "reset-required"),
        sick("gpu-4", "ecc-dbe"),
    ]
    assert effects(health, policy) == {
        "gpu-0": [(f"{D}/xid", "79", "NoExecute")],
        "gpu-1": [(f"{D}/xid", "48", "NoSchedule")],
        "gpu-2": [(f"{D}/gpu-lost", "", "NoExecute")],
        "gpu-3": [(f"{D}/unhealthy", "reset-required", "NoExecute")],
        "gpu-4": [(f"{D}/unhealthy", "ecc-dbe", "NoSchedule")],
    }


def test_evict_by_recovery_class() -> None:
    policy = TaintPolicy(evict=frozenset({"node-reboot"}))
    assert evicts(policy, sick("gpu-0", "xid-79", recovery="node-reboot"))
    assert not evicts(policy, sick("gpu-0", "xid-48", recovery="gpu-reset"))
    assert evicts(policy, sick("gpu-0", "recovery-action-node-reboot"))
    assert not evicts(policy, sick("gpu-0", "recovery-action-gpu-reset"))


def test_all_evicts_every_unhealthy_device_and_unknown_never() -> None:
    policy = TaintPolicy(evict=frozenset({"all"}))
    assert evicts(policy, sick("gpu-0", "thermal"))
    assert not evicts(policy, DeviceHealth("gpu-0", Health.UNKNOWN, "hung", "nvml-timeout"))
    assert not evicts(policy, DeviceHealth("gpu-0", Health.DEGRADED, "slow", "hw-slowdown"))
    assert not evicts(TaintPolicy(), sick("gpu-0", "gpu-lost"))


def test_only_the_health_taint_becomes_no_execute() -> None:
    taints = {
        "gpu-0": [
            {"key": f"{D}/xid", "value": "79", "effect": "NoSchedule"},
            {"key": f"{D}/recovery", "value": "node-reboot", "effect": "NoSchedule"},
        ]
    }
    out = apply_taint_policy(
        taints, [sick("gpu-0", "xid-79")], D, TaintPolicy(evict=frozenset({"xid-79"})), (1, 36)
    )
    assert [t["effect"] for t in out["gpu-0"]] == ["NoExecute", "NoSchedule"]
    assert taints["gpu-0"][0]["effect"] == "NoSchedule"  # the input is left alone


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        ({"major": "1", "minor": "36"}, (1, 36)),
        ({"major": "1", "minor": "35+"}, (1, 35)),
        ({"major": "", "minor": "", "gitVersion": "v1.34.2-gke.100"}, (1, 34)),
        ({}, None),
        ({"major": "one", "minor": "x", "gitVersion": "dev"}, None),
    ],
)
def test_parse_server_version(doc: dict[str, str], want: tuple[int, int] | None) -> None:
    assert parse_server_version(doc) == want


def test_evict_list_flag() -> None:
    assert evict_list("xid-79, gpu-lost,Reset-Required") == ("gpu-lost", "reset-required", "xid-79")
    assert evict_list("node-reboot,recovery-action-gpu-reset") == (
        "node-reboot",
        "recovery-action-gpu-reset",
    )
    assert evict_list("none") == ()
    assert evict_list("") == ()
    for bad in ("xid79", "reboot", "xid-", "recovery-action-nap"):
        with pytest.raises(argparse.ArgumentTypeError, match="neither a reason"):
            evict_list(bad)


# --- the publisher asks /version once and publishes what that server accepts ------------


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        s.create_node(NODE)
        yield s


@contextlib.asynccontextmanager
async def publishing(
    server: ApiServerDouble, tmp_path: Path, policy: TaintPolicy
) -> AsyncIterator[SlicePublisher]:
    api = load_api_client(str(server.kubeconfig_path(tmp_path)))
    config = PublisherConfig(D, NODE, debounce=0.02, backoff_initial=0.05, taint_policy=policy)
    pub = SlicePublisher(config, api)
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        api.close()


def stored_taints(server: ApiServerDouble) -> dict[str, list[tuple[str, str]]]:
    return {
        d["name"]: [(t["key"], t["effect"]) for t in d["taints"]]
        for s in server.slices(driver=D, node=NODE)
        for d in s["spec"]["devices"]
        if d.get("taints")
    }


def _health() -> list[DeviceHealth]:
    return [
        sick("gpu-0", "xid-79"),
        DeviceHealth("gpu-1", Health.DEGRADED, "slow", "hw-slowdown"),
    ]


@pytest.mark.parametrize(
    ("minor", "want"),
    [
        (36, {"gpu-0": [(f"{D}/xid", "NoExecute")], "gpu-1": [(f"{D}/degraded", "None")]}),
        (34, {"gpu-0": [(f"{D}/xid", "NoExecute")]}),
    ],
)
async def test_publisher_follows_the_server_version(
    server: ApiServerDouble, tmp_path: Path, minor: int, want: dict[str, Any]
) -> None:
    server.set_version(minor)
    inv = build_inventory(snapshot(gpu_record(0), gpu_record(1)))
    async with publishing(server, tmp_path, TaintPolicy(evict=frozenset({"xid-79"}))) as pub:
        pub.set_desired(inv, _health())
        assert await pub.wait_converged(5.0), pub.stats
        assert pub.server_version == (1, minor)
        assert stored_taints(server) == want
        assert pub.stats.rejected == 0
        pub.set_desired(inv, [DeviceHealth("gpu-0", Health.HEALTHY)])
        assert await pub.wait_converged(5.0)
        assert stored_taints(server) == {}
    assert server.requests.count(method="GET", resource="") == 1  # /version, once
