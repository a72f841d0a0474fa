"""The health monitor against a hanging (fake) NVML, on both backends: a hung
GPU is Unknown within its deadline, only it; an XID on another GPU still
reaches the board at once; a hung event wait makes every device Unknown; all
of it clears when NVML answers again. Nothing ever reads Healthy unchecked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dra_driver.health.board import Health, HealthBoard
from dra_driver.health.monitor import HealthMonitor, MonitorConfig
from dra_driver.health.policy import REASON_STALLED, REASON_UNRESPONSIVE, PolicyConfig
from dra_driver.inventory import build_inventory
from dra_driver.nvml import open_backend
from dra_driver.testing import fakenvml

DEADLINE = 0.4
CONFIG = MonitorConfig(
    poll_interval=0.1,
    wait_timeout_ms=100,
    deadline=DEADLINE,
    watchdog_interval=0.05,
    policy=PolicyConfig(hold_seconds=600),
)

pytestmark = pytest.mark.timeout(60)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


class Rig:
    def __init__(self, node: fakenvml.FakeNode, monitor: HealthMonitor, board: HealthBoard):
        self.node = node
        self.faults = node.faults
        self.monitor = monitor
        self.board = board
        inv = monitor._inventory
        self.gpu0 = {inv.gpus[0].name, *(d.name for d in inv.gpus[0].mig_devices)} & set(
            self.health()
        )
        self.gpu1 = {inv.gpus[1].name}

    def health(self) -> dict[str, Health]:
        return {d.device: d.health for d in self.board.snapshot()}

    def reason(self, device: str) -> str:
        d = self.board.get(device)
        return d.reason if d is not None else ""


@pytest.fixture(params=["cffi", "nvidia-ml-py"])
async def rig(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    try:
        fakenvml.library_path()
    except fakenvml.FakeNvmlError as e:
        pytest.skip(str(e))
    node = fakenvml.FakeNode("small", fault_log=tmp_path / "faults.jsonl")
    node.reset_faults()
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    backend = open_backend(fakenvml.library_path(), request.param)
    inv = build_inventory(backend.inventory(), backend.name)
    board = HealthBoard((d.name for d in inv.devices), Health.UNKNOWN, "not checked yet")
    monitor = HealthMonitor(backend, inv, board, CONFIG)
    await monitor.start()
    try:
        yield Rig(node, monitor, board)
    finally:
        node.faults.release()
        await monitor.stop()
        backend.close(timeout=2)


async def test_the_first_round_decides_before_start_returns(rig: Rig) -> None:
    assert set(rig.health().values()) == {Health.HEALTHY}


async def test_a_hung_gpu_is_unknown_within_its_deadline_while_xids_elsewhere_flow(
    rig: Rig,
) -> None:
    rig.faults.hang(gpu=0, fn="nvmlDeviceGetTemperature")
    t_hang = time.monotonic()
    await until(
        lambda: all(rig.health()[d] is Health.UNKNOWN for d in rig.gpu0), 3, "GPU 0 Unknown"
    )
    elapsed = time.monotonic() - t_hang
    assert elapsed < CONFIG.poll_interval + DEADLINE + 1.0
    assert all(rig.reason(d) == REASON_UNRESPONSIVE for d in rig.gpu0)
    assert rig.health()["gpu-1"] is Health.HEALTHY
    # An XID on the other GPU still reaches the board in milliseconds.
    t0 = time.monotonic()
    rig.faults.xid(1, 79)
    await until(lambda: rig.health()["gpu-1"] is Health.UNHEALTHY, 1, "XID 79 on GPU 1")
    assert time.monotonic() - t0 < 0.5
    # The GPU 1 sample keeps being checked; GPU 0's hung one is never doubled.
    assert rig.monitor.workers.busy_since(rig.monitor._inventory.gpus[0].uuid) is not None
    msg = rig.board.get(sorted(rig.gpu0)[0])
    assert msg is not None and "NVML has not answered for" in msg.message
    # NVML answers again: Unknown clears at once.
    rig.faults.release(gpu=0)
    await until(lambda: all(rig.health()[d] is Health.HEALTHY for d in rig.gpu0), 2, "GPU 0 back")
    assert rig.monitor.stats.deadline_misses >= 1 and rig.monitor.stats.late_answers >= 1


async def test_checks_of_a_hung_gpu_stop_moving_its_last_updated_time(rig: Rig) -> None:
    rig.faults.hang(gpu=0, fn="nvmlDeviceGetTemperature")
    await until(lambda: rig.health()["gpu-1"] is Health.HEALTHY and rig.reason(
        next(iter(rig.gpu0))) == REASON_UNRESPONSIVE, 3, "GPU 0 unresponsive")  # fmt: skip
    before = {d.device: d.checked_at for d in rig.board.snapshot()}
    await asyncio.sleep(0.5)
    after = {d.device: d.checked_at for d in rig.board.snapshot()}
    assert all(after[d] == before[d] for d in rig.gpu0)  # no check: no fresh time
    assert after["gpu-1"] > before["gpu-1"]


async def test_a_hung_event_wait_makes_every_device_unknown_until_it_returns(rig: Rig) -> None:
    rig.faults.hang(fn="nvmlEventSetWait_v2")
    limit = CONFIG.event_stall_after + CONFIG.wait_timeout_ms / 1000 + 1.0
    await until(
        lambda: set(rig.health().values()) == {Health.UNKNOWN}, limit, "every device Unknown"
    )
    assert {rig.reason(d) for d in rig.health()} == {REASON_STALLED}
    rig.faults.release()
    await until(lambda: set(rig.health().values()) == {Health.HEALTHY}, 2, "all back")


async def test_stop_is_bounded_with_a_sample_hung_in_nvml(rig: Rig) -> None:
    rig.faults.hang(gpu=0)
    await until(lambda: rig.reason("gpu-1") == "" and any(
        rig.reason(d) == REASON_UNRESPONSIVE for d in rig.gpu0), 3, "GPU 0 hung")  # fmt: skip
    t0 = time.monotonic()
    await rig.monitor.stop()
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("backend_name", ["cffi", "nvidia-ml-py"])
async def test_a_hung_event_registration_does_not_hang_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend_name: str
) -> None:
    try:
        fakenvml.library_path()
    except fakenvml.FakeNvmlError as e:
        pytest.skip(str(e))
    node = fakenvml.FakeNode("small", fault_log=tmp_path / "faults.jsonl")
    node.reset_faults()
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    backend = open_backend(fakenvml.library_path(), backend_name)
    inv = build_inventory(backend.inventory(), backend.name)
    board = HealthBoard((d.name for d in inv.devices), Health.UNKNOWN, "not checked yet")
    monitor = HealthMonitor(backend, inv, board, CONFIG)
    node.faults.hang(fn="nvmlDeviceGetSupportedEventTypes")
    t0 = time.monotonic()
    try:
        await monitor.start()
        took = time.monotonic() - t0
        assert took < 2 * DEADLINE + DEADLINE + 1.0  # registration, then the first round
        assert not monitor.event_thread_alive and monitor.stats.unmonitored_gpus == 2
        # The first round ran too: every device has a verdict, not the default.
        assert all(d.message != "not checked yet" for d in board.snapshot())
    finally:
        node.faults.release()
        await monitor.stop()
        backend.close(timeout=2)
