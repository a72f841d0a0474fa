"""Deadlines for NVML jobs, above both backends: no caller waits on NVML forever.

A GPU that fell off the bus can block NVML calls on it for minutes, and a
native call cannot be interrupted. So every per-GPU job runs in that GPU's
own worker thread (a daemon: it never holds up process exit), and callers
wait for it with a deadline:

* a job that overruns is abandoned by its caller (NvmlDeadlineError), never
  killed; the GPU's worker stays inside that call, and no other job is
  started on that GPU until it returns (queued ones wait, and lapse when
  their own deadline passes first);
* a job for a GPU whose worker is already stuck past a deadline fails at
  once, saying for how long NVML has not answered, instead of queueing;
* other GPUs have other workers, so one wedged GPU delays nobody else.

GuardedNvml applies this to the calls made on behalf of claims (compute
mode) and to health samples; the health monitor reads busy_since() to tell
a hung GPU from a slow answer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ERROR_TIMEOUT, NvmlDeadlineError
from .types import (
    HEALTH_EVENT_MASK,
    BackendInfo,
    EventRegistration,
    HealthSample,
    NvmlBackend,
    NvmlEvent,
    NvmlSnapshot,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_DEADLINE = 5.0  # seconds an NVML job on one GPU may take


@dataclass
class _Job:
    future: concurrent.futures.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    what: str


class _Worker:
    """One daemon thread running one key's jobs in order."""

    def __init__(self, key: str, clock: Callable[[], float]) -> None:
        self.key = key
        self._clock = clock
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running: tuple[float, str] | None = None  # (started, what)
        self._thread = threading.Thread(target=self._run, name=f"nvml-{key[:20]}", daemon=True)
        self._thread.start()

    def running(self) -> tuple[float, str] | None:
        with self._lock:
            return self._running

    def put(self, job: _Job | None) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started
            with self._lock:
                self._running = (self._clock(), job.what)
            try:
                result = job.fn(*job.args)
            except BaseException as e:  # handed to the caller, whatever it is
                self._idle()
                job.future.set_exception(e)
            else:
                self._idle()
                job.future.set_result(result)

    def _idle(self) -> None:
        # Before the future completes: whoever it wakes sees this worker free.
        with self._lock:
            self._running = None


class GpuWorkers:
    """Per-key (per-GPU) worker threads; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._closed = False

    def _worker(self, key: str) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("NVML workers are shut down")
            w = self._workers.get(key)
            if w is None:
                w = self._workers[key] = _Worker(key, self._clock)
            return w

    def busy_since(self, key: str) -> tuple[float, str] | None:
        """(monotonic start, job) of the job running for key now, or None when idle."""
        with self._lock:
            w = self._workers.get(key)
        return w.running() if w is not None else None

    def stuck(self, key: str, deadline: float) -> tuple[float, str] | None:
        """The running job of key when it has run past deadline, else None."""
        running = self.busy_since(key)
        if running is not None and self._clock() - running[0] > deadline:
            return running
        return None

    def submit(
        self, key: str, fn: Callable[..., T], *args: Any, what: str = ""
    ) -> concurrent.futures.Future[T]:
        """Queue fn(*args) on key's worker; the future completes when it returns."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._worker(key).put(_Job(future, fn, args, what or getattr(fn, "__name__", "call")))
        return future

    def call(
        self, key: str, deadline: float, fn: Callable[..., T], *args: Any, what: str = ""
    ) -> T:
        """Run fn(*args) on key's worker and wait at most deadline seconds (blocking).

        Raises NvmlDeadlineError when it overruns, or at once when key's worker
        is already stuck past the deadline in an earlier job.
        """
        what = what or getattr(fn, "__name__", "call")
        stuck = self.stuck(key, deadline)
        if stuck is not None:
            raise not_answering(key, self._clock() - stuck[0], stuck[1], what)
        future = self.submit(key, fn, *args, what=what)
        try:
            return future.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            future.cancel()  # if it never started, it never will
            raise NvmlDeadlineError(
                ERROR_TIMEOUT,
                f"NVML has not answered within {deadline:g} s ({what} on {key}); "
                "the call is abandoned, the GPU is considered unresponsive",
                what,
            ) from None

    def shutdown(self) -> None:
        """Stop idle workers; a worker stuck in NVML is left to process exit (a daemon)."""
        with self._lock:
            self._closed = True
            workers, self._workers = list(self._workers.values()), {}
        for w in workers:
            w.put(None)


def not_answering(key: str, seconds: float, running: str, what: str) -> NvmlDeadlineError:
    return NvmlDeadlineError(
        ERROR_TIMEOUT,
        f"NVML has not answered for {seconds:.0f} s on {key} ({running} still running); "
        f"{what} not started",
        what,
    )


class GuardedNvml:
    """An NvmlBackend whose per-GPU calls run on per-GPU workers with a deadline.

    Device-wide jobs that run once at start (inventory, event registration)
    and the event wait (bounded by its own timeout, watched by the health
    monitor) go straight to the backend.
    """

    def __init__(
        self,
        backend: NvmlBackend,
        workers: GpuWorkers,
        deadline: float = DEFAULT_DEADLINE,
        uuids: Iterable[tuple[int, str]] = (),
    ) -> None:
        if deadline <= 0:
            raise ValueError(f"the NVML deadline must be positive, got {deadline}")
        self.backend = backend
        self.workers = workers
        self.deadline = deadline
        self.name = backend.name
        self.info: BackendInfo = backend.info
        self._uuid_by_index = dict(uuids)

    def key_of(self, index: int) -> str:
        return self._uuid_by_index.get(index, f"gpu-index-{index}")

    def inventory(self) -> NvmlSnapshot:
        snapshot = self.backend.inventory()
        self._uuid_by_index = {g.index: g.uuid for g in snapshot.gpus}
        return snapshot

    def health_sample_gpu(self, index: int) -> HealthSample:
        return self.workers.call(
            self.key_of(index),
            self.deadline,
            self.backend.health_sample_gpu,
            index,
            what="health sample",
        )

    def health_sample(self) -> list[HealthSample]:
        """Every known GPU in parallel; a GPU that overruns raises (the others are lost)."""
        futures = [
            (index, self.workers.submit(key, self.backend.health_sample_gpu, index))
            for index, key in sorted(self._uuid_by_index.items())
        ]
        done, _ = concurrent.futures.wait([f for _, f in futures], timeout=self.deadline)
        for index, f in futures:
            if f not in done:
                raise NvmlDeadlineError(
                    ERROR_TIMEOUT,
                    f"NVML has not answered within {self.deadline:g} s "
                    f"(health sample of GPU {index})",
                    "health sample",
                )
        return [f.result() for _, f in futures]

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        return self.backend.register_events(mask)

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        return self.backend.wait_event(timeout_ms)

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        self.workers.call(
            gpu_uuid,
            self.deadline,
            self.backend.set_compute_mode,
            gpu_uuid,
            mode,
            what="nvmlDeviceSetComputeMode",
        )

    def close(self, timeout: float | None = None) -> bool:
        self.workers.shutdown()
        return self.backend.close(timeout)
