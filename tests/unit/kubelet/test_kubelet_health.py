"""DRAResourceHealth servicer over a real grpc.aio unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.kubelet.health import HealthServicer
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as pb
from dra_driver.kubelet.server import SocketServer
from dra_driver.kubelet.stubs import add_health_v1alpha1, health_v1alpha1_stub
from dra_driver.testing import DraClient

DEVICES = ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]


@pytest.fixture
def board() -> HealthBoard:
    return HealthBoard(DEVICES)


@pytest.fixture
def servicer(board: HealthBoard) -> HealthServicer:
    return HealthServicer(board, "node-a", resend_interval=0.3, timeout_seconds=30)


@pytest.fixture
async def endpoint(short_dir: Path, servicer: HealthServicer) -> AsyncIterator[Path]:
    srv = SocketServer("dra", short_dir / "dra.sock", lambda s: add_health_v1alpha1(servicer, s))
    await srv.start()
    yield srv.path
    servicer.close()
    await srv.stop(1)


def by_name(msg: pb.NodeWatchResourcesResponse) -> dict[str, pb.DeviceHealth]:
    return {d.device.device_name: d for d in msg.devices}


async def test_full_list_on_subscribe(endpoint: Path) -> None:
    before = int(time.time())
    async with DraClient(endpoint) as client:
        stream = client.watch_health()
        first = await anext(stream)
        await stream.aclose()
    devices = by_name(first)
    assert sorted(devices) == DEVICES
    for d in devices.values():
        assert d.device.pool_name == "node-a"
        assert d.health == pb.HEALTHY
        assert d.last_updated_time >= before
        assert d.health_check_timeout_seconds == 30
        assert d.message == ""


async def test_change_is_pushed_with_state_mapping(endpoint: Path, board: HealthBoard) -> None:
    async with DraClient(endpoint) as client:
        stream = client.watch_health()
        await anext(stream)
        board.update(
            [
                DeviceHealth("gpu-0", Health.DEGRADED, "ECC row remap pending"),
                DeviceHealth("gpu-1", Health.UNHEALTHY, "XID 79: fell off the bus"),
                DeviceHealth("gpu-2", Health.UNKNOWN, "NVML not answering"),
            ]
        )
        started = time.monotonic()
        msg = await asyncio.wait_for(anext(stream), 1.0)
        latency = time.monotonic() - started
        await stream.aclose()
    assert latency < 0.25  # pushed on change, not at the 0.3 s resend
    d = by_name(msg)
    assert (d["gpu-0"].health, d["gpu-0"].message) == (pb.HEALTHY, "ECC row remap pending")
    assert (d["gpu-1"].health, d["gpu-1"].message) == (pb.UNHEALTHY, "XID 79: fell off the bus")
    assert d["gpu-2"].health == pb.UNKNOWN
    assert (d["gpu-3"].health, d["gpu-3"].message) == (pb.HEALTHY, "")


async def test_periodic_resend_without_changes(endpoint: Path) -> None:
    async with DraClient(endpoint) as client:
        stream = client.watch_health()
        await anext(stream)
        t0 = time.monotonic()
        second = await asyncio.wait_for(anext(stream), 2.0)
        third = await asyncio.wait_for(anext(stream), 2.0)
        elapsed = time.monotonic() - t0
        await stream.aclose()
    assert 0.45 < elapsed < 1.5  # two resends at ~0.3 s each
    assert sorted(by_name(second)) == DEVICES == sorted(by_name(third))


async def test_long_message_truncated_to_1024_bytes(endpoint: Path, board: HealthBoard) -> None:
    board.update([DeviceHealth("gpu-0", Health.DEGRADED, "é" * 2000)])
    async with DraClient(endpoint) as client:
        stream = client.watch_health()
        msg = by_name(await anext(stream))["gpu-0"].message
        await stream.aclose()
    assert len(msg.encode()) <= 1024
    assert msg.endswith("...") and msg.startswith("é" * 500)


def test_timeout_always_exceeds_resend(board: HealthBoard) -> None:
    assert HealthServicer(board, "n", resend_interval=10, timeout_seconds=30).timeout_seconds == 30
    assert HealthServicer(board, "n", resend_interval=11, timeout_seconds=30).timeout_seconds == 33
    assert HealthServicer(board, "n", resend_interval=1, timeout_seconds=5).timeout_seconds == 5


async def test_close_ends_streams(endpoint: Path, servicer: HealthServicer) -> None:
    async with DraClient(endpoint) as client:
        stream = client.watch_health()
        await anext(stream)
        servicer.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 1.0)


async def test_vanished_watchers_leak_nothing(endpoint: Path, servicer: HealthServicer) -> None:
    await asyncio.sleep(0.05)
    baseline_tasks = len(asyncio.all_tasks())
    channel = grpc.aio.insecure_channel(f"unix:{endpoint}")
    stub = health_v1alpha1_stub(channel)
    calls = [stub.NodeWatchResources(pb.NodeWatchResourcesRequest()) for _ in range(100)]
    await asyncio.gather(*(call.read() for call in calls))
    assert servicer.active_streams == 100
    await channel.close(None)  # the client vanishes without cancelling its calls one by one
    deadline = time.monotonic() + 3
    while servicer.active_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert servicer.active_streams == 0
    await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= baseline_tasks
