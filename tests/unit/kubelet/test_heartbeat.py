"""The heartbeat behind `dra-driver probe`: NVML's last answer is never made up."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import pytest

from dra_driver.heartbeat import Beat, Heartbeat, HeartbeatError, read, write


def test_round_trip_mode_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    old = os.umask(0)
    try:
        write(path, Beat(pid=7, written_at=2.0, nvml_answered_at=1.5, registered=True))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read(path) == Beat(7, 2.0, 1.5, True)
    path.write_text("[]")
    with pytest.raises(HeartbeatError, match="not a heartbeat file"):
        read(path)
    path.unlink()
    with pytest.raises(HeartbeatError, match="does not exist"):
        read(path)


async def test_monitor_polls_advance_the_answer_time(tmp_path: Path) -> None:
    now = [100.0]
    polls = [3]
    hb = Heartbeat(
        tmp_path / "hb",
        sample=lambda: None,
        polls=lambda: polls[0],
        registered=lambda: False,
        clock=lambda: now[0],
    )
    assert hb.nvml_answered_at == 100.0  # the inventory read at start
    now[0] = 130.0
    hb.observe()
    assert hb.nvml_answered_at == 100.0  # no poll succeeded meanwhile: the age grows
    polls[0] = 4
    now[0] = 131.0
    hb.observe()
    assert hb.nvml_answered_at == 131.0


async def test_own_samples_without_a_monitor_and_never_two_at_once(tmp_path: Path) -> None:
    release = threading.Event()
    calls: list[int] = []

    def hung_sample() -> None:
        calls.append(1)
        release.wait(5)

    hb = Heartbeat(
        tmp_path / "hb",
        sample=hung_sample,
        polls=None,
        registered=lambda: True,
        write_interval=0.01,
        own_sample_interval=0.0,
    )
    started = hb.nvml_answered_at
    task = asyncio.create_task(hb.run())
    await asyncio.sleep(0.3)
    assert len(calls) == 1  # the hung sample is not stacked with more threads
    assert hb.nvml_answered_at == started
    assert read(tmp_path / "hb").registered is True
    release.set()
    for _ in range(100):
        if hb.nvml_answered_at > started:
            break
        await asyncio.sleep(0.01)
    assert hb.nvml_answered_at > started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / "hb").exists()  # a stopped plugin leaves no fresh-looking file


async def test_a_failing_sample_does_not_count(tmp_path: Path) -> None:
    def broken() -> None:
        raise RuntimeError("NVML_ERROR_GPU_IS_LOST")

    hb = Heartbeat(
        tmp_path / "hb",
        sample=broken,
        polls=None,
        registered=lambda: False,
        write_interval=0.01,
        own_sample_interval=0.0,
    )
    started = hb.nvml_answered_at
    task = asyncio.create_task(hb.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hb.nvml_answered_at == started
