"""ResourceClaim status.devices: entries (pure), the writer against the API double, the hook.

The writer talks to the in-process API server double through the official
client, exactly as `dra-driver run` does; the double merges server-side apply
by the list-map keys of status.devices and keeps each field manager's entries,
so "other drivers' entries untouched" is checked on the stored object.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dra_driver.claimstatus.api import KubeClaimStatusApi
from dra_driver.claimstatus.entries import (
    HEALTHY,
    READY,
    REASON_NOT_PRESENT,
    condition_reason,
    device_entry,
)
from dra_driver.claimstatus.hook import StatusReportingPreparer
from dra_driver.claimstatus.options import ClaimStatusConfig
from dra_driver.claimstatus.writer import ClaimStatusWriter
from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.inventory import Inventory
from dra_driver.k8s import load_api_client
from dra_driver.prepare.checkpoint import ClaimRecord, ClaimState, DeviceRecord
from dra_driver.prepare.types import ClaimRef, PreparedDevice, PrepareResult, UnprepareResult
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.simhost import claim_object, make_inventory

DRIVER = "gpu.nvidia.com"
NODE = "node-1"
OTHER = "nic.example.com"
MIG = "gpu-0-mig-3g40gb-9-0"
GPU = "gpu-1"


@pytest.fixture(scope="module")
def inv() -> Inventory:
    return make_inventory(2, [0])


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


@pytest.fixture
def kubeconfig(api: ApiServerDouble, tmp_path: Path) -> Path:
    return api.kubeconfig_path(tmp_path)


class Rig:
    def __init__(
        self, api: ApiServerDouble, kubeconfig: Path, inv: Inventory, board: HealthBoard
    ) -> None:
        self.api = api
        self.inv = inv
        self.board = board
        self.client = load_api_client(str(kubeconfig))
        config = ClaimStatusConfig(DRIVER, NODE, debounce=0.02, backoff_initial=0.05)
        self.writer = ClaimStatusWriter(
            config,
            KubeClaimStatusApi(self.client, config.field_manager, timeout=2.0),
            board,
            lambda: inv,
        )
        self.n = 0

    def claim(self, *devices: str, other: bool = True, name: str = "") -> ClaimRef:
        """A claim allocated our devices (and one of another driver's, with its entry)."""
        self.n += 1
        name = name or f"claim-{self.n}"
        results = [{"request": "gpu", "device": d} for d in devices]
        if other:
            results.append({"request": "nic", "device": "nic-0", "driver": OTHER, "pool": "p"})
        obj = claim_object("", name, results, pool=NODE)
        del obj["metadata"]["uid"]
        created = self.api.create("resourceclaims", obj)
        if other:
            self.api.update_status(
                "resourceclaims",
                name,
                {**created["status"], "devices": [other_entry()]},
                namespace="default",
            )
        return ClaimRef("default", created["metadata"]["uid"], name)

    def stored(self, ref: ClaimRef) -> list[dict[str, Any]]:
        obj = self.api.get("resourceclaims", ref.name, "default")
        assert obj is not None
        devices: list[dict[str, Any]] = (obj.get("status") or {}).get("devices") or []
        return devices

    def ours(self, ref: ClaimRef) -> dict[str, dict[str, Any]]:
        return {e["device"]: e for e in self.stored(ref) if e["driver"] == DRIVER}

    async def settle(self, timeout: float = 5.0) -> None:
        assert await self.writer.wait_idle(timeout), "the writer did not settle"


def other_entry() -> dict[str, Any]:
    return {
        "driver": OTHER,
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
        "data": {"mac": "00:11:22:33:44:55"},
    }


def prepared(*names: str) -> tuple[PreparedDevice, ...]:
    return tuple(
        PreparedDevice(("gpu",), NODE, n, (f"k8s.gpu.nvidia.com/claim=x-{n}",)) for n in names
    )


def cond(entry: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in entry["conditions"] if c["type"] == type_]
    assert len(found) == 1, entry
    return found[0]


@pytest.fixture
async def rig(api: ApiServerDouble, kubeconfig: Path, inv: Inventory) -> AsyncIterator[Rig]:
    board = HealthBoard(d.name for d in inv.devices)
    r = Rig(api, kubeconfig, inv, board)
    task = asyncio.create_task(r.writer.run())
    yield r
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    r.client.close()


# --- entries (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "fallback", "want"),
    [
        ("xid-79", "Unhealthy", "Xid79"),
        ("gpu-lost", "Unhealthy", "GpuLost"),
        ("pcie-x8-of-x16", "Degraded", "PcieX8OfX16"),
        ("", "Unknown", "Unknown"),
        ("79", "Unhealthy", "Unhealthy79"),
        ("not checked yet", "Unknown", "NotCheckedYet"),
    ],
)
def test_condition_reasons_are_valid_metav1_reasons(reason: str, fallback: str, want: str) -> None:
    assert condition_reason(reason, fallback) == want


def test_entry_times_move_only_when_a_status_changes(inv: Inventory) -> None:
    key = (DRIVER, NODE, MIG, None)
    dev = inv.device(MIG)
    healthy = DeviceHealth(MIG, Health.HEALTHY)
    first = device_entry(key, dev, "", healthy, None, "2026-12-01T00:00:00Z")
    assert first["data"] == {
        "uuid": dev.uuid if dev else "",
        "type": "mig",
        "profile": "3g.40gb",
        "parentUUID": dev.parent_uuid if dev else "",
    }
    degraded = DeviceHealth(MIG, Health.DEGRADED, "hardware slowdown", "hw-slowdown")
    second = device_entry(key, dev, "", degraded, first, "2026-12-01T00:01:00Z")
    # Degraded is still usable: Healthy stays True (same time), the reason says why.
    assert cond(second, HEALTHY)["status"] == "True"
    assert cond(second, HEALTHY)["reason"] == "HwSlowdown"
    assert cond(second, HEALTHY)["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    lost = DeviceHealth(MIG, Health.UNHEALTHY, "GPU has fallen off the bus", "xid-79")
    third = device_entry(key, dev, "", lost, second, "2026-12-01T00:02:00Z")
    assert cond(third, HEALTHY)["status"] == "False"
    assert cond(third, HEALTHY)["lastTransitionTime"] == "2026-12-01T00:02:00Z"
    assert cond(third, READY)["lastTransitionTime"] == "2026-12-01T00:00:00Z"
    gone = device_entry(key, None, "GPU-x", None, third, "2026-12-01T00:03:00Z")
    assert cond(gone, HEALTHY)["reason"] == REASON_NOT_PRESENT
    assert gone["data"] == {"uuid": "GPU-x"}


# --- the writer against the API double -------------------------------------------------


async def test_apply_update_remove_and_other_drivers_untouched(rig: Rig, inv: Inventory) -> None:
    ref = rig.claim(MIG, GPU)
    rig.writer.prepared(ref, prepared(MIG, GPU))
    await rig.settle()
    ours = rig.ours(ref)
    assert set(ours) == {MIG, GPU}
    gpu = inv.device(GPU)
    assert gpu is not None
    assert ours[GPU]["data"] == {"uuid": gpu.uuid, "type": "gpu"}
    assert ours[MIG]["data"]["profile"] == "3g.40gb"
    for e in ours.values():
        assert cond(e, READY)["status"] == "True"
        assert cond(e, HEALTHY)["status"] == "True"
    assert [e for e in rig.stored(ref) if e["driver"] == OTHER] == [other_entry()]
    ready_since = cond(ours[GPU], READY)["lastTransitionTime"]

    rig.board.update([DeviceHealth(GPU, Health.UNHEALTHY, "GPU has fallen off the bus", "xid-79")])
    await asyncio.sleep(0.05)
    await rig.settle()
    ours = rig.ours(ref)
    assert cond(ours[GPU], HEALTHY) | {"lastTransitionTime": ""} == {
        "type": HEALTHY,
        "status": "False",
        "reason": "Xid79",
        "message": "GPU has fallen off the bus",
        "lastTransitionTime": "",
    }
    assert cond(ours[GPU], READY)["lastTransitionTime"] == ready_since
    assert cond(ours[MIG], HEALTHY)["status"] == "True"
    assert rig.writer.stats.applies == 2

    rig.writer.unprepared(ref)
    await rig.settle()
    assert rig.ours(ref) == {}
    assert rig.stored(ref) == [other_entry()]
    assert rig.writer.stats.removals == 1
    assert rig.writer.claims() == {}


async def test_a_health_flap_costs_one_write_per_debounce(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle()
    writes = rig.api.requests.writes("resourceclaims")
    for i in range(20):
        health = Health.UNHEALTHY if i % 2 == 0 else Health.HEALTHY
        rig.board.update([DeviceHealth(GPU, health, "", "xid-79" if i % 2 == 0 else "")])
    rig.board.update([DeviceHealth(GPU, Health.UNHEALTHY, "", "xid-48")])
    await asyncio.sleep(0.05)
    await rig.settle()
    assert 1 <= rig.api.requests.writes("resourceclaims") - writes <= 2
    assert cond(rig.ours(ref)[GPU], HEALTHY)["reason"] == "Xid48"


async def test_api_failures_are_retried_with_backoff(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    rig.api.faults.fail_next(3, 500, method="PATCH")
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle(10.0)
    assert set(rig.ours(ref)) == {GPU}
    assert rig.writer.stats.errors == 3


async def test_a_gone_claim_is_forgotten_and_a_replaced_one_never_gets_old_entries(
    rig: Rig,
) -> None:
    ref = rig.claim(GPU, other=False, name="reused")
    rig.api.delete("resourceclaims", "reused", "default")
    newer = rig.claim(MIG, other=False, name="reused")
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle()
    assert rig.ours(newer) == {}  # the UID precondition kept the old claim's state out
    assert rig.writer.claims() == {}
    assert rig.writer.stats.gone == 1
    gone = rig.claim(GPU, other=False)
    rig.api.delete("resourceclaims", gone.name, "default")
    rig.writer.prepared(gone, prepared(GPU))
    await rig.settle()
    assert rig.writer.claims() == {}
    assert rig.writer.stats.gone == 2


async def test_a_server_that_drops_the_field_turns_the_writer_off(rig: Rig) -> None:
    rig.api.set_feature_gate("DRAResourceClaimDeviceStatus", False)
    ref = rig.claim(GPU, other=False)
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle()
    assert not rig.writer.enabled
    writes = rig.api.requests.writes("resourceclaims")
    assert writes == 1
    rig.writer.prepared(rig.claim(MIG, other=False), prepared(MIG))
    await rig.settle()
    assert rig.api.requests.writes("resourceclaims") == writes


async def test_a_refused_entry_is_not_retried_until_it_changes(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    # MIG is not allocated in this claim: the server refuses the entry (422).
    rig.writer.prepared(ref, prepared(GPU, MIG))
    await rig.settle()
    assert rig.writer.stats.rejected == 1
    await asyncio.sleep(0.2)
    await rig.settle()
    assert rig.writer.stats.rejected == 1
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle()
    assert set(rig.ours(ref)) == {GPU}


async def test_adopted_claims_cost_no_write_when_unchanged(
    api: ApiServerDouble, kubeconfig: Path, inv: Inventory
) -> None:
    board = HealthBoard(d.name for d in inv.devices)
    first = Rig(api, kubeconfig, inv, board)
    ref = first.claim(GPU)
    task = asyncio.create_task(first.writer.run())
    first.writer.prepared(ref, prepared(GPU))
    await first.settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    first.client.close()

    record = ClaimRecord(
        uid=ref.uid,
        namespace=ref.namespace,
        name=ref.name,
        state=ClaimState.PREPARED,
        devices=(DeviceRecord(("gpu",), NODE, GPU, ("x",), uuid="GPU-x"),),
        instance="i",
        updated=time.time(),
    )
    writes = api.requests.writes("resourceclaims")
    second = Rig(api, kubeconfig, inv, board)
    second.writer.adopt([record])
    task = asyncio.create_task(second.writer.run())
    try:
        await second.settle()
        assert writes >= 1
        assert api.requests.writes("resourceclaims") == writes
        assert second.writer.stats.reads == 1
        board.update([DeviceHealth(GPU, Health.UNHEALTHY, "lost", "gpu-lost")])
        await asyncio.sleep(0.05)
        await second.settle()
        assert cond(second.ours(ref)[GPU], HEALTHY)["reason"] == "GpuLost"
        assert [e for e in second.stored(ref) if e["driver"] == OTHER] == [other_entry()]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        second.client.close()


# --- the hook: a prepare never waits on, nor fails by, the status write -------------------


class _Inner:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        if self.fail:
            return {c.uid: PrepareResult(error="boom") for c in claims}
        return {c.uid: PrepareResult(devices=prepared(GPU)) for c in claims}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        return {c.uid: UnprepareResult() for c in claims}


async def test_prepare_answers_at_once_while_the_api_server_is_down(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    hooked = StatusReportingPreparer(_Inner(), rig.writer)
    rig.api.go_down(seconds=1.0)
    start = time.perf_counter()
    results = await hooked.prepare([ref])
    assert time.perf_counter() - start < 0.05
    assert results[ref.uid].error == ""
    await asyncio.sleep(0.3)
    assert rig.writer.stats.errors >= 1
    await rig.settle(10.0)
    assert set(rig.ours(ref)) == {GPU}
    await hooked.unprepare([ref])
    await rig.settle(10.0)
    assert rig.ours(ref) == {}


async def test_failed_prepares_write_nothing(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    hooked = StatusReportingPreparer(_Inner(fail=True), rig.writer)
    assert (await hooked.prepare([ref]))[ref.uid].error == "boom"
    assert rig.writer.claims() == {}


async def test_forbidden_is_configuration_not_retried_until_the_entries_change(rig: Rig) -> None:
    ref = rig.claim(GPU, other=False)
    rig.api.faults.fail_next(1, 403, method="PATCH")
    rig.writer.prepared(ref, prepared(GPU))
    await rig.settle()
    await asyncio.sleep(0.2)
    await rig.settle()
    assert rig.api.requests.count(method="PATCH", status=403) == 1
    assert rig.ours(ref) == {}
    rig.board.update([DeviceHealth(GPU, Health.UNHEALTHY, "lost", "gpu-lost")])
    await asyncio.sleep(0.05)
    await rig.settle()
    assert cond(rig.ours(ref)[GPU], HEALTHY)["reason"] == "GpuLost"
