"""Health monitor: NVML events and degradation polling -> HealthPolicy -> HealthBoard.

Two producers feed one policy under one lock:

* an event thread (daemon, "nvml-events") blocked in nvmlEventSetWait with a
  short timeout (500 ms), so an XID reaches the board within milliseconds and
  stop() returns within about half a second. The event set is created and
  registered once, in start(), before the plugin serves the kubelet: an event
  raised after the plugin looks ready is never missed. A wait that answers
  GPU_IS_LOST names no GPU, so the thread samples every GPU at once to find
  the lost one(s) instead of marking the whole node (NVIDIA's choice).
* a poll task on the asyncio loop: every poll interval one health_sample()
  of all GPUs in a worker thread (the cffi path does it in one native call).

Verdicts go straight to HealthBoard.update() from either side; the board is
thread-safe and wakes asyncio waiters (the kubelet stream, the slice
publisher) thread-safely. GPUs whose events cannot be registered keep being
polled and carry an "unmonitored" note in their message (informational, not
a verdict: see policy.py). Nothing here may end the process: unexpected NVML
answers are logged, rate-limited, and the loops go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from ..inventory import Inventory
from ..nvml.errors import ERROR_GPU_IS_LOST, SUCCESS, NvmlError, NvmlGpuLostError
from ..nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_RECOVERY_ACTION,
    EVENT_GPU_UNAVAILABLE,
    EVENT_SINGLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    HEALTH_EVENT_MASK,
    EventRegistration,
    HealthSample,
    NvmlBackend,
    NvmlEvent,
)
from .board import HealthBoard
from .policy import Condition, HealthPolicy, Outcome, PolicyConfig

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 10.0
DEFAULT_WAIT_TIMEOUT_MS = 500
ERROR_BACKOFF_MAX = 5.0
LOG_REPEAT_INTERVAL = 60.0
JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class MonitorConfig:
    poll_interval: float = DEFAULT_POLL_INTERVAL
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    error_backoff: float = 0.5  # first pause after a failed wait (doubles, capped)
    event_mask: int = HEALTH_EVENT_MASK
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval}")
        if self.wait_timeout_ms <= 0:
            raise ValueError(f"wait_timeout_ms must be positive, got {self.wait_timeout_ms}")


def event_type_name(event_type: int) -> str:
    """An NVML event type as a short name, with the policy's precedence for combined bits."""
    for bit, name in (
        (EVENT_XID_CRITICAL, "xid"),
        (EVENT_DOUBLE_BIT_ECC, "dbe"),
        (EVENT_GPU_UNAVAILABLE, "lost"),
        (EVENT_GPU_RECOVERY_ACTION, "recovery_action"),
        (EVENT_SINGLE_BIT_ECC, "sbe"),
    ):
        if event_type & bit:
            return name
    return "other"


@dataclass
class MonitorStats:
    """Counters for tests, benchmarks and metrics."""

    events: int = 0
    polls: int = 0
    poll_errors: int = 0
    wait_errors: int = 0
    lost_waits: int = 0
    board_updates: int = 0
    unmonitored_gpus: int = 0
    # Events by (GPU device name or "unknown", event_type_name()), and XIDs by (GPU, XID);
    # read them through HealthMonitor.counters() from other threads.
    events_by_gpu: Counter[tuple[str, str]] = field(default_factory=Counter)
    xids_by_gpu: Counter[tuple[str, int]] = field(default_factory=Counter)


class RateLimitedLog:
    """Logs a message the first time, then at most once per interval per key."""

    def __init__(
        self, interval: float = LOG_REPEAT_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (last logged, suppressed since)
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, exc_info: bool = False) -> bool:
        now = self._clock()
        with self._lock:
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return False
            self._last[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} similar message(s) suppressed)"
        log.log(level, "%s", message, exc_info=exc_info)
        return True


class HealthMonitor:
    """Owns the event thread and the poll task for one backend and inventory."""

    def __init__(
        self,
        backend: NvmlBackend,
        inventory: Inventory,
        board: HealthBoard,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or MonitorConfig()
        self.policy = HealthPolicy(inventory, self.config.policy, clock)
        self.stats = MonitorStats()
        self._backend = backend
        self._inventory = inventory
        self._board = board
        self._clock = clock
        self._lock = threading.Lock()  # one writer of policy + board at a time
        self._counts_lock = threading.Lock()  # the per-GPU event counters vs. their readers
        self._gpu_by_uuid = {g.uuid: g.name for g in inventory.gpus}
        self._gpu_by_index = {g.index: g.name for g in inventory.gpus}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._ratelimited = RateLimitedLog()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Register for events (worker thread), then start the event thread and the poller."""
        registered = await asyncio.to_thread(self._register)
        if registered:
            self._thread = threading.Thread(
                target=self._event_loop, name="nvml-events", daemon=True
            )
            self._thread.start()
        self._poll_task = asyncio.get_running_loop().create_task(
            self._poll_loop(), name="health-poll"
        )
        log.info(
            "health monitor started: %d GPU(s) with NVML events, poll every %gs, hold %gs, "
            "ignored XIDs %s",
            len(self._inventory.gpus) - self.stats.unmonitored_gpus,
            self.config.poll_interval,
            self.config.policy.hold_seconds,
            ",".join(map(str, sorted(self.config.policy.ignored_xids))) or "none",
        )

    async def stop(self) -> None:
        """Stop both producers; returns within about one wait timeout."""
        self._stopping.set()
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("the NVML event thread did not stop within %gs", JOIN_TIMEOUT)

    def conditions(self, device: str) -> list[Condition]:
        """A device's active conditions (consistent: taken under the writers' lock)."""
        with self._lock:
            return self.policy.conditions(device)

    @property
    def event_thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counters(self) -> MonitorStats:
        """A copy of the stats that is safe to read while the producers run (metrics)."""
        with self._counts_lock:
            return replace(
                self.stats,
                events_by_gpu=Counter(self.stats.events_by_gpu),
                xids_by_gpu=Counter(self.stats.xids_by_gpu),
            )

    # -- applying ----------------------------------------------------------------------

    def _apply(self, step: Callable[[], Outcome]) -> Outcome:
        """Run one policy step and hand the verdicts it may have changed to the board."""
        with self._lock:
            outcome = step()
            if outcome.changed and self._board.update(self.policy.verdicts(outcome.changed)):
                self.stats.board_updates += 1
        for note in outcome.notes:
            if note.level >= logging.WARNING:
                self._ratelimited(note.text, note.level, note.text)
            else:
                log.log(note.level, "%s", note.text)
        return outcome

    # -- events ------------------------------------------------------------------------

    def _register(self) -> bool:
        """Create the event set; mark GPUs that cannot deliver XIDs. True if any can."""
        gpus = self._inventory.gpus
        try:
            regs = self._backend.register_events(self.config.event_mask)
        except Exception as e:
            log.warning(
                "cannot create the NVML event set (%s): devices are checked by polling only", e
            )
            for gpu in gpus:
                self._unmonitored(gpu.uuid, gpu.index, f"event set: {e}")
            return False
        by_uuid: dict[str, EventRegistration] = {r.uuid: r for r in regs if r.uuid}
        by_index = {r.gpu_index: r for r in regs}
        monitored = 0
        for gpu in gpus:
            r = by_uuid.get(gpu.uuid) or by_index.get(gpu.index)
            if r is None:
                self._unmonitored(gpu.uuid, gpu.index, "not registered")
            elif r.rc != SUCCESS:
                self._unmonitored(gpu.uuid, gpu.index, f"registration failed, nvml rc={r.rc}")
            elif not r.registered_mask & EVENT_XID_CRITICAL:
                self._unmonitored(gpu.uuid, gpu.index, "XID events not supported")
            else:
                monitored += 1
        return monitored > 0

    def _unmonitored(self, uuid: str, index: int, why: str) -> None:
        self.stats.unmonitored_gpus += 1
        log.warning("gpu %d (%s): NVML events not monitored: %s", index, uuid, why)
        self._apply(lambda: self.policy.set_unmonitored(uuid, why, index))

    def _event_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                event = self._backend.wait_event(self.config.wait_timeout_ms)
            except NvmlGpuLostError:
                self.stats.lost_waits += 1
                self._attribute_loss()
                failures += 1
                if failures > 1:  # a library that keeps answering LOST: do not spin
                    self._pause(failures)
                continue
            except Exception as e:
                if self._stopping.is_set():
                    break  # the backend is being closed under us
                self.stats.wait_errors += 1
                failures += 1
                self._ratelimited(
                    f"wait:{type(e).__name__}:{getattr(e, 'code', '')}",
                    logging.WARNING,
                    f"waiting for NVML events failed: {e}; retrying",
                    exc_info=not isinstance(e, NvmlError),
                )
                self._pause(failures)
                continue
            failures = 0
            try:
                if event is not None:
                    self._count(event)
                    self._apply(partial(self.policy.on_event, event))
                self._apply(self.policy.expire)
            except Exception:  # a bug: log it, keep watching
                self._ratelimited("apply", logging.ERROR, "BUG: applying an event", exc_info=True)

    def _count(self, event: NvmlEvent) -> None:
        # Found as the policy finds it: by UUID when the event has one, else by index.
        if event.uuid:
            gpu = self._gpu_by_uuid.get(event.uuid)
        else:
            gpu = self._gpu_by_index.get(event.gpu_index)
        kind = event_type_name(event.event_type)
        with self._counts_lock:
            self.stats.events += 1
            self.stats.events_by_gpu[gpu or "unknown", kind] += 1
            if kind == "xid":
                self.stats.xids_by_gpu[gpu or "unknown", event.event_data] += 1

    def _pause(self, failures: int) -> None:
        self._stopping.wait(min(self.config.error_backoff * 2 ** (failures - 1), ERROR_BACKOFF_MAX))

    def _attribute_loss(self) -> None:
        """The wait said GPU_IS_LOST without naming a GPU: sample all to find which."""
        samples = self._sample("lost-attribution")
        if samples is not None and not any(s.rc == ERROR_GPU_IS_LOST for s in samples):
            self._ratelimited(
                "lost-unattributed",
                logging.WARNING,
                "the NVML event wait reported a lost GPU, but every GPU answers its health "
                "sample; no device marked",
            )

    # -- polling -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            await asyncio.to_thread(self._sample, "poll")
            await asyncio.sleep(self.config.poll_interval)

    async def poll_once(self) -> list[HealthSample] | None:
        """One health sample of every GPU, applied (tests and benchmarks)."""
        return await asyncio.to_thread(self._sample, "poll")

    def _sample(self, why: str) -> list[HealthSample] | None:
        """Sample every GPU and apply it; None (logged) when the sample failed."""
        sampled_at = self._clock()
        try:
            samples = self._backend.health_sample()
        except Exception as e:
            self.stats.poll_errors += 1
            self._ratelimited(
                f"sample:{type(e).__name__}:{getattr(e, 'code', '')}",
                logging.WARNING,
                f"health sample ({why}) failed: {e}; device health unchanged",
                exc_info=not isinstance(e, NvmlError),
            )
            return None
        self.stats.polls += 1
        answered = {s.uuid for s in samples if s.rc == SUCCESS}
        self._board.mark_checked(
            name
            for g in self._inventory.gpus
            if g.uuid in answered
            for name in (g.name, *(d.name for d in g.mig_devices))
        )
        try:
            self._apply(partial(self.policy.on_samples, samples, sampled_at))
        except Exception:  # a bug: log it, keep polling
            self._ratelimited("apply", logging.ERROR, "BUG: applying a sample", exc_info=True)
        return samples
