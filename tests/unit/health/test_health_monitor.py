"""HealthMonitor: the event thread and the poller, on the fake NVML and on a scripted backend.

The fake-NVML tests run the real backends in this process with a private
fault log per test (the fake library reads its environment at the nvmlInit
that takes its reference count from zero, and every test closes its backend).
The scripted backend covers what the fake cannot produce on demand: event
sets that cannot be created, per-GPU registration failures, wait errors.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from dra_driver.health.board import Health, HealthBoard
from dra_driver.health.monitor import HealthMonitor, MonitorConfig, RateLimitedLog
from dra_driver.health.policy import PolicyConfig
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml import NvmlBackend, open_backend
from dra_driver.nvml.errors import (
    ERROR_GPU_IS_LOST,
    ERROR_NOT_SUPPORTED,
    ERROR_UNKNOWN,
    SUCCESS,
    NvmlError,
    NvmlGpuLostError,
)
from dra_driver.nvml.types import (
    EVENT_XID_CRITICAL,
    HEALTH_EVENT_MASK,
    BackendInfo,
    EventRegistration,
    HealthSample,
    NvmlEvent,
    NvmlSnapshot,
    Reading,
)
from dra_driver.testing import fakenvml, gpu_record, mig_record, snapshot

pytestmark = pytest.mark.timeout(60)

FAST = MonitorConfig(poll_interval=0.05, wait_timeout_ms=100, error_backoff=0.01)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


def health_of(board: HealthBoard) -> dict[str, Health]:
    return {d.device: d.health for d in board.snapshot()}


def message(board: HealthBoard, device: str) -> str:
    d = board.get(device)
    assert d is not None, device
    return d.message


def bad(board: HealthBoard) -> set[str]:
    return {d for d, h in health_of(board).items() if h is not Health.HEALTHY}


# -- on the fake NVML ------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml: str) -> fakenvml.FakeNode:
    node = fakenvml.FakeNode("small", fault_log=tmp_path / "small.faults.jsonl")
    node.reset_faults()
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    return node


@pytest.fixture(params=["cffi", "nvidia-ml-py"])
def opened(
    request: pytest.FixtureRequest, fake: fakenvml.FakeNode
) -> Iterator[tuple[NvmlBackend, Inventory]]:
    backend = open_backend(fakenvml.library_path(), request.param)
    try:
        yield backend, build_inventory(backend.inventory(), backend.name)
    finally:
        backend.close()


@pytest.fixture
async def running(
    opened: tuple[NvmlBackend, Inventory],
) -> AsyncIterator[tuple[HealthMonitor, HealthBoard, Inventory]]:
    backend, inv = opened
    board = HealthBoard(d.name for d in inv.devices)
    config = MonitorConfig(poll_interval=0.05, policy=PolicyConfig(hold_seconds=0.3))
    monitor = HealthMonitor(backend, inv, board, config)
    await monitor.start()
    try:
        yield monitor, board, inv
    finally:
        t0 = time.monotonic()
        await monitor.stop()
        assert time.monotonic() - t0 < 2.0
        assert not monitor.event_thread_alive


async def test_mig_xid_marks_only_that_device_then_recovers_after_the_hold(
    running: tuple[HealthMonitor, HealthBoard, Inventory], fake: fakenvml.FakeNode
) -> None:
    monitor, board, inv = running
    gpu0 = inv.gpus[0]
    target = gpu0.mig_devices[0]
    assert target.mig is not None
    await wait_until(lambda: monitor.stats.polls > 0, what="a first poll")
    assert bad(board) == set()

    fake.faults.xid(0, 48, target.mig.gpu_instance_id, target.mig.compute_instance_id)
    await wait_until(lambda: bad(board) == {target.name}, what="the MIG device unhealthy")
    d = board.get(target.name)
    assert d is not None and d.reason == "xid-48" and "XID 48" in d.message
    # Held for 0.3 s, then cleared: the GPU keeps answering its samples.
    await wait_until(lambda: bad(board) == set(), what="recovery after the hold")
    assert monitor.stats.events >= 1


async def test_lost_gpu_marks_its_devices_only_and_recover_brings_them_back(
    running: tuple[HealthMonitor, HealthBoard, Inventory], fake: fakenvml.FakeNode
) -> None:
    monitor, board, inv = running
    gpu0 = {d.name for d in inv.gpus[0].mig_devices}
    sibling = inv.gpus[0].mig_devices[1].name

    def reasons() -> set[str]:
        return {c.reason for c in monitor.conditions(sibling)}

    fake.faults.lost(0)
    await wait_until(lambda: {"gpu-lost", "xid-79"} <= reasons(), what="lost and its XID 79")
    assert bad(board) == gpu0
    assert health_of(board)["gpu-1"] is Health.HEALTHY
    await asyncio.sleep(0.5)  # well past the hold: a lost GPU stays unhealthy
    assert bad(board) == gpu0
    fake.faults.recover(0)
    await wait_until(lambda: bad(board) == set(), what="recovery")


async def test_polled_signals_degrade_and_clear(
    running: tuple[HealthMonitor, HealthBoard, Inventory], fake: fakenvml.FakeNode
) -> None:
    _, board, _ = running
    fake.faults.pcie(1, 8)
    fake.faults.throttle(1, fakenvml.THROTTLE_REASONS["hw_thermal_slowdown"])
    await wait_until(
        lambda: "hw-thermal-slowdown" in message(board, "gpu-1"),
        what="gpu-1 degraded",
    )
    assert health_of(board)["gpu-1"] is Health.DEGRADED
    assert "pcie-x8-of-x16" in message(board, "gpu-1")
    assert bad(board) == {"gpu-1"}
    fake.faults.remap(1, failure=True)
    await wait_until(lambda: health_of(board)["gpu-1"] is Health.UNHEALTHY, what="remap failure")
    fake.faults.recover(1)
    await wait_until(lambda: bad(board) == set(), what="signals cleared")


async def test_ignored_xid_changes_nothing(
    running: tuple[HealthMonitor, HealthBoard, Inventory], fake: fakenvml.FakeNode
) -> None:
    monitor, board, _ = running
    version = board.version
    fake.faults.xid(1, 13)
    fake.faults.xid(1, 31)
    await wait_until(lambda: monitor.stats.events >= 2, what="both events seen")
    assert board.version == version and bad(board) == set()


# -- on a scripted backend -------------------------------------------------------------


U0 = "GPU-00000000-1111-2222-3333-444444444444"
U1 = "GPU-00000001-1111-2222-3333-444444444444"


SNAPSHOT = snapshot(
    gpu_record(
        0,
        (mig_record(0, gi=1, uuid="MIG-0"), mig_record(1, gi=2, uuid="MIG-1")),
        uuid=U0,
    ),
    gpu_record(1, uuid=U1),
)
MIG_A, MIG_B = "gpu-0-mig-1g10gb-19-0", "gpu-0-mig-1g10gb-19-1"


def good_sample(index: int, rc: int = SUCCESS) -> HealthSample:
    r = Reading(0, rc)
    width = Reading(16, rc)
    return HealthSample(index, (U0, U1)[index], rc, r, r, r, r, r, r, r, r, r, width, width)


class ScriptedBackend:
    """An NvmlBackend whose answers a test scripts; wait_event serves a queue."""

    name = "scripted"

    def __init__(self) -> None:
        self.info = BackendInfo("scripted", "none")
        self.registration: list[EventRegistration] | Exception = [
            EventRegistration(0, U0, HEALTH_EVENT_MASK),
            EventRegistration(1, U1, HEALTH_EVENT_MASK),
        ]
        self.samples: list[HealthSample] | Exception = [good_sample(0), good_sample(1)]
        self.events: queue.Queue[NvmlEvent | Exception] = queue.Queue()
        self.waits = 0
        self.sample_calls = 0

    def inventory(self) -> NvmlSnapshot:
        return SNAPSHOT

    def health_sample(self) -> list[HealthSample]:
        self.sample_calls += 1
        if isinstance(self.samples, Exception):
            raise self.samples
        return list(self.samples)

    def health_sample_gpu(self, index: int) -> HealthSample:
        self.sample_calls += 1
        if isinstance(self.samples, Exception):
            raise self.samples
        return next(s for s in self.samples if s.gpu_index == index)

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        if isinstance(self.registration, Exception):
            raise self.registration
        return self.registration

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        self.waits += 1
        try:
            item = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        raise NvmlError(ERROR_NOT_SUPPORTED, "not scripted")

    def close(self, timeout: float | None = None) -> bool:
        return True


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., tuple[HealthMonitor, HealthBoard]]]:
    started: list[HealthMonitor] = []
    inv = build_inventory(SNAPSHOT, "scripted")

    def make(
        backend: ScriptedBackend, config: MonitorConfig = FAST
    ) -> tuple[HealthMonitor, HealthBoard]:
        board = HealthBoard(d.name for d in inv.devices)
        monitor = HealthMonitor(backend, inv, board, config)
        started.append(monitor)
        return monitor, board

    yield make
    for m in started:
        await m.stop()


async def test_no_event_set_means_polling_only_with_an_unmonitored_note(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]], caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend()
    backend.registration = NvmlError(ERROR_UNKNOWN, "no event set", "nvmlEventSetCreate")
    monitor, board = scripted(backend)
    with caplog.at_level(logging.WARNING):
        await monitor.start()
    assert not monitor.event_thread_alive and backend.waits == 0
    assert "polling only" in caplog.text
    for d in board.snapshot():
        assert d.health is Health.HEALTHY and "unmonitored" in d.message, d
    backend.samples = [good_sample(0, ERROR_GPU_IS_LOST), good_sample(1)]
    await wait_until(lambda: bad(board) == {MIG_A, MIG_B}, what="polling still works")


async def test_per_gpu_registration_failures_are_noted_on_that_gpu_only(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]],
) -> None:
    backend = ScriptedBackend()
    backend.registration = [
        EventRegistration(0, U0, HEALTH_EVENT_MASK),
        EventRegistration(1, U1, 0, ERROR_NOT_SUPPORTED),
    ]
    monitor, board = scripted(backend)
    await monitor.start()
    assert monitor.event_thread_alive and monitor.stats.unmonitored_gpus == 1
    notes = {d.device: d.message for d in board.snapshot()}
    assert "unmonitored" in notes["gpu-1"] and "rc=3" in notes["gpu-1"]
    assert notes[MIG_A] == notes[MIG_B] == ""


async def test_a_gpu_without_xid_events_is_unmonitored(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]],
) -> None:
    backend = ScriptedBackend()
    backend.registration = [
        EventRegistration(0, U0, HEALTH_EVENT_MASK & ~EVENT_XID_CRITICAL),
        EventRegistration(1, U1, HEALTH_EVENT_MASK),
    ]
    monitor, board = scripted(backend)
    await monitor.start()
    assert "XID events not supported" in message(board, MIG_A)
    assert message(board, "gpu-1") == ""


async def test_wait_errors_are_survived_and_events_still_arrive(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]], caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend()
    monitor, board = scripted(backend)
    await monitor.start()
    with caplog.at_level(logging.WARNING, logger="dra_driver.health.monitor"):
        for _ in range(5):
            backend.events.put(NvmlError(ERROR_UNKNOWN, "boom", "nvmlEventSetWait_v2"))
        backend.events.put(RuntimeError("a bug somewhere below"))
        backend.events.put(NvmlEvent(1, U1, EVENT_XID_CRITICAL, 79))
        await wait_until(lambda: bad(board) == {"gpu-1"}, what="the event after the errors")
    assert monitor.stats.wait_errors == 6 and monitor.event_thread_alive
    failures = [r for r in caplog.records if "waiting for NVML events failed" in r.message]
    assert len(failures) == 2  # rate-limited: one per kind of error


async def test_a_lost_wait_is_attributed_by_sampling_not_to_the_whole_node(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]],
) -> None:
    backend = ScriptedBackend()
    monitor, board = scripted(backend, MonitorConfig(poll_interval=3600, wait_timeout_ms=100))
    await monitor.start()
    await wait_until(lambda: monitor.stats.polls == 1, what="the first poll")
    backend.samples = [good_sample(0), good_sample(1, ERROR_GPU_IS_LOST)]
    backend.events.put(NvmlGpuLostError(ERROR_GPU_IS_LOST, "lost", "nvmlEventSetWait_v2"))
    await wait_until(lambda: bad(board) == {"gpu-1"}, what="gpu-1 lost")
    assert monitor.stats.lost_waits == 1 and monitor.stats.polls == 2
    d = board.get("gpu-1")
    assert d is not None and d.reason == "gpu-lost"


async def test_an_unattributable_lost_wait_marks_nothing(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]], caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend()
    monitor, board = scripted(backend, MonitorConfig(poll_interval=3600, wait_timeout_ms=100))
    await monitor.start()
    with caplog.at_level(logging.WARNING):
        backend.events.put(NvmlGpuLostError(ERROR_GPU_IS_LOST, "lost", "nvmlEventSetWait_v2"))
        await wait_until(lambda: monitor.stats.lost_waits == 1 and monitor.stats.polls >= 2)
        await asyncio.sleep(0.05)
    assert bad(board) == set()
    assert "every GPU answers" in caplog.text


async def test_failing_samples_change_nothing_and_polling_goes_on(
    scripted: Callable[..., tuple[HealthMonitor, HealthBoard]],
) -> None:
    backend = ScriptedBackend()
    backend.samples = NvmlError(ERROR_UNKNOWN, "sampling broke", "health_sample")
    monitor, board = scripted(backend)
    await monitor.start()
    await wait_until(lambda: monitor.stats.poll_errors >= 3, what="several failed polls")
    assert bad(board) == set()
    backend.samples = [good_sample(0), good_sample(1, ERROR_GPU_IS_LOST)]
    await wait_until(lambda: bad(board) == {"gpu-1"}, what="a later good poll applies")


async def test_stop_is_prompt_while_the_thread_waits() -> None:
    backend = ScriptedBackend()
    inv = build_inventory(SNAPSHOT, "scripted")
    monitor = HealthMonitor(
        backend, inv, HealthBoard(d.name for d in inv.devices), MonitorConfig(poll_interval=60)
    )
    await monitor.start()
    await wait_until(lambda: backend.waits >= 1, what="the thread blocked in a wait")
    t0 = time.monotonic()
    await monitor.stop()
    assert time.monotonic() - t0 < 1.5  # one 500 ms wait at most, plus scheduling
    assert not monitor.event_thread_alive
    await monitor.stop()  # idempotent


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        MonitorConfig(poll_interval=0)
    with pytest.raises(ValueError, match="wait_timeout_ms"):
        MonitorConfig(wait_timeout_ms=0)


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="dra_driver.health.monitor"):
        assert limited("k", logging.WARNING, "first")
        assert not limited("k", logging.WARNING, "again")
        assert not limited("k", logging.WARNING, "again")
        assert limited("other", logging.WARNING, "another key")
        now[0] = 11
        assert limited("k", logging.WARNING, "later")
    assert [r.message for r in caplog.records] == [
        "first",
        "another key",
        "later (2 similar message(s) suppressed)",
    ]
