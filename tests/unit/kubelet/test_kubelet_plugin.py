"""KubeletPlugin in-process: registration answers, socket upkeep, re-registration, shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dra_driver.health.board import HealthBoard
from dra_driver.kubelet.options import PluginConfig, PluginOptions
from dra_driver.kubelet.plugin import KubeletPlugin
from dra_driver.kubelet.sockets import SocketInUseError, SocketPathError
from dra_driver.prepare.types import ClaimRef, PrepareResult, UnprepareResult
from dra_driver.testing.kubelet import (
    DraClient,
    RegistrationClient,
    RegistrationError,
    file_id,
    register,
    select_service,
    wait_for_socket,
)

FAST = PluginOptions(
    health_resend_interval=0.5,
    socket_poll_interval=0.05,
    registration_backoff=0.1,
    registration_backoff_max=0.4,
    shutdown_grace=1.0,
)


class NullPreparer:
    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return {c.uid: PrepareResult() for c in claims}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        return {c.uid: UnprepareResult() for c in claims}


def make_settings(root: Path, health: bool = True) -> PluginConfig:
    return PluginConfig(
        driver_name="gpu.nvidia.com",
        node_name="node-a",
        plugins_dir=root / "plugins",
        registry_dir=root / "registry",
        health=health,
    )


@pytest.fixture
def settings(short_dir: Path) -> PluginConfig:
    return make_settings(short_dir)


@pytest.fixture
async def plugin(settings: PluginConfig) -> AsyncIterator[KubeletPlugin]:
    p = KubeletPlugin(settings, NullPreparer(), HealthBoard(["gpu-0"]), FAST)
    await p.start()
    yield p
    await p.stop()


async def test_get_info_and_kubelet_validation(
    plugin: KubeletPlugin, settings: PluginConfig
) -> None:
    sock = await wait_for_socket(settings.registry_dir, timeout=1)
    assert sock == settings.registration_socket
    async with RegistrationClient(sock) as client:
        info = await client.get_info()
        again = await client.get_info()
    assert info == again
    assert info.type == "DRAPlugin"
    assert info.name == "gpu.nvidia.com"
    assert info.endpoint == str(settings.dra_socket)
    assert list(info.supported_versions) == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    reg = await register(sock)
    assert (reg.service, reg.endpoint) == ("v1.DRAPlugin", settings.dra_socket)
    await asyncio.wait_for(plugin.registered.wait(), 1)
    async with DraClient.for_registration(reg) as dra:
        assert len((await dra.prepare([])).claims) == 0


async def test_health_off_is_not_advertised(short_dir: Path) -> None:
    settings = make_settings(short_dir, health=False)
    p = KubeletPlugin(settings, NullPreparer(), HealthBoard(["gpu-0"]), FAST)
    await p.start()
    try:
        async with RegistrationClient(settings.registration_socket) as client:
            info = await client.get_info()
        assert list(info.supported_versions) == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    finally:
        await p.stop()


def test_kubelet_service_selection() -> None:
    assert select_service(["v1alpha1.DRAResourceHealth", "v1beta1.DRAPlugin"]) == (
        "v1beta1.DRAPlugin"
    )
    with pytest.raises(RegistrationError, match="empty list"):
        select_service([])
    with pytest.raises(RegistrationError, match="none of services"):
        select_service(["v1alpha4.NodeService"])


async def test_deleted_registration_socket_is_recreated(
    plugin: KubeletPlugin, settings: PluginConfig
) -> None:
    old = file_id(settings.registration_socket)
    os.unlink(settings.registration_socket)
    new_sock = await wait_for_socket(settings.registry_dir, timeout=1.0)
    assert file_id(new_sock) != old
    reg = await register(new_sock)
    assert reg.name == "gpu.nvidia.com"


async def test_deleted_dra_socket_is_recreated_and_serves(
    plugin: KubeletPlugin, settings: PluginConfig
) -> None:
    os.unlink(settings.dra_socket)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while not settings.dra_socket.exists():
        assert loop.time() < deadline, "dra.sock not re-created within 1 s"
        await asyncio.sleep(0.02)
    async with DraClient(settings.dra_socket) as dra:
        resp = await dra.prepare([ClaimRef("ns", "u1", "c")])
    assert resp.claims["u1"].error == ""


async def test_refused_registration_recreates_socket_with_backoff(
    plugin: KubeletPlugin, settings: PluginConfig
) -> None:
    sock = settings.registration_socket
    for _ in range(3):  # 0.1 s, 0.2 s, 0.4 s (capped)
        old = file_id(sock)
        async with RegistrationClient(sock) as client:
            await client.notify(False, "endpoint already registered")
        await wait_for_socket(settings.registry_dir, timeout=2.0, replacing=old)
    assert plugin._backoff == pytest.approx(0.4)
    reg = await register(sock)
    assert reg.service == "v1.DRAPlugin"
    await asyncio.wait_for(plugin.registered.wait(), 1)
    assert plugin._backoff == pytest.approx(0.1)  # reset by a successful registration


async def test_stale_socket_is_replaced(settings: PluginConfig) -> None:
    settings.registry_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(settings.registration_socket))
    stale.close()  # bound, never listening: connect() is refused
    p = KubeletPlugin(settings, NullPreparer(), None, FAST)
    await p.start()
    try:
        await register(settings.registration_socket)
    finally:
        await p.stop()
    assert not settings.registration_socket.exists()


async def test_live_socket_of_another_instance_is_refused(settings: PluginConfig) -> None:
    first = KubeletPlugin(settings, NullPreparer(), None, FAST)
    await first.start()
    try:
        second = KubeletPlugin(settings, NullPreparer(), None, FAST)
        with pytest.raises(SocketInUseError, match="live socket"):
            await second.start()
        await register(settings.registration_socket)  # the first one is untouched
    finally:
        await first.stop()


async def test_regular_file_at_socket_path_is_refused(settings: PluginConfig) -> None:
    settings.registry_dir.mkdir(parents=True)
    settings.registration_socket.write_text("not a socket")
    p = KubeletPlugin(settings, NullPreparer(), None, FAST)
    with pytest.raises(SocketPathError, match="refusing to delete"):
        await p.start()
    assert settings.registration_socket.read_text() == "not a socket"
    assert not settings.dra_socket.exists()  # the DRA server was rolled back


async def test_stop_removes_only_our_sockets(settings: PluginConfig) -> None:
    p = KubeletPlugin(settings, NullPreparer(), HealthBoard(["gpu-0"]), FAST)
    await p.start()
    assert settings.dra_socket.exists() and settings.registration_socket.exists()
    # Someone replaces our registration socket; the supervisor must leave the live one alone.
    os.unlink(settings.registration_socket)
    foreign = socket.socket(socket.AF_UNIX)
    foreign.bind(str(settings.registration_socket))
    foreign.listen()
    try:
        await asyncio.sleep(0.2)
        foreign_id = file_id(settings.registration_socket)
        await p.stop()
        assert not settings.dra_socket.exists()
        assert file_id(settings.registration_socket) == foreign_id
    finally:
        foreign.close()


async def test_stop_ends_health_streams_promptly(
    plugin: KubeletPlugin, settings: PluginConfig
) -> None:
    async with DraClient(settings.dra_socket) as dra:
        stream = dra.watch_health()
        await anext(stream)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await plugin.stop()
        assert loop.time() - t0 < 0.5  # not the whole shutdown grace
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 1)
    assert not settings.dra_socket.exists()
    assert not settings.registration_socket.exists()
