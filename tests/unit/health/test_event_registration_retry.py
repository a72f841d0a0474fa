"""Event registration is retried after the event set could not be created at start.

Until it works the GPUs are polled and say "NVML events are not monitored";
once it works the note goes, the event thread runs, and an XID reaches the board.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable

from dra_driver.health.board import Health, HealthBoard
from dra_driver.health.monitor import HealthMonitor, MonitorConfig
from dra_driver.inventory import build_inventory
from dra_driver.nvml.errors import ERROR_UNKNOWN, SUCCESS, NvmlError
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
from dra_driver.testing import gpu_record, snapshot

U0 = "GPU-00000000-1111-2222-3333-444444444444"
SNAP = snapshot(gpu_record(0, uuid=U0))


class FlakyRegistration:
    """An NvmlBackend whose event set creation fails `failures` times, then works."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.info = BackendInfo("flaky", "none")
        self.failures = failures
        self.attempts = 0
        self.events: queue.Queue[NvmlEvent] = queue.Queue()

    def inventory(self) -> NvmlSnapshot:
        return SNAP

    def health_sample_gpu(self, index: int) -> HealthSample:
        r = Reading(0, SUCCESS)
        w = Reading(16, SUCCESS)
        return HealthSample(index, U0, SUCCESS, r, r, r, r, r, r, r, r, r, w, w)

    def health_sample(self) -> list[HealthSample]:
        return [self.health_sample_gpu(0)]

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise NvmlError(ERROR_UNKNOWN, "driver busy", "nvmlEventSetCreate")
        return [EventRegistration(0, U0, HEALTH_EVENT_MASK)]

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        try:
            return self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        raise NvmlError(ERROR_UNKNOWN, "not scripted")

    def close(self, timeout: float | None = None) -> bool:
        return True


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)


async def test_registration_is_retried_until_it_works() -> None:
    backend = FlakyRegistration(failures=3)
    inv = build_inventory(SNAP, "flaky")
    board = HealthBoard(d.name for d in inv.devices)
    config = MonitorConfig(poll_interval=0.05, wait_timeout_ms=100, error_backoff=0.01)
    monitor = HealthMonitor(backend, inv, board, config)
    try:
        await monitor.start()
        assert not monitor.event_thread_alive
        assert "not monitored" in board.snapshot()[0].message
        assert monitor.stats.unmonitored_gpus == 1
        await until(lambda: monitor.event_thread_alive, what="registered on a retry")
        assert backend.attempts == 4
        await until(lambda: "not monitored" not in board.snapshot()[0].message, what="note gone")
        assert monitor.stats.unmonitored_gpus == 0
        backend.events.put(NvmlEvent(0, U0, EVENT_XID_CRITICAL, 79))
        await until(lambda: board.snapshot()[0].health is Health.UNHEALTHY, what="XID delivered")
    finally:
        await monitor.stop()


async def test_a_set_that_never_works_keeps_polling_quietly() -> None:
    backend = FlakyRegistration(failures=10**6)
    inv = build_inventory(SNAP, "flaky")
    board = HealthBoard(d.name for d in inv.devices)
    config = MonitorConfig(poll_interval=0.05, wait_timeout_ms=100, error_backoff=0.01)
    monitor = HealthMonitor(backend, inv, board, config)
    try:
        await monitor.start()
        await until(lambda: backend.attempts >= 4, what="retries")
        assert monitor.stats.unmonitored_gpus == 1  # counted once, not per attempt
        assert not monitor.event_thread_alive
    finally:
        await monitor.stop()
