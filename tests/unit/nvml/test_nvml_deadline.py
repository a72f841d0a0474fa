"""GpuWorkers / GuardedNvml: every per-GPU NVML job has a deadline, a hung GPU
stalls only itself, and no second job starts on a GPU until the hung one returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from dra_driver.nvml.deadline import GpuWorkers, GuardedNvml
from dra_driver.nvml.errors import ERROR_TIMEOUT, NvmlDeadlineError, NvmlError
from dra_driver.nvml.types import BackendInfo


@pytest.fixture
def workers() -> Iterator[GpuWorkers]:
    w = GpuWorkers()
    yield w
    w.shutdown()


def test_a_job_answers_through_its_workers(workers: GpuWorkers) -> None:
    assert workers.call("gpu-a", 1.0, lambda x: x * 2, 21) == 42
    with pytest.raises(ValueError, match="boom"):
        workers.call("gpu-a", 1.0, lambda: (_ for _ in ()).throw(ValueError("boom")))


def test_an_overrun_is_abandoned_at_the_deadline_and_blocks_only_its_gpu(
    workers: GpuWorkers,
) -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(NvmlDeadlineError) as e:
        workers.call("gpu-a", 0.2, release.wait, what="health sample")
    assert 0.19 < time.monotonic() - started < 0.6
    assert e.value.code == ERROR_TIMEOUT and "within 0.2 s" in str(e.value)
    assert workers.busy_since("gpu-a") is not None
    # The hung GPU refuses at once, naming what it is stuck in ...
    t0 = time.monotonic()
    with pytest.raises(NvmlDeadlineError, match=r"has not answered for \d+ s .*health sample"):
        workers.call("gpu-a", 0.1, lambda: "never", what="set compute mode")
    assert time.monotonic() - t0 < 0.05
    # ... while another GPU answers as usual.
    assert workers.call("gpu-b", 0.5, lambda: "ok") == "ok"
    release.set()
    deadline = time.monotonic() + 2
    while workers.busy_since("gpu-a") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.call("gpu-a", 0.5, lambda: "back") == "back"


def test_a_queued_job_that_lapsed_never_runs(workers: GpuWorkers) -> None:
    release = threading.Event()
    ran: list[str] = []
    workers.submit("gpu-a", release.wait)  # the GPU is busy (not yet past any deadline)
    with pytest.raises(NvmlDeadlineError):
        workers.call("gpu-a", 0.1, lambda: ran.append("late"))
    release.set()
    time.sleep(0.1)
    assert ran == []  # given up before it started: never run after


class SlowBackend:
    """Just enough NvmlBackend for GuardedNvml.set_compute_mode."""

    name = "slow"
    info = BackendInfo("slow", "none")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[str, int]] = []

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        self.calls.append((gpu_uuid, mode))
        if gpu_uuid == "GPU-hung":
            self.release.wait()


def test_compute_mode_on_a_hung_gpu_fails_in_time_with_a_clear_error(
    workers: GpuWorkers,
) -> None:
    backend = SlowBackend()
    guarded = GuardedNvml(backend, workers, deadline=0.2)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(NvmlError) as e:
        guarded.set_compute_mode("GPU-hung", 0)
    assert time.monotonic() - started < 0.6
    assert "nvmlDeviceSetComputeMode" in str(e.value) and "has not answered" in str(e.value)
    guarded.set_compute_mode("GPU-fine", 0)  # other GPUs are unaffected
    assert backend.calls == [("GPU-hung", 0), ("GPU-fine", 0)]
    backend.release.set()


def test_workers_are_daemons_and_refuse_work_after_shutdown() -> None:
    w = GpuWorkers()
    w.submit("gpu-a", lambda: None).result(1)
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("nvml-gpu-a"))
    w.shutdown()
    with pytest.raises(RuntimeError):
        w.submit("gpu-a", lambda: None)


def test_a_deadline_must_be_positive(workers: GpuWorkers) -> None:
    with pytest.raises(ValueError):
        GuardedNvml(SlowBackend(), workers, deadline=0)  # type: ignore[arg-type]
