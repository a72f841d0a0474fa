"""ClaimPreparer: prepare/unprepare semantics, per-claim errors, recovery, concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hardening_node import simulated_host

from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.inventory import Inventory
from dra_driver.nvml.errors import NvmlError
from dra_driver.nvml.types import (
    EventRegistration,
    HealthSample,
    NvmlEvent,
    NvmlSnapshot,
)
from dra_driver.prepare.checkpoint import ClaimRecord, ClaimState, DeviceRecord
from dra_driver.prepare.locks import InstanceRegistry
from dra_driver.prepare.options import PreparerConfig
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.sources import ClaimSourceError
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import MemoryClaimSource
from dra_driver.testing.simhost import (
    SimHost,
    claim_object,
    claim_uid,
    make_snapshot,
)

NODE = "node-1"
API = "resource.nvidia.com/v1beta1"


@dataclass
class FakeNvml:
    """An NvmlBackend whose set_compute_mode records calls (optionally slowly)."""

    snapshot: NvmlSnapshot = field(default_factory=make_snapshot)
    delay_s: float = 0.0
    fail: bool = False
    name: str = "fake"
    calls: list[tuple[str, int, float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inventory(self) -> NvmlSnapshot:
        return self.snapshot

    def health_sample(self) -> list[HealthSample]:
        return []

    def register_events(self, mask: int = 0) -> list[EventRegistration]:
        return []

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        return None

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        if self.fail:
            raise NvmlError(3, "Not Supported")
        start = time.monotonic()
        time.sleep(self.delay_s)
        with self.lock:
            self.calls.append((gpu_uuid, mode, start, time.monotonic()))

    def close(self) -> None:
        return None


@dataclass
class Node:
    host: SimHost
    settings: PreparerConfig
    inv: Inventory
    source: MemoryClaimSource
    nvml: FakeNvml
    board: HealthBoard

    def preparer(self, **kw: Any) -> ClaimPreparer:
        return ClaimPreparer(
            self.settings,
            lambda: self.inv,
            kw.get("source", self.source),
            self.board,
            kw.get("nvml", self.nvml),
        )

    def cdi_files(self) -> list[str]:
        if not self.settings.cdi_root.exists():
            return []
        return sorted(n for n in os.listdir(self.settings.cdi_root) if n.endswith(".json"))

    def spec(self, uid: str) -> dict[str, Any]:
        path = self.settings.cdi_root / f"k8s.gpu.nvidia.com-claim_{uid}.json"
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data


def make_node(tmp_path: Path, gpus: int = 4, mig_gpus: tuple[int, ...] = (3,)) -> Node:
    inv, host, settings = simulated_host(tmp_path, gpus, mig_gpus)
    return Node(
        host,
        settings,
        inv,
        MemoryClaimSource(),
        FakeNvml(make_snapshot(gpus, mig_gpus)),
        HealthBoard(d.name for d in inv.devices),
    )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


@pytest.fixture
async def prep(node: Node) -> AsyncIterator[ClaimPreparer]:
    p = node.preparer()
    await p.start()
    yield p
    await p.close()


def put(node: Node, n: int, *results: dict[str, Any], **kw: Any) -> ClaimRef:
    uid = claim_uid(n)
    node.source.put(claim_object(uid, f"claim-{n}", results, pool=NODE, **kw))
    return ClaimRef("default", uid, f"claim-{n}")


def gpu_config(**sharing: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "GpuConfig", "sharing": sharing}


# --- prepare basics -------------------------------------------------------------------------


async def test_prepare_single_gpu(node: Node, prep: ClaimPreparer) -> None:
    ref = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    result = (await prep.prepare([ref]))[ref.uid]
    assert result.error == ""
    (d,) = result.devices
    assert (d.request_names, d.pool_name, d.device_name) == (("gpu",), NODE, "gpu-0")
    assert d.cdi_device_ids == (f"k8s.gpu.nvidia.com/claim={ref.uid}-gpu-0",)
    assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{ref.uid}.json"]
    rec = prep.checkpointed()[ref.uid]
    assert rec.state is ClaimState.PREPARED and (rec.namespace, rec.name) == ("default", "claim-1")
    assert node.nvml.calls == []  # no config, no NVML side effect


async def test_prepared_claim_is_answered_from_checkpoint(node: Node, prep: ClaimPreparer) -> None:
    ref = put(node, 1, {"request": "gpu/large", "device": "gpu-0"})
    first = await prep.prepare([ref])
    gets = node.source.gets
    node.source.delete("default", "claim-1")  # the API server is not asked again
    again = await prep.prepare([ref, ref])
    assert again == first and node.source.gets == gets
    assert first[ref.uid].devices[0].request_names == ("gpu",)  # base name of gpu/large
    # A second preparer (a restart) answers identically from the checkpoint alone.
    restarted = node.preparer(source=MemoryClaimSource())
    await restarted.start()
    assert await restarted.prepare([ref]) == first
    await restarted.close()


async def test_missing_spec_of_prepared_claim_is_rewritten(node: Node, prep: ClaimPreparer) -> None:
    ref = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    first = await prep.prepare([ref])
    (node.settings.cdi_root / node.cdi_files()[0]).unlink()
    assert await prep.prepare([ref]) == first
    assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{ref.uid}.json"]


async def test_multi_device_and_mig_claim(node: Node, prep: ClaimPreparer) -> None:
    ref = put(
        node,
        1,
        {"request": "gpus", "device": "gpu-0"},
        {"request": "gpus", "device": "gpu-1"},
        {"request": "mig", "device": "gpu-3-mig-3g40gb-9-4"},
        {"request": "nic", "device": "eth0", "driver": "net.example.com", "pool": "x"},
    )
    result = (await prep.prepare([ref]))[ref.uid]
    assert result.error == ""
    assert [(d.device_name, d.request_names) for d in result.devices] == [
        ("gpu-0", ("gpus",)),
        ("gpu-1", ("gpus",)),
        ("gpu-3-mig-3g40gb-9-4", ("mig",)),
    ]
    spec = node.spec(ref.uid)
    assert [d["name"] for d in spec["devices"]] == [
        f"{ref.uid}-{n}" for n in ("gpu-0", "gpu-1", "gpu-3-mig-3g40gb-9-4")
    ]
    mig_nodes = spec["devices"][2]["containerEdits"]["deviceNodes"]
    assert mig_nodes[0]["path"] == "/dev/nvidia3"
    assert all(n["path"].startswith("/dev/nvidia-caps/") for n in mig_nodes[1:])


async def test_claim_without_results_for_us_succeeds_empty(node: Node, prep: ClaimPreparer) -> None:
    ref = put(node, 1, {"request": "nic", "device": "eth0", "driver": "net.example.com"})
    assert (await prep.prepare([ref]))[ref.uid].devices == ()
    assert node.cdi_files() == [] and prep.checkpointed() == {}


# --- per-claim errors -----------------------------------------------------------------------


async def test_each_bad_claim_gets_its_own_error(node: Node, prep: ClaimPreparer) -> None:
    good = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    missing = ClaimRef("default", claim_uid(2), "gone")
    unallocated = put(node, 3, {"request": "gpu", "device": "gpu-1"}, allocated=False)
    replaced = ClaimRef("default", claim_uid(99), "claim-4")
    put(node, 4, {"request": "gpu", "device": "gpu-1"})
    bad_uid = ClaimRef("default", "../../etc", "x")
    unknown = put(node, 5, {"request": "gpu", "device": "gpu-42"})
    other_pool = put(node, 6, {"request": "gpu", "device": "gpu-1", "pool": "node-2"})
    node.board.update([DeviceHealth("gpu-2", Health.UNHEALTHY, "XID 79: fell off the bus")])
    unhealthy = put(node, 7, {"request": "gpu", "device": "gpu-2"})
    refs = [good, missing, unallocated, replaced, bad_uid, unknown, other_pool, unhealthy]
    results = await prep.prepare(refs)
    assert list(results) == [r.uid for r in refs]
    assert results[good.uid].error == "" and results[good.uid].devices
    expect = {
        missing.uid: "ResourceClaim default/gone not found",
        unallocated.uid: "ResourceClaim default/claim-3 is not allocated",
        replaced.uid: f"has UID {claim_uid(4)}, not {claim_uid(99)}: the claim was replaced",
        bad_uid.uid: "is not a lowercase UUID",
        unknown.uid: "device 'gpu-42' is not a device of this node",
        other_pool.uid: "allocated from pool 'node-2', not this node's pool 'node-1'",
        unhealthy.uid: "gpu-2 is unhealthy: XID 79: fell off the bus",
    }
    for uid, needle in expect.items():
        assert needle in results[uid].error, (uid, results[uid].error)
        assert results[uid].devices == ()
    assert set(prep.checkpointed()) == {good.uid}
    assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{good.uid}.json"]


async def test_unhealthy_parent_gpu_blocks_its_mig_device(node: Node, prep: ClaimPreparer) -> None:
    board = HealthBoard([d.name for d in node.inv.devices] + ["gpu-3"])
    board.update([DeviceHealth("gpu-3", Health.UNHEALTHY, reason="gpu-lost")])
    p = ClaimPreparer(node.settings, lambda: node.inv, node.source, board, None)
    ref = put(node, 1, {"request": "mig", "device": "gpu-3-mig-3g40gb-9-0"})
    await p.start()
    err = (await p.prepare([ref]))[ref.uid].error
    await p.close()
    assert "gpu-3-mig-3g40gb-9-0's GPU gpu-3 is unhealthy: gpu-lost" in err


async def test_api_errors_are_per_claim(node: Node) -> None:
    class Broken:
        def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
            raise ClaimSourceError("get ResourceClaim default/x: HTTP 503 Service Unavailable")

    p = node.preparer(source=Broken())
    await p.start()
    ref = ClaimRef("default", claim_uid(1), "x")
    assert "HTTP 503" in (await p.prepare([ref]))[ref.uid].error
    await p.close()


# --- admin access ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_admin", "second_admin", "shared"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
async def test_device_shared_unless_both_ordinary(
    node: Node, prep: ClaimPreparer, first_admin: bool, second_admin: bool, shared: bool
) -> None:
    a = put(node, 1, {"request": "gpu", "device": "gpu-0", "adminAccess": first_admin})
    b = put(node, 2, {"request": "gpu", "device": "gpu-0", "adminAccess": second_admin})
    assert (await prep.prepare([a]))[a.uid].error == ""
    err = (await prep.prepare([b]))[b.uid].error
    if shared:
        assert err == ""
        env = node.spec(b.uid)["devices"][0]["containerEdits"]["env"]
        assert ("NVIDIA_DRA_DEVICE_GPU_0_ADMIN_ACCESS=true" in env) is second_admin
    else:
        assert f"device gpu-0 is already prepared for claim default/claim-1 ({a.uid})" in err
        assert b.uid not in prep.checkpointed()
    # Once the first claim is gone the device is free again.
    await prep.unprepare([a])
    assert (await prep.prepare([b]))[b.uid].error == ""


# --- configuration --------------------------------------------------------------------------


async def test_time_slicing_default_sets_compute_mode(node: Node, prep: ClaimPreparer) -> None:
    ref = put(
        node,
        1,
        {"request": "gpu", "device": "gpu-1"},
        configs=[{"requests": ["gpu"], "parameters": gpu_config(strategy="TimeSlicing")}],
    )
    assert (await prep.prepare([ref]))[ref.uid].error == ""
    gpu1 = node.inv.device("gpu-1")
    assert gpu1 is not None
    assert [(c[0], c[1]) for c in node.nvml.calls] == [(gpu1.uuid, 0)]
    assert prep.checkpointed()[ref.uid].actions == ({"gpuUuid": gpu1.uuid, "computeMode": 0},)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        (
            gpu_config(strategy="MPS", mpsConfig={"defaultActiveThreadPercentage": 20}),
            "MPS sharing needs an MPS control daemon, which this driver does not run yet",
        ),
        (
            gpu_config(strategy="TimeSlicing", timeSlicingConfig={"interval": "Short"}),
            "time-slice interval Short needs `nvidia-smi compute-policy --set-timeslice`",
        ),
        (
            gpu_config(strategy="TimeSlicing", timeSlicingConfig={"interval": "Short", "x": 1}),
            "invalid opaque configuration: config[0].opaque.parameters.sharing"
            ".timeSlicingConfig.x: unknown field",
        ),
        (
            {"apiVersion": API, "kind": "MigDeviceConfig"},
            "cannot apply MigDeviceConfig to request 'gpu', which was allocated a full GPU",
        ),
    ],
)
async def test_config_refusals_are_per_claim(
    node: Node, prep: ClaimPreparer, params: dict[str, Any], needle: str
) -> None:
    ok = put(node, 2, {"request": "gpu", "device": "gpu-2"})
    ref = put(
        node,
        1,
        {"request": "gpu", "device": "gpu-1"},
        configs=[{"requests": ["gpu"], "parameters": params}],
    )
    results = await prep.prepare([ref, ok])
    assert needle in results[ref.uid].error
    assert results[ok.uid].error == ""
    assert node.nvml.calls == [] and set(prep.checkpointed()) == {ok.uid}


async def test_gpu_config_without_requests_skips_mig_devices(
    node: Node, prep: ClaimPreparer
) -> None:
    ref = put(
        node,
        1,
        {"request": "mig", "device": "gpu-3-mig-3g40gb-9-0"},
        {"request": "gpu", "device": "gpu-0"},
        configs=[{"parameters": gpu_config(strategy="TimeSlicing")}],
    )
    assert (await prep.prepare([ref]))[ref.uid].error == ""
    gpu0 = node.inv.device("gpu-0")
    assert gpu0 is not None and [c[0] for c in node.nvml.calls] == [gpu0.uuid]


async def test_nvml_failure_rolls_back(node: Node) -> None:
    node.nvml.fail = True
    p = node.preparer()
    await p.start()
    ref = put(
        node,
        1,
        {"request": "gpu", "device": "gpu-1"},
        configs=[{"parameters": gpu_config(strategy="TimeSlicing")}],
    )
    err = (await p.prepare([ref]))[ref.uid].error
    assert "set compute mode 0 on GPU" in err and "Not Supported" in err
    assert p.checkpointed() == {} and node.cdi_files() == []
    await p.close()


async def test_config_without_nvml_is_refused(node: Node) -> None:
    p = ClaimPreparer(node.settings, lambda: node.inv, node.source, None, None)
    await p.start()
    ref = put(
        node,
        1,
        {"request": "gpu", "device": "gpu-1"},
        configs=[{"parameters": gpu_config(strategy="TimeSlicing")}],
    )
    assert "no NVML backend is available" in (await p.prepare([ref]))[ref.uid].error
    await p.close()


# --- unprepare ------------------------------------------------------------------------------


async def test_unprepare_uses_checkpoint_only(node: Node, prep: ClaimPreparer) -> None:
    ref = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    await prep.prepare([ref])
    node.source.delete("default", "claim-1")
    gets = node.source.gets
    assert (await prep.unprepare([ref]))[ref.uid].error == ""
    assert node.source.gets == gets
    assert prep.checkpointed() == {} and node.cdi_files() == []
    unknown = ClaimRef("default", claim_uid(77), "never")
    weird = ClaimRef("default", "not-a-uid", "x")
    again = await prep.unprepare([ref, unknown, weird])
    assert all(r.error == "" for r in again.values()) and len(again) == 3


# --- start-up recovery ----------------------------------------------------------------------


async def test_start_rolls_back_dead_instances_and_sweeps_orphans(node: Node) -> None:
    first = node.preparer()
    await first.start()
    kept = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    await first.prepare([kept])
    await first.close()

    dead_uid, live_uid, orphan_uid = claim_uid(2), claim_uid(3), claim_uid(4)
    peer = InstanceRegistry(node.settings.state_dir / "instances", "livepeer")
    peer.acquire()  # a live rolling-update peer owns one started claim

    def started(uid: str, device: str, instance: str) -> ClaimRecord:
        return ClaimRecord(
            uid=uid,
            namespace="default",
            name=uid[-4:],
            state=ClaimState.STARTED,
            devices=(
                DeviceRecord(("gpu",), NODE, device, (f"k8s.gpu.nvidia.com/claim={uid}-{device}",)),
            ),
            instance=instance,
        )

    def inject(claims: dict[str, ClaimRecord]) -> tuple[None, bool]:
        claims[dead_uid] = started(dead_uid, "gpu-1", "deadbeef")
        claims[live_uid] = started(live_uid, "gpu-2", "livepeer")
        return None, True

    first.store.update(inject)
    spec = node.spec(kept.uid)
    for uid in (dead_uid, orphan_uid):
        first.cdi.write(uid, {**spec, "devices": [{**spec["devices"][0], "name": f"{uid}-gpu-0"}]})

    second = node.preparer()
    await second.start()
    claims = second.checkpointed()
    assert set(claims) == {kept.uid, live_uid}
    assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{kept.uid}.json"]
    # The live peer's device stays reserved; the dead one's is free.
    blocked = put(node, 5, {"request": "gpu", "device": "gpu-2"})
    free = put(node, 6, {"request": "gpu", "device": "gpu-1"})
    results = await second.prepare([blocked, free])
    assert "gpu-2 is already prepared" in results[blocked.uid].error
    assert results[free.uid].error == ""
    await second.close()
    peer.release()


async def test_corrupt_checkpoint_is_rebuilt_from_cdi_specs(node: Node, caplog: Any) -> None:
    p = node.preparer()
    await p.start()
    a = put(node, 1, {"request": "gpu", "device": "gpu-0", "adminAccess": True})
    b = put(node, 2, {"request": "mig", "device": "gpu-3-mig-3g40gb-9-0"})
    first = await p.prepare([a, b])
    await p.close()
    p.store.path.write_text("{ not json")

    rebuilt = node.preparer()
    await rebuilt.start()
    assert rebuilt.load_report is not None and "not JSON" in rebuilt.load_report.corruption
    assert "CHECKPOINT CORRUPTED" in caplog.text
    claims = rebuilt.checkpointed()
    assert set(claims) == {a.uid, b.uid} and all(c.rebuilt for c in claims.values())
    assert claims[a.uid].devices[0].admin_access
    # Devices stay reserved, and the next prepare (API available) restores the full answer.
    c = put(node, 3, {"request": "mig", "device": "gpu-3-mig-3g40gb-9-0"})
    assert "already prepared" in (await rebuilt.prepare([c]))[c.uid].error
    assert await rebuilt.prepare([a, b]) == first
    assert not any(r.rebuilt for r in rebuilt.checkpointed().values())
    # Unprepare works for rebuilt claims too.
    await rebuilt.unprepare([a, b])
    assert rebuilt.checkpointed() == {} and node.cdi_files() == []
    await rebuilt.close()


async def test_reboot_forgets_prepared_claims(node: Node) -> None:
    p = node.preparer()
    await p.start()
    ref = put(node, 1, {"request": "gpu", "device": "gpu-0"})
    await p.prepare([ref])
    await p.close()
    node.host.set_boot_id("11111111-2222-4333-8444-555555555555")
    after = node.preparer()
    await after.start()
    assert after.load_report is not None and after.load_report.boot_changed
    assert after.checkpointed() == {} and node.cdi_files() == []
    gets = node.source.gets
    assert (await after.prepare([ref]))[ref.uid].error == ""  # prepared anew, from the API
    assert node.source.gets == gets + 1
    await after.close()


# --- concurrency ----------------------------------------------------------------------------


async def test_hundred_concurrent_claims_leave_a_consistent_checkpoint(tmp_path: Path) -> None:
    node = make_node(tmp_path, gpus=100, mig_gpus=())
    p = node.preparer()
    await p.start()
    refs = [put(node, i, {"request": "gpu", "device": f"gpu-{i}"}) for i in range(100)]
    # Each claim in its own call, as pods do, all at once.
    results = await asyncio.gather(*(p.prepare([r]) for r in refs))
    assert all(res[r.uid].error == "" for r, res in zip(refs, results, strict=True))
    assert len(p.checkpointed()) == 100 and len(node.cdi_files()) == 100
    # Half unprepare while the other half re-prepare (idempotently), concurrently.
    mixed = [p.unprepare([r]) for r in refs[:50]] + [p.prepare([r]) for r in refs[50:]]
    await asyncio.gather(*mixed)
    claims = p.checkpointed()
    assert set(claims) == {r.uid for r in refs[50:]}
    assert all(c.state is ClaimState.PREPARED for c in claims.values())
    assert node.cdi_files() == sorted(f"k8s.gpu.nvidia.com-claim_{r.uid}.json" for r in refs[50:])
    await asyncio.gather(*(p.unprepare([r]) for r in refs[50:]))
    assert p.checkpointed() == {} and node.cdi_files() == []
    await p.close()
    # What is on disk is what a fresh process reads.
    fresh = node.preparer()
    await fresh.start()
    assert fresh.checkpointed() == {}
    await fresh.close()


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


async def test_claims_on_different_gpus_run_in_parallel(node: Node) -> None:
    node.nvml.delay_s = 0.2  # the instrumented slow step: setting the compute mode
    p = node.preparer()
    await p.start()
    ts = [{"parameters": gpu_config(strategy="TimeSlicing")}]
    a = put(node, 1, {"request": "gpu", "device": "gpu-0"}, configs=ts)
    b = put(node, 2, {"request": "gpu", "device": "gpu-1"}, configs=ts)
    # Same GPU twice (both admin): the per-GPU lock serialises the NVML step.
    c = put(node, 3, {"request": "gpu", "device": "gpu-2", "adminAccess": True}, configs=ts)
    d = put(node, 4, {"request": "gpu", "device": "gpu-2", "adminAccess": True}, configs=ts)
    started = time.monotonic()
    results = await asyncio.gather(p.prepare([a]), p.prepare([b]), p.prepare([c, d]))
    elapsed = time.monotonic() - started
    assert all(not r.error for res in results for r in res.values())
    spans: dict[str, list[tuple[float, float]]] = {}
    for gpu_uuid, _, t0, t1 in node.nvml.calls:
        spans.setdefault(gpu_uuid, []).append((t0, t1))
    by_name = {g.name: g.uuid for g in node.inv.gpus}
    (span_a,) = spans[by_name["gpu-0"]]
    (span_b,) = spans[by_name["gpu-1"]]
    span_c, span_d = spans[by_name["gpu-2"]]
    assert _overlaps(span_a, span_b), (span_a, span_b)
    assert _overlaps(span_a, span_c) or _overlaps(span_b, span_c)
    assert not _overlaps(span_c, span_d), (span_c, span_d)
    assert elapsed < 0.2 * 4  # serial would take 0.8 s at least
    await p.close()


async def test_same_claim_twice_concurrently_is_prepared_once(
    node: Node, prep: ClaimPreparer
) -> None:
    node.nvml.delay_s = 0.05
    ref = put(
        node,
        1,
        {"request": "gpu", "device": "gpu-0"},
        configs=[{"parameters": gpu_config(strategy="TimeSlicing")}],
    )
    r1, r2 = await asyncio.gather(prep.prepare([ref]), prep.prepare([ref]))
    assert r1 == r2 and r1[ref.uid].error == ""
    assert len(node.nvml.calls) == 1
