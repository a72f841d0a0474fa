"""Health monitor: NVML events and degradation polling -> HealthPolicy -> HealthBoard.

Two producers feed one policy under one lock, and a watchdog checks both:

* an event thread (daemon, "nvml-events") blocked in nvmlEventSetWait with a
  short timeout (500 ms), so an XID reaches the board within milliseconds and
  stop() returns within about half a second. The event set is created and
  registered once, in start(), before the plugin serves the kubelet: an event
  raised after the plugin looks ready is never missed. A wait that answers
  GPU_IS_LOST names no GPU, so it triggers an immediate sample round to find
  the lost one(s) instead of marking the whole node (NVIDIA's choice).
* a poll task on the asyncio loop: every poll interval one health sample per
  GPU, each on that GPU's own worker thread (nvml.deadline.GpuWorkers) with a
  deadline. A GPU whose sample overruns is *unresponsive*: Unknown for it and
  its MIG devices ("NVML has not answered for N s"), no new sample is started
  on it until the hung one returns, and the moment it returns its answer is
  applied and the GPU is sampled afresh. Other GPUs are sampled as usual.
* a watchdog task: when the event thread has not come back from a wait for
  its timeout plus the deadline, or the poller has not finished a round for
  an interval plus twice the deadline, every device is Unknown until it does.

Only a sample that answered counts as a check: the board's checked_at (the
stream's last_updated_time) moves for those devices only. Verdicts go straight
to HealthBoard.update() from either side; the board is thread-safe and wakes
asyncio waiters (the kubelet stream, the slice publisher) thread-safely. GPUs
whose events cannot be registered keep being polled and carry an
"unmonitored" note (informational, not a verdict: see policy.py). Nothing
here may end the process: unexpected NVML answers are logged, rate-limited,
and the loops go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from ..inventory import Device, Gpu, Inventory
from ..nvml.deadline import DEFAULT_DEADLINE, GpuWorkers
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


WATCHDOG_INTERVAL = 0.25
REGISTRATION_RETRY_MAX = 60.0  # seconds between event registration attempts, at most


@dataclass(frozen=True)
class MonitorConfig:
    poll_interval: float = DEFAULT_POLL_INTERVAL
    wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS
    error_backoff: float = 0.5  # first pause after a failed wait (doubles, capped)
    event_mask: int = HEALTH_EVENT_MASK
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    deadline: float = DEFAULT_DEADLINE  # seconds one GPU's sample may take
    watchdog_interval: float = WATCHDOG_INTERVAL

    def __post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval}")
        if self.wait_timeout_ms <= 0:
            raise ValueError(f"wait_timeout_ms must be positive, got {self.wait_timeout_ms}")
        if self.deadline <= 0:
            raise ValueError(f"deadline must be positive, got {self.deadline}")
        if self.watchdog_interval <= 0:
            raise ValueError(f"watchdog_interval must be positive, got {self.watchdog_interval}")

    @property
    def event_stall_after(self) -> float:
        """Seconds without the event thread coming back that mean it is stuck."""
        return self.wait_timeout_ms / 1000 + self.deadline

    @property
    def poll_stall_after(self) -> float:
        """Seconds without a finished sample round that mean the poller is stuck."""
        return self.poll_interval + 2 * self.deadline + 1


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
    deadline_misses: int = 0  # GPU samples that overran the deadline
    late_answers: int = 0  # hung samples that came back after all
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
    """Owns the event thread, the poll task and the watchdog for one backend and inventory."""

    def __init__(
        self,
        backend: NvmlBackend,
        inventory: Inventory,
        board: HealthBoard,
        config: MonitorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        workers: GpuWorkers | None = None,
    ) -> None:
        self.config = config or MonitorConfig()
        self.policy = HealthPolicy(inventory, self.config.policy, clock)
        self.stats = MonitorStats()
        self._backend = backend
        self._inventory = inventory
        self._board = board
        self._clock = clock
        self._own_workers = workers is None
        self.workers = workers or GpuWorkers(clock)
        self._lock = threading.Lock()  # one writer of policy + board at a time
        self._counts_lock = threading.Lock()  # the per-GPU event counters vs. their readers
        self._gpu_by_uuid = {g.uuid: g.name for g in inventory.gpus}
        self._gpu_by_index = {g.index: g.name for g in inventory.gpus}
        self._devices = {g.uuid: (g.name, *(d.name for d in g.mig_devices)) for g in inventory.gpus}
        self._answered_once: set[str] = set()  # GPUs with a first good sample
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._lost_wait = False  # the next round attributes a GPU_IS_LOST wait
        self._event_progress = clock()  # the event thread came back from NVML
        self._poll_progress = clock()  # a sample round finished
        self._ratelimited = RateLimitedLog()
        self._set_failed = False  # the event set could not be created: retried with backoff

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Register for events, take a first sample of every GPU, then start the loops.

        The first round is awaited (within the deadline) so that what the
        plugin publishes first is a verdict, not a default.
        """
        self._loop = asyncio.get_running_loop()
        registered = await self._run_bounded(self._register, "event registration")
        if registered:
            self._event_progress = self._clock()
            self._thread = threading.Thread(
                target=self._event_loop, name="nvml-events", daemon=True
            )
            self._thread.start()
        await self._poll_round("first")
        self._tasks = [
            self._loop.create_task(self._poll_loop(), name="health-poll"),
            self._loop.create_task(self._watchdog(), name="health-watchdog"),
        ]
        if not registered and self._set_failed:
            self._tasks.append(
                self._loop.create_task(self._retry_registration(), name="health-register")
            )
        log.info(
            "health monitor started: %d GPU(s) with NVML events, poll every %gs, NVML deadline "
            "%gs, hold %gs, ignored XIDs %s",
            len(self._inventory.gpus) - self.stats.unmonitored_gpus,
            self.config.poll_interval,
            self.config.deadline,
            self.config.policy.hold_seconds,
            ",".join(map(str, sorted(self.config.policy.ignored_xids))) or "none",
        )

    async def _run_bounded(self, fn: Callable[[], bool], what: str) -> bool:
        """A start step in a daemon thread: a hung NVML must not hang the start forever."""
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            try:
                result = fn()
            except BaseException as e:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(e)  # unless its caller gave up
            else:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(result)

        threading.Thread(target=run, name=f"nvml-{what}", daemon=True).start()
        limit = 2 * self.config.deadline
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except TimeoutError:
            log.error(
                "NVML has not answered %s within %gs: devices are checked by polling only",
                what,
                limit,
            )
            for gpu in self._inventory.gpus:
                self._unmonitored(gpu.uuid, gpu.index, f"{what} did not answer")
            return False

    async def stop(self) -> None:
        """Stop the producers; returns within about one wait timeout, even with NVML hung."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        thread, self._thread = self._thread, None
        if thread is not None:
            limit = min(self.config.wait_timeout_ms / 1000 + 0.5, JOIN_TIMEOUT)
            until = time.monotonic() + limit
            while thread.is_alive() and time.monotonic() < until:
                await asyncio.sleep(0.02)
            if thread.is_alive():
                self._thread = thread  # event_thread_alive keeps telling the truth
                log.warning(
                    "the NVML event thread did not stop within %gs (NVML hung?); left behind",
                    limit,
                )
        if self._own_workers:
            self.workers.shutdown()

    def mig_created(self, device: Device) -> None:
        """Follow a MIG device created at prepare (dynamic MIG): Healthy, and its events hit it."""
        if device.mig is None or device.parent_uuid is None:
            return
        with self._lock:
            self.policy.add_mig(
                device.parent_uuid,
                device.name,
                device.mig.gpu_instance_id,
                device.mig.compute_instance_id,
            )
            self._board.add_device(device.name)

    def mig_destroyed(self, device_name: str, gpu_uuid: str) -> None:
        """Follow a MIG device destroyed at unprepare: it leaves the policy and the board."""
        with self._lock:
            self.policy.remove_mig(gpu_uuid, device_name)
            self._board.remove_device(device_name)

    def conditions(self, device: str) -> list[Condition]:
        """A device's active conditions (consistent: taken under the writers' lock)."""
        with self._lock:
            return self.policy.conditions(device)

    def follow(self, inventory: Inventory) -> set[str]:
        """Monitor a re-enumerated inventory from now on; returns the new device names.

        The board must already list the new devices (the caller adds them as
        Unknown): their first verdict comes from the sample round started here.
        A GPU that appeared after the event set was registered is checked by
        polling; its events are not delivered until the plugin restarts.
        """
        with self._lock:
            new = self.policy.follow(inventory)
            known = set(self._gpu_by_uuid)
            self._inventory = inventory
            self._gpu_by_uuid = {g.uuid: g.name for g in inventory.gpus}
            self._gpu_by_index = {g.index: g.name for g in inventory.gpus}
            self._devices = {
                g.uuid: (g.name, *(d.name for d in g.mig_devices)) for g in inventory.gpus
            }
            late = [g for g in inventory.gpus if g.uuid not in known]
            # The next good sample of a GPU with new devices publishes their verdicts
            # (as a first answer does): until then they read as not checked yet.
            touched = {uuid for uuid, names in self._devices.items() if new & set(names)}
            self._answered_once &= set(self._gpu_by_uuid) - touched
        for gpu in late:
            self._apply(
                partial(
                    self.policy.set_unmonitored,
                    gpu.uuid,
                    "appeared after start: checked by polling only",
                    gpu.index,
                )
            )
        self.wake()
        return new

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

    def wake(self) -> None:
        """Sample every GPU now (thread-safe)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

    # -- applying ----------------------------------------------------------------------

    def _apply(self, step: Callable[[], Outcome], also: set[str] | None = None) -> Outcome:
        """Run one policy step and hand the verdicts it may have changed to the board."""
        with self._lock:
            outcome = step()
            changed = outcome.changed | (also or set())
            if changed and self._board.update(self.policy.verdicts(changed)):
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
            if self._set_failed:  # a retry: the GPUs already say so
                log.debug("creating the NVML event set failed again: %s", e)
                return False
            self._set_failed = True
            log.warning(
                "cannot create the NVML event set (%s): devices are checked by polling only "
                "(registration is retried)",
                e,
            )
            for gpu in gpus:
                self._unmonitored(gpu.uuid, gpu.index, f"event set: {e}")
            return False
        if self._set_failed:  # a retry that worked: the notes of the first attempt go
            self._set_failed = False
            self.stats.unmonitored_gpus = 0
            for gpu in gpus:
                self._apply(partial(self.policy.set_note, gpu.uuid, "", gpu.index))
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

    async def _retry_registration(self) -> None:
        """The event set could not be created at start: try again, backing off to a minute."""
        delay = self.config.error_backoff
        attempt = 1
        while not self._stopping.is_set():
            await asyncio.sleep(delay)
            delay = min(delay * 2, REGISTRATION_RETRY_MAX)
            attempt += 1
            try:
                registered = await self._run_bounded(self._register, "event registration")
            except Exception:
                log.exception("BUG: retrying NVML event registration")
                continue
            if not self._set_failed:
                if registered and not self._stopping.is_set():
                    self._event_progress = self._clock()
                    self._thread = threading.Thread(
                        target=self._event_loop, name="nvml-events", daemon=True
                    )
                    self._thread.start()
                    log.info("NVML events registered at attempt %d", attempt)
                return

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
                self._event_progress = self._clock()
                self.stats.lost_waits += 1
                self._lost_wait = True
                self.wake()  # a sample round finds which GPU it was
                failures += 1
                if failures > 1:  # a library that keeps answering LOST: do not spin
                    self._pause(failures)
                continue
            except Exception as e:
                self._event_progress = self._clock()
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
            self._event_progress = self._clock()
            failures = 0
            try:
                if event is not None:
                    self._count(event)
                    self._apply(partial(self.policy.on_event, event))
                    if event.event_type & EVENT_GPU_RECOVERY_ACTION:
                        self.wake()  # read the action with a sample: it may clear conditions
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
        # Capped below the watchdog's limit: a thread that is alive and retrying is not stuck.
        cap = min(ERROR_BACKOFF_MAX, self.config.event_stall_after / 2)
        self._stopping.wait(min(self.config.error_backoff * 2 ** (failures - 1), cap))

    # -- polling -----------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            await self._poll_round("poll")

    async def poll_once(self) -> list[HealthSample] | None:
        """One sample round of every GPU, applied (tests and benchmarks)."""
        return await self._poll_round("poll")

    async def _poll_round(self, why: str) -> list[HealthSample] | None:
        """Sample every GPU on its own worker, wait at most the deadline, apply.

        Returns the samples that answered (None when every started one failed).
        """
        loop = asyncio.get_running_loop()
        lost_wait, self._lost_wait = self._lost_wait, False
        sampled_at = self._clock()
        deadline = self.config.deadline
        started: dict[str, tuple[Gpu, asyncio.Future[HealthSample]]] = {}
        for gpu in self._inventory.gpus:
            if self.workers.busy_since(gpu.uuid) is not None:
                continue  # its last sample is still inside NVML: never a second one
            cf = self.workers.submit(
                gpu.uuid, self._backend.health_sample_gpu, gpu.index, what="health sample"
            )
            cf.add_done_callback(partial(self._sample_returned, loop, gpu, sampled_at))
            started[gpu.uuid] = (gpu, asyncio.wrap_future(cf))
        if started:
            await asyncio.wait([f for _, f in started.values()], timeout=deadline)
        samples: list[HealthSample] = []
        errors = 0
        for _gpu, fut in started.values():
            if not fut.done():
                continue
            exc = fut.exception()
            if exc is None:
                samples.append(fut.result())
            else:
                errors += 1
                self._sample_failed(exc, why)
        self._mark_unresponsive()
        self.stats.polls += 1
        self._poll_progress = self._clock()
        if samples:
            self._apply_samples(samples, sampled_at)
        if lost_wait and not any(s.rc == ERROR_GPU_IS_LOST for s in samples):
            self._ratelimited(
                "lost-unattributed",
                logging.WARNING,
                "the NVML event wait reported a lost GPU, but every GPU answers its health "
                "sample; no device marked",
            )
        if errors and not samples:
            return None
        return samples

    def _sample_failed(self, exc: BaseException, why: str) -> None:
        self.stats.poll_errors += 1
        self._ratelimited(
            f"sample:{type(exc).__name__}:{getattr(exc, 'code', '')}",
            logging.WARNING,
            f"health sample ({why}) failed: {exc}; device health unchanged",
            exc_info=not isinstance(exc, NvmlError),
        )

    def _apply_samples(self, samples: list[HealthSample], sampled_at: float) -> None:
        answered = [s.uuid for s in samples if s.rc == SUCCESS]
        self._board.mark_checked(name for uuid in answered for name in self._devices[uuid])
        first = set(answered) - self._answered_once
        self._answered_once |= first
        # A GPU's first good answer publishes its verdict even when it found nothing.
        fresh = {name for uuid in first for name in self._devices[uuid]}
        try:
            self._apply(partial(self.policy.on_samples, samples, sampled_at), also=fresh)
        except Exception:  # a bug: log it, keep polling
            self._ratelimited("apply", logging.ERROR, "BUG: applying a sample", exc_info=True)

    def _mark_unresponsive(self, refresh: bool = True) -> None:
        """Every GPU whose running job is past the deadline reads Unknown.

        refresh=False (the watchdog) only adds newly stuck GPUs; the poll round
        refreshes "for N s" of the others once per interval, not every tick.
        """
        for gpu in self._inventory.gpus:
            stuck = self.workers.stuck(gpu.uuid, self.config.deadline)
            if stuck is None:
                continue
            since, what = stuck
            if self.policy.unresponsive(gpu.uuid) is None:
                self.stats.deadline_misses += 1
            elif not refresh:
                continue
            self._apply(partial(self.policy.set_unresponsive, gpu.uuid, since, what, gpu.index))

    def _sample_returned(
        self,
        loop: asyncio.AbstractEventLoop,
        gpu: Gpu,
        sampled_at: float,
        cf: concurrent.futures.Future[HealthSample],
    ) -> None:
        """(worker thread) A sample came back; if its GPU was unresponsive, say so now."""
        if self.policy.unresponsive(gpu.uuid) is None or cf.cancelled():
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: shutting down
            loop.call_soon_threadsafe(self._late_answer, gpu, sampled_at, cf)

    def _late_answer(
        self, gpu: Gpu, sampled_at: float, cf: concurrent.futures.Future[HealthSample]
    ) -> None:
        """(event loop) A hung sample returned: the GPU answers; apply it, sample afresh."""
        self.stats.late_answers += 1
        self._apply(partial(self.policy.set_answered, gpu.uuid, gpu.index))
        exc = cf.exception()
        if exc is None:
            self._apply_samples([cf.result()], sampled_at)
        else:
            self._sample_failed(exc, "late answer")
        self._wake.set()

    # -- watchdog ----------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Every device goes Unknown while the event thread or the poller is stuck."""
        cfg = self.config
        last = self._clock()
        while not self._stopping.is_set():
            await asyncio.sleep(cfg.watchdog_interval)
            now = self._clock()
            if now - last > cfg.watchdog_interval + cfg.deadline:
                # The event loop itself was held up (a slow synchronous step, e.g. an
                # import at start): the poller could not run either. Sample now and
                # judge it from here, not from before the hold-up.
                self._poll_progress = max(self._poll_progress, now - cfg.poll_interval)
                self._wake.set()
            last = now
            if self._thread is not None:
                quiet = now - self._event_progress
                if quiet > cfg.event_stall_after:
                    self._apply(
                        partial(
                            self.policy.set_stalled,
                            "events",
                            self._event_progress,
                            "the NVML event wait has not returned",
                        )
                    )
                else:
                    self._apply(partial(self.policy.clear_stalled, "events"))
            if now - self._poll_progress > cfg.poll_stall_after:
                self._apply(
                    partial(
                        self.policy.set_stalled,
                        "poll",
                        self._poll_progress,
                        "no health sample round has finished",
                    )
                )
            else:
                self._apply(partial(self.policy.clear_stalled, "poll"))
            # A GPU stuck past its deadline between rounds is noticed here too.
            self._mark_unresponsive(refresh=False)
