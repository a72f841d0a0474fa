"""Both DRAResourceHealth versions (v1, v1alpha1) stream from one board, and
last_updated_time is the time of each device's last successful check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.kubelet.health import HealthServicer
from dra_driver.kubelet.proto import drahealth_v1_pb2 as pb_v1
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as pb_v1alpha1
from dra_driver.kubelet.registration import supported_services
from dra_driver.kubelet.server import SocketServer
from dra_driver.kubelet.stubs import add_health_v1, add_health_v1alpha1
from dra_driver.testing.kubelet import DraClient

DEVICES = ["gpu-0", "gpu-1"]


@pytest.fixture
def board() -> HealthBoard:
    return HealthBoard(DEVICES)


@pytest.fixture
def servicer(board: HealthBoard) -> HealthServicer:
    return HealthServicer(board, "node-a", resend_interval=0.2, timeout_seconds=30)


@pytest.fixture
async def endpoint(short_dir: Path, servicer: HealthServicer) -> AsyncIterator[Path]:
    def add(server: object) -> None:
        add_health_v1(servicer.v1, server)
        add_health_v1alpha1(servicer.v1alpha1, server)

    srv = SocketServer("dra", short_dir / "dra.sock", add)
    await srv.start()
    yield srv.path
    servicer.close()
    await srv.stop(1)


def test_both_versions_are_advertised_v1_first() -> None:
    services = supported_services(health=True)
    assert services.index("v1.DRAResourceHealth") < services.index("v1alpha1.DRAResourceHealth")
    assert "v1.DRAResourceHealth" not in supported_services(health=False)


@pytest.mark.parametrize("version", ["v1", "v1alpha1"])
async def test_each_version_streams_the_same_board(
    endpoint: Path, board: HealthBoard, servicer: HealthServicer, version: str
) -> None:
    pb = pb_v1 if version == "v1" else pb_v1alpha1
    async with DraClient(endpoint) as client:
        stream = client.watch_health(version)
        first = await anext(stream)
        assert type(first) is pb.NodeWatchResourcesResponse
        board.update([DeviceHealth("gpu-1", Health.UNHEALTHY, "XID 79", "xid-79")])
        second = await asyncio.wait_for(anext(stream), 1.0)
        await stream.aclose()
    got = {d.device.device_name: (d.health, d.message) for d in second.devices}
    assert got == {"gpu-0": (pb.HEALTHY, ""), "gpu-1": (pb.UNHEALTHY, "XID 79")}


async def test_v1_and_v1alpha1_watchers_at_once_see_every_change(
    endpoint: Path, board: HealthBoard, servicer: HealthServicer
) -> None:
    async with DraClient(endpoint) as client:
        s1, s2 = client.watch_health("v1"), client.watch_health("v1alpha1")
        await anext(s1)
        await anext(s2)
        assert servicer.active_streams == 2
        board.update([DeviceHealth("gpu-0", Health.UNKNOWN, "NVML has not answered for 5 s")])
        m1, m2 = await asyncio.gather(
            asyncio.wait_for(anext(s1), 1.0), asyncio.wait_for(anext(s2), 1.0)
        )
        await s1.aclose()
        await s2.aclose()
    assert m1.SerializeToString() == m2.SerializeToString()  # identical wire bytes


async def test_last_updated_time_is_the_last_check_not_the_resend(
    endpoint: Path, board: HealthBoard
) -> None:
    checked = time.time() - 120  # checks stopped two minutes ago
    board.mark_checked(["gpu-0"], checked)  # never moves backwards: no effect
    old = {d.device: d.checked_at for d in board.snapshot()}
    async with DraClient(endpoint) as client:
        stream = client.watch_health("v1")
        await anext(stream)
        board.mark_checked(["gpu-1"], old["gpu-1"] + 5)
        resent = await asyncio.wait_for(anext(stream), 1.0)  # the 0.2 s resend
        await stream.aclose()
    times = {d.device.device_name: d.last_updated_time for d in resent.devices}
    assert times == {"gpu-0": int(old["gpu-0"]), "gpu-1": int(old["gpu-1"] + 5)}


def test_a_verdict_moves_the_check_time_forward_only() -> None:
    board = HealthBoard(["gpu-0"])
    t0 = board.snapshot()[0].checked_at
    assert not board.update([DeviceHealth("gpu-0", Health.HEALTHY, checked_at=t0 + 10)])
    assert board.snapshot()[0].checked_at == t0 + 10  # quiet: nothing changed but the time
    assert board.update([DeviceHealth("gpu-0", Health.UNKNOWN, "x", checked_at=t0 - 10)])
    assert board.snapshot()[0].checked_at == t0 + 10


def test_check_interval_keeps_the_timeout_above_three_checks(board: HealthBoard) -> None:
    s = HealthServicer(board, "n", resend_interval=5, timeout_seconds=30, check_interval=20)
    assert s.timeout_seconds == 60
