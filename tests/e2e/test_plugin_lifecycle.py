"""The real plugin process, driven over its sockets the way the kubelet does."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as health_pb
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.kubelet import (
    DraClient,
    RegistrationClient,
    file_id,
    register,
    wait_for_socket,
)

from .conftest import NODE_NAME, PluginFactory, PluginProcess, fake_nvml_library

FAST_ARGS = ["--health-resend-interval=0.5", "--registration-backoff=0.2"]


@pytest.fixture(scope="module")
def plugin(module_plugin_factory: PluginFactory) -> PluginProcess:
    return module_plugin_factory(FAST_ARGS)


@pytest.fixture(scope="module")
def expected_devices(plugin: PluginProcess) -> list[str]:
    """What `dra-driver inventory` reports for the same fake node."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dra_driver",
            "inventory",
            "--json",
            f"--nvml-library={fake_nvml_library()}",
            f"--sys-root={plugin.root / 'sys'}",
        ],
        env=plugin.env,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return sorted(d["name"] for d in json.loads(out.stdout)["devices"])


async def test_registers_like_the_kubelet(plugin: PluginProcess) -> None:
    sock = await wait_for_socket(plugin.registry_dir, timeout=2)
    assert sock == plugin.registration_socket
    reg = await register(sock)
    assert reg.name == plugin.driver_name
    assert reg.endpoint == plugin.dra_socket
    assert reg.service == "v1.DRAPlugin"
    assert reg.has_health
    async with RegistrationClient(sock) as client:  # kubelet restarts ask again
        infos = [await client.get_info() for _ in range(5)]
        await client.notify(True)
    assert all(i == infos[0] for i in infos)
    assert "registered with the kubelet" in plugin.log_text()


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_prepare_and_unprepare_answer_per_claim(plugin: PluginProcess, version: str) -> None:
    claims = [ClaimRef("default", "uid-1", "claim-1"), ClaimRef("default", "uid-2", "claim-2")]
    async with DraClient(plugin.dra_socket, version) as dra:
        prepared = await dra.prepare(claims)
        unprepared = await dra.unprepare(claims)
        probe = await dra.prepare([])
    assert set(prepared.claims) == {"uid-1", "uid-2"}
    # Without an API server the claims cannot be looked up: a per-claim error,
    # never a failed call.
    assert all(entry.error for entry in prepared.claims.values())
    assert {k: v.error for k, v in unprepared.claims.items()} == {"uid-1": "", "uid-2": ""}
    assert len(probe.claims) == 0


async def test_health_snapshot_and_periodic_resend(
    plugin: PluginProcess, expected_devices: list[str]
) -> None:
    async with DraClient(plugin.dra_socket) as dra:
        stream = dra.watch_health()
        first = await asyncio.wait_for(anext(stream), 2)
        t0 = time.monotonic()
        second = await asyncio.wait_for(anext(stream), 2)
        interval = time.monotonic() - t0
        await stream.aclose()
    assert expected_devices
    assert sorted(d.device.device_name for d in first.devices) == expected_devices
    for d in first.devices:
        assert d.device.pool_name == NODE_NAME
        assert d.health == health_pb.HEALTHY
        assert d.health_check_timeout_seconds >= 30
        # The time of the last successful check (a poll every 10 s by default),
        # not of the resend.
        assert -1 < time.time() - d.last_updated_time < 10 + 3
    assert 0.3 < interval < 1.5  # --health-resend-interval=0.5
    assert [d.device.device_name for d in second.devices] == [
        d.device.device_name for d in first.devices
    ]
    assert min(d.last_updated_time for d in second.devices) >= max(
        d.last_updated_time for d in first.devices
    )


async def test_removed_registration_socket_comes_back(plugin: PluginProcess) -> None:
    old = file_id(plugin.registration_socket)
    os.unlink(plugin.registration_socket)
    t0 = time.monotonic()
    sock = await wait_for_socket(plugin.registry_dir, timeout=1.0, replacing=old)
    assert time.monotonic() - t0 < 1.0
    assert (await register(sock)).name == plugin.driver_name


async def test_removed_dra_socket_comes_back(plugin: PluginProcess) -> None:
    os.unlink(plugin.dra_socket)
    deadline = time.monotonic() + 1.0
    while not plugin.dra_socket.is_socket():
        assert time.monotonic() < deadline, "dra.sock not re-created within 1 s"
        await asyncio.sleep(0.02)
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.unprepare([ClaimRef("ns", "uid-x", "x")])
    assert resp.claims["uid-x"].error == ""


async def test_refused_registration_recreates_the_socket(plugin: PluginProcess) -> None:
    old = file_id(plugin.registration_socket)
    async with RegistrationClient(plugin.registration_socket) as client:
        await client.notify(False, "RegisterPlugin error -- endpoint already registered")
    sock = await wait_for_socket(plugin.registry_dir, timeout=2.0, replacing=old)
    assert "endpoint already registered" in plugin.log_text()
    assert (await register(sock)).service == "v1.DRAPlugin"
    assert plugin.alive()


async def test_sigterm_cleans_up_and_exits_zero(plugin_factory: PluginFactory) -> None:
    p = plugin_factory()
    await register(p.registration_socket)
    async with DraClient(p.dra_socket) as dra:
        stream = dra.watch_health()
        await anext(stream)  # an open health stream must not delay the exit
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(p.wait_exit, 10)
        elapsed = time.monotonic() - t0
    assert code == 0, p.log_text()
    assert elapsed < 2.0
    assert not p.registration_socket.exists()
    assert not p.dra_socket.exists()
    assert "stopped" in p.log_text()


def test_sigint_exits_zero(plugin_factory: PluginFactory) -> None:
    p = plugin_factory()
    assert p.stop(signal.SIGINT) == 0
    assert not p.registration_socket.exists() and not p.dra_socket.exists()


def test_too_long_socket_path_exits_2(plugin_factory: PluginFactory) -> None:
    p = plugin_factory(["--plugins-dir=/tmp/" + "d" * 110], wait=False)
    assert p.wait_exit(10) == 2
    assert "unix sockets allow at most" in p.log_text()


def test_nvml_failure_exits_nonzero_without_sockets(plugin_factory: PluginFactory) -> None:
    p = plugin_factory(["--nvml-library=/nonexistent/libnvidia-ml.so.1"], wait=False)
    assert p.wait_exit(10) == 1
    assert "cannot load NVML" in p.log_text()
    assert not p.registration_socket.exists() and not p.dra_socket.exists()


async def test_second_instance_is_refused(
    plugin: PluginProcess, plugin_factory: PluginFactory
) -> None:
    before = file_id(plugin.registration_socket)
    other = plugin_factory(
        [f"--plugins-dir={plugin.plugins_dir}", f"--registry-dir={plugin.registry_dir}"],
        wait=False,
    )
    assert other.wait_exit(10) == 1
    assert "live socket" in other.log_text()
    assert file_id(plugin.registration_socket) == before
    assert (await register(plugin.registration_socket)).name == plugin.driver_name


def test_regular_file_at_socket_path_is_kept(
    plugin_factory: PluginFactory, tmp_path: object
) -> None:
    p0 = plugin_factory()
    root = p0.root
    p0.stop()
    p0.registration_socket.write_text("operator notes")
    p = plugin_factory(root=root, wait=False)
    assert p.wait_exit(10) == 1
    assert "refusing to delete" in p.log_text()
    assert p.registration_socket.read_text() == "operator notes"


async def test_stale_sockets_of_a_crashed_run_are_replaced(plugin_factory: PluginFactory) -> None:
    p0 = plugin_factory()
    p0.stop(signal.SIGKILL)  # a crash leaves both socket files behind
    assert p0.registration_socket.is_socket() and p0.dra_socket.is_socket()
    p = plugin_factory(root=p0.root)
    assert (await register(p.registration_socket)).name == p.driver_name


def test_sigterm_during_startup_exits_zero(plugin_factory: PluginFactory) -> None:
    p = plugin_factory(wait=False)
    deadline = time.monotonic() + 10
    while not p.fake_nvml_state.exists():  # created by nvmlInit: start steps under way
        assert time.monotonic() < deadline and p.alive(), p.log_text()
        time.sleep(0.005)
    assert p.stop(signal.SIGTERM) == 0, p.log_text()
    assert not p.registration_socket.exists() and not p.dra_socket.exists()


async def test_health_off_is_not_advertised(plugin_factory: PluginFactory) -> None:
    p = plugin_factory(["--no-health"])
    reg = await register(p.registration_socket)
    assert reg.supported_versions == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    assert not reg.has_health
