"""Metrics end to end: the real `dra-driver run --metrics-address`, scraped over HTTP.

The plugin runs on the fake NVML ("small": GPU 0 in MIG mode, GPU 1 whole)
against the API server double, on a simulated host tree so a claim can be
prepared for real; a fault goes in through the fake library's fault log.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dra_driver.inventory import Inventory
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import ApiServerDouble, DraClient, claim_object, populate_host, register
from dra_driver.testing.fakenvml import FaultInjector, default_fault_log, load_topology

from .conftest import DRIVER_NAME, NODE_NAME, PluginFactory, PluginProcess

pytestmark = pytest.mark.timeout(60)

Samples = dict[str, float]  # 'name{label="value",...}' as exposed -> value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, number = line.rpartition(" ")
            out[series] = float(number)
    return out


def series(name: str, **labels: str) -> str:
    """The exposition form of one series (prometheus_client sorts labels by name)."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if labels else name


def wait_for(url: str, done: Callable[[Samples], bool], timeout: float, what: str) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(url)
        if done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


async def test_requests_health_and_slices_are_scraped(
    plugin_factory: PluginFactory, inventory: Inventory
) -> None:
    root = Path(tempfile.mkdtemp(prefix="dra-e2e-metrics-", dir="/tmp"))
    host = populate_host(root / "host", inventory)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with ApiServerDouble() as api:
        api.create_node(NODE_NAME)
        plugin: PluginProcess = plugin_factory(
            [
                f"--kubeconfig={api.kubeconfig_path(root)}",
                f"--dev-root={host.dev_root}",
                f"--proc-root={host.proc_root}",
                f"--driver-root={host.driver_root}",
                "--health-poll-interval=0.2",
                "--health-hold=30",
                f"--metrics-address=127.0.0.1:{port}",
            ],
            root=root,
        )
        assert f"serving metrics at {url}" in plugin.log_text()
        assert port in listening_ports(plugin.pid)
        # Published and converged; nothing prepared yet.
        m = wait_for(
            url,
            lambda s: s.get("dra_resourceslice_converged") == 1,
            10,
            "slices published and converged",
        )
        assert m[series("dra_resourceslice_writes_total", verb="create")] >= 1
        assert m[series("dra_driver_devices", type="mig")] == 4
        assert m[series("dra_driver_devices", type="gpu")] == 1
        prepared = {
            kind: series(
                "nvidia_dra_prepared_devices", node=NODE_NAME, driver=DRIVER_NAME, device_type=kind
            )
            for kind in ("gpu", "mig")
        }
        assert m[prepared["gpu"]] == 0 and m[prepared["mig"]] == 0

        # One claim prepared for real, one that does not exist.
        obj = claim_object(
            "", "metrics-claim", [{"request": "gpu", "device": "gpu-1"}], pool=NODE_NAME
        )
        del obj["metadata"]["uid"]
        created = api.create("resourceclaims", obj)
        good = ClaimRef("default", created["metadata"]["uid"], "metrics-claim")
        missing = ClaimRef("default", "0c0c0c0c-0000-4000-8000-000000000000", "does-not-exist")
        reg = await register(plugin.registration_socket)
        async with DraClient.for_registration(reg) as dra:
            resp = await dra.prepare([good, missing])
            assert resp.claims[good.uid].error == ""
            assert "not found" in resp.claims[missing.uid].error
            m = scrape(url)
            op = {"driver": DRIVER_NAME, "operation": "prepare"}
            assert m[series("nvidia_dra_requests_total", **op)] == 2
            assert m[series("nvidia_dra_request_duration_seconds_count", **op)] == 2
            assert m[series("nvidia_dra_requests_inflight", **op)] == 0
            errors = "nvidia_dra_node_prepare_errors_total"
            assert m[series(errors, driver=DRIVER_NAME, error_type="claim_not_found")] == 1
            assert m[series(errors, driver=DRIVER_NAME, error_type="internal")] == 0
            assert m[prepared["gpu"]] == 1 and m[prepared["mig"]] == 0

            # An XID on GPU 1: its device turns unhealthy, the event is counted, the
            # slice gets its taint and converges again.
            topology = load_topology("small")
            FaultInjector(topology, default_fault_log(topology.name, plugin.env)).xid(1, 79)
            health = {"driver": DRIVER_NAME, "pool": NODE_NAME, "device": "gpu-1"}
            unhealthy = series("dra_gpu_device_health", **health, state="unhealthy")
            m = wait_for(url, lambda s: s.get(unhealthy) == 1, 10, "gpu-1 unhealthy")
            assert m[series("dra_gpu_device_health", **health, state="healthy")] == 0
            assert m[series("dra_gpu_device_health_reason", **health, reason="xid-79")] == 1
            assert m[series("dra_gpu_nvml_events_total", gpu="gpu-1", type="xid")] == 1
            assert m[series("dra_gpu_xid_errors_total", gpu="gpu-1", xid="79")] == 1
            assert m[series("dra_gpu_nvml_events_total", gpu="gpu-0", type="xid")] == 0
            assert m["dra_gpu_health_polls_total"] >= 1
            mig = series(
                "dra_gpu_device_health",
                driver=DRIVER_NAME,
                pool=NODE_NAME,
                device="gpu-0-mig-1g10gb-19-2",
                state="healthy",
            )
            assert m[mig] == 1
            m = wait_for(
                url,
                lambda s: (
                    s.get(series("dra_resourceslice_writes_total", verb="update"), 0) >= 1
                    and s.get("dra_resourceslice_converged") == 1
                ),
                10,
                "taint written",
            )

            un = await dra.unprepare([good])
            assert un.claims[good.uid].error == ""
        m = scrape(url)
        assert (
            m[series("nvidia_dra_requests_total", driver=DRIVER_NAME, operation="unprepare")] == 1
        )
        assert m[prepared["gpu"]] == 0
        assert m["process_resident_memory_bytes"] > 0
        assert plugin.stop() == 0


def test_no_endpoint_without_the_flag(plugin_factory: PluginFactory) -> None:
    plugin = plugin_factory()
    assert listening_ports(plugin.pid) == set()
    assert "serving metrics" not in plugin.log_text()


def test_a_port_in_use_fails_the_start(plugin_factory: PluginFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        plugin = plugin_factory([f"--metrics-address=127.0.0.1:{port}"], wait=False)
        assert plugin.wait_exit(30) == 1
    log = plugin.log_text()
    assert (
        f"cannot serve metrics on --metrics-address 127.0.0.1:{port}: Address already in use" in log
    ), log
    assert "Traceback" not in log
    assert not plugin.registration_socket.exists() and not plugin.dra_socket.exists()
