"""Hostile and oversized input: the process keeps serving and answers cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.kubelet import DraClient, RegistrationClient, register

from .conftest import PluginFactory, PluginProcess


@pytest.fixture(scope="module")
def plugin(module_plugin_factory: PluginFactory) -> PluginProcess:
    # DEBUG: the health servicer logs its active stream count, which the leak test reads.
    return module_plugin_factory(["--log-level=DEBUG", "--health-resend-interval=0.5"])


async def assert_serving(p: PluginProcess) -> None:
    assert p.alive(), p.log_text()
    async with DraClient(p.dra_socket) as dra:
        resp = await dra.unprepare([ClaimRef("ns", "probe-uid", "probe")])
        assert resp.claims["probe-uid"].error == ""
        stream = dra.watch_health()
        assert len((await asyncio.wait_for(anext(stream), 2)).devices) > 0
        await stream.aclose()
    assert (await register(p.registration_socket)).name == p.driver_name


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_empty_and_duplicate_uids(plugin: PluginProcess, version: str) -> None:
    claims = [
        ClaimRef("default", "", "no-uid"),
        ClaimRef("default", "dup", "c"),
        ClaimRef("default", "dup", "c"),
        ClaimRef("default", "dup", "c"),
        ClaimRef("", "no-ns", "c"),
    ]
    async with DraClient(plugin.dra_socket, version) as dra:
        prepared = await dra.prepare(claims)
        unprepared = await dra.unprepare(claims)
    for resp in (prepared, unprepared):
        assert set(resp.claims) == {"", "dup", "no-ns"}
        assert "uid is empty" in resp.claims[""].error
        assert "namespace is empty" in resp.claims["no-ns"].error
    assert unprepared.claims["dup"].error == ""
    await assert_serving(plugin)


async def test_ten_thousand_claims_in_one_call(plugin: PluginProcess) -> None:
    claims = [ClaimRef("default", f"uid-{i:05d}", f"claim-{i}") for i in range(10_000)]
    async with DraClient(plugin.dra_socket) as dra:
        t0 = time.monotonic()
        unprepared = await dra.unprepare(claims)
        prepared = await dra.prepare(claims)
        elapsed = time.monotonic() - t0
    assert len(unprepared.claims) == 10_000
    assert all(v.error == "" for v in unprepared.claims.values())
    assert len(prepared.claims) == 10_000  # every one answered (with its own error: no API server)
    assert elapsed < 30
    await assert_serving(plugin)


async def test_one_mebibyte_claim_name(plugin: PluginProcess) -> None:
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.prepare([ClaimRef("default", "big", "n" * (1024 * 1024))])
    assert "1048576 bytes" in resp.claims["big"].error
    assert len(resp.claims["big"].error) < 500
    await assert_serving(plugin)


@pytest.mark.parametrize("which", ["dra", "registration"])
async def test_garbage_bytes_on_each_socket(plugin: PluginProcess, which: str) -> None:
    path = plugin.dra_socket if which == "dra" else plugin.registration_socket
    payloads = [
        os.urandom(64 * 1024),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(4096),  # h2 preface, then noise
        b"",
    ]
    for payload in payloads:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(path))
            try:
                s.sendall(payload)
                s.recv(4096)
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                pass  # the server may hang up on garbage; it must just stay up
    await assert_serving(plugin)


VANISHING_CLIENT = textwrap.dedent(
    """
    import asyncio, sys, grpc
    from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as pb
    from dra_driver.kubelet.stubs import health_v1alpha1_stub

    async def main():
        channel = grpc.aio.insecure_channel("unix:" + sys.argv[1])
        stub = health_v1alpha1_stub(channel)
        calls = [stub.NodeWatchResources(pb.NodeWatchResourcesRequest()) for _ in range(100)]
        await asyncio.gather(*(c.read() for c in calls))
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def active_health_streams(log: str) -> int | None:
    counts = re.findall(r"health watcher (?:\(\w+\) )?(?:connected|gone) \((\d+) active\)", log)
    return int(counts[-1]) if counts else None


async def test_hundred_health_streams_then_client_vanishes(plugin: PluginProcess) -> None:
    await asyncio.sleep(0.2)
    fds_before = plugin.fd_count()
    threads_before = plugin.status_field("Threads")
    rss_before = plugin.rss_kib()
    client = subprocess.Popen(
        [sys.executable, "-c", VANISHING_CLIENT, str(plugin.dra_socket)],
        env=plugin.env,
        stdout=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 20)
        assert line.strip() == b"ready"
        assert active_health_streams(plugin.log_text()) == 100
    finally:
        client.kill()  # no goodbye: the connection just drops
        client.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if active_health_streams(plugin.log_text()) == 0 and plugin.fd_count() <= fds_before:
            break
        await asyncio.sleep(0.05)
    assert active_health_streams(plugin.log_text()) == 0
    assert plugin.fd_count() <= fds_before
    assert plugin.status_field("Threads") <= threads_before
    assert plugin.rss_kib() < rss_before + 20 * 1024
    await assert_serving(plugin)


async def test_registration_socket_survives_many_short_connections(
    plugin: PluginProcess,
) -> None:
    for _ in range(20):
        async with RegistrationClient(plugin.registration_socket) as client:
            await client.get_info()
    await assert_serving(plugin)


def test_process_log_has_no_tracebacks(plugin: PluginProcess) -> None:
    assert "Traceback" not in plugin.log_text(), plugin.log_text()[-5000:]
