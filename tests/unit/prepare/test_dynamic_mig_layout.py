"""MigLayout on the fake: create and destroy, what it counts, who follows (health, metrics)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dra_driver.health.board import Health, HealthBoard
from dra_driver.health.monitor import HealthMonitor
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.metrics import Metrics
from dra_driver.nvml import open_backend
from dra_driver.nvml.errors import NvmlInsufficientResourcesError
from dra_driver.nvml.migops import CffiMigManager
from dra_driver.nvml.types import NvmlBackend
from dra_driver.prepare.checkpoint import ClaimRecord, ClaimState, DeviceRecord
from dra_driver.prepare.dynamic import (
    CREATED_KEY,
    INTENT_KEY,
    MigLayout,
    created_uuids,
    intended_placements,
    needs_create,
    with_created,
    with_intent,
    without_created,
)
from dra_driver.prepare.locks import KeyedLocks
from dra_driver.testing import fakenvml


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fakenvml.FakeNode:
    fake = fakenvml.FakeNode("a100-dynamic", tmp_path / "a100-dynamic.faults.jsonl")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture
def backend(node: fakenvml.FakeNode) -> Iterator[NvmlBackend]:
    b = open_backend(fakenvml.library_path(), "cffi")
    yield b
    b.close()


@pytest.fixture
def manager(node: fakenvml.FakeNode) -> Iterator[CffiMigManager]:
    m = CffiMigManager(fakenvml.library_path())
    yield m
    m.close()


def _inventory(backend: NvmlBackend) -> Inventory:
    return build_inventory(backend.inventory(), backend.name)


def _record(name: str) -> DeviceRecord:
    return DeviceRecord(request_names=("r",), pool_name="n", device_name=name, cdi_device_ids=())


async def test_create_and_destroy_follow_health_and_metrics(
    node: fakenvml.FakeNode, backend: NvmlBackend, manager: CffiMigManager
) -> None:
    inv = _inventory(backend)
    board = HealthBoard(d.name for d in inv.devices)
    monitor = HealthMonitor(backend, inv, board)
    layout = MigLayout(inv, manager, KeyedLocks(), monitor)
    metrics = Metrics("gpu.nvidia.com", "n")
    metrics.watch(migs=layout)
    name = "gpu-0-mig-2g10gb-14-2"
    planned = layout.resolve(name)
    assert planned is not None and needs_create(planned) and planned.uuid == ""
    assert layout.resolve("gpu-2-mig-1g5gb-19-0") is None  # MIG off: not offered
    assert layout.resolve("gpu-0") is None
    real = layout.create(planned)
    assert real.uuid.startswith("MIG-") and not needs_create(real)
    assert layout.resolve(name) == real
    health = board.get(name)
    assert health is not None and health.health is Health.HEALTHY
    # A GI-scoped XID on the created instance hits it, not the whole GPU.
    assert real.mig is not None
    await monitor.start()
    try:
        node.faults.xid(0, 48, gi=real.mig.gpu_instance_id)

        def hit() -> bool:
            h = board.get(name)
            return h is not None and h.health is Health.UNHEALTHY

        for _ in range(200):
            if hit():
                break
            await asyncio.sleep(0.01)
        assert hit()
        assert all(h.health is Health.HEALTHY for h in board.snapshot() if h.device != name)
    finally:
        await monitor.stop()
    with pytest.raises(NvmlInsufficientResourcesError):
        layout.create(layout.resolve("gpu-0-mig-1g5gb-19-3") or planned)
    rec = with_created(with_intent(_record(name), planned), real)
    assert layout.destroy(rec) is True
    assert board.get(name) is None
    again = layout.resolve(name)
    assert again is not None and needs_create(again)
    assert layout.destroy(rec) is False  # already gone
    r = metrics.registry
    labels = {"node": "n", "driver": "gpu.nvidia.com"}
    assert r.get_sample_value("nvidia_dra_mig_devices_created_total", labels) == 1
    assert r.get_sample_value("nvidia_dra_mig_devices_destroyed_total", labels) == 1
    assert (
        r.get_sample_value(
            "nvidia_dra_mig_create_failures_total", {**labels, "error": "insufficientresources"}
        )
        == 1
    )
    assert r.get_sample_value("nvidia_dra_mig_create_duration_seconds_count", labels) == 1


def test_an_unrecorded_instance_is_destroyed_by_its_intent(
    node: fakenvml.FakeNode, backend: NvmlBackend, manager: CffiMigManager
) -> None:
    inv = _inventory(backend)
    layout = MigLayout(inv, manager, KeyedLocks())
    planned = layout.resolve("gpu-1-mig-3g20gb-9-4")
    assert planned is not None
    layout.create(planned)
    assert fakenvml.current_migs(node.spec, node.fault_log)[1]
    assert layout.destroy(with_intent(_record(planned.name), planned)) is True
    assert fakenvml.current_migs(node.spec, node.fault_log)[1] == ()
    assert layout.destroy(_record(planned.name)) is False  # no intent: not ours, untouched


def test_created_devices_are_left_out_of_the_published_inventory(
    node: fakenvml.FakeNode, backend: NvmlBackend, manager: CffiMigManager
) -> None:
    operator = node.faults.create_mig_device(0, "1g.5gb", placement=0)
    ours = manager.create(node.spec.gpu(0).uuid, 14, 2)
    inv = _inventory(backend)
    rec = ClaimRecord(
        uid="u",
        namespace="n",
        name="c",
        state=ClaimState.PREPARED,
        devices=(
            _record("x"),
            DeviceRecord(
                request_names=("r",),
                pool_name="n",
                device_name="gpu-0-mig-2g10gb-14-2",
                cdi_device_ids=(),
                extra={CREATED_KEY: {"uuid": ours.uuid}},
            ),
        ),
    )
    uuids = created_uuids([rec])
    assert uuids == frozenset({ours.uuid})
    published = without_created(inv, uuids)
    assert {d.uuid for d in published.gpus[0].mig_devices} == {operator.uuid}
    assert {d.uuid for d in inv.gpus[0].mig_devices} == {operator.uuid, ours.uuid}
    assert without_created(inv, frozenset()) is inv
    # A create in flight (intent recorded, ids not yet): its device is not an operator's.
    parent = node.spec.gpu(0).uuid
    in_flight = DeviceRecord(
        request_names=("r",),
        pool_name="n",
        device_name="gpu-0-mig-2g10gb-14-2",
        cdi_device_ids=(),
        extra={INTENT_KEY: {"parentUuid": parent, "giProfileId": 14, "start": 2}},
    )
    started = replace(rec, devices=(in_flight,))
    assert created_uuids([started]) == frozenset()
    placements = intended_placements([started])
    assert placements == {(parent, 14, 2)}
    published = without_created(inv, frozenset(), placements)
    assert {d.uuid for d in published.gpus[0].mig_devices} == {operator.uuid}
    assert ours.uuid not in {d.uuid for d in published.devices}


def test_a_failed_create_says_what_it_most_likely_means() -> None:
    from dra_driver.nvml import errors
    from dra_driver.prepare.dynamic import create_hint

    assert "already in use" in create_hint(errors.NvmlInsufficientResourcesError(23))
    assert "CAP_SYS_ADMIN" in create_hint(errors.NvmlNoPermissionError(4))
    assert "cannot create MIG devices" in create_hint(errors.NvmlNotSupportedError(3))
    assert "--mig-deadline" in create_hint(errors.NvmlDeadlineError(10))
    assert create_hint(errors.NvmlError(999)) == ""
