"""Slices published by the real `dra-driver run` process, against the API server double.

Covers what only the whole process shows: the slices appear after start,
stay on SIGTERM, a restart writes nothing, a kubelet-style wipe is undone
within seconds, and `dra-driver cleanup` removes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dra_driver.testing import ApiServerDouble

from .conftest import DRIVER_NAME, NODE_NAME, REPO_ROOT, PluginFactory

GOLDEN = REPO_ROOT / "tests" / "golden"


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        yield s


def ours(server: ApiServerDouble) -> list[dict[str, Any]]:
    return sorted(
        server.slices(driver=DRIVER_NAME, node=NODE_NAME), key=lambda s: s["metadata"]["name"]
    )


def golden_devices(name: str) -> list[dict[str, Any]]:
    return [d for s in json.loads((GOLDEN / name).read_text()) for d in s["spec"]["devices"]]


def wait_for(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_plugin_process_publishes_keeps_and_restores_its_slices(
    server: ApiServerDouble, plugin_factory: PluginFactory, tmp_path: Path
) -> None:
    node = server.create_node(NODE_NAME)
    kubeconfig = server.kubeconfig_path(tmp_path)
    args = [f"--kubeconfig={kubeconfig}"]

    plugin = plugin_factory(args, topology="small")
    wait_for(lambda: len(ours(server)) == 1, 10.0, "slices published")
    stored = ours(server)
    assert stored[0]["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    assert stored[0]["spec"]["devices"] == golden_devices("slices-small.json")
    assert plugin.stop() == 0
    assert ours(server) == stored  # slices are not deleted on shutdown

    server.requests.reset()
    plugin = plugin_factory(args, topology="small")
    wait_for(
        lambda: server.requests.count(method="GET", resource="resourceslices") >= 2,
        10.0,
        "list and watch after the restart",
    )
    time.sleep(1.0)
    assert server.requests.writes("resourceslices") == 0, plugin.log_text()
    assert ours(server) == stored

    for s in stored:  # what the kubelet does when it starts
        server.delete("resourceslices", s["metadata"]["name"])
    took = wait_for(lambda: len(ours(server)) == 1, 5.0, "slices republished")
    assert took < 2.0
    assert ours(server)[0]["spec"]["devices"] == stored[0]["spec"]["devices"]
    assert plugin.stop() == 0

    cleanup = [sys.executable, "-m", "dra_driver", "cleanup", f"--kubeconfig={kubeconfig}"]
    done = subprocess.run(
        [*cleanup, f"--node-name={NODE_NAME}", f"--driver-name={DRIVER_NAME}"],
        env=plugin.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "deleted 1 ResourceSlice(s)" in done.stdout
    assert ours(server) == []


def _devices(server: ApiServerDouble) -> list[str]:
    return [d["name"] for s in ours(server) for d in s["spec"]["devices"]]


def _restart_and_settle(
    server: ApiServerDouble, plugin_factory: PluginFactory, args: list[str], **kw: Any
) -> None:
    """Start the plugin, wait for its first slice write and a quiet second, then stop it."""
    plugin = plugin_factory(args, **kw)
    wait_for(
        lambda: server.requests.count(method="GET", resource="resourceslices") >= 2,
        10.0,
        "list and watch after the restart",
    )
    wait_for(lambda: server.requests.writes("resourceslices") > 0, 10.0, "a slice write")
    time.sleep(1.0)  # past the debounce: any further write would show now
    assert plugin.stop() == 0


def test_hardware_changes_across_restarts_cost_exactly_the_writes_needed(
    server: ApiServerDouble, plugin_factory: PluginFactory, tmp_path: Path
) -> None:
    """A MIG re-layout and a lost GPU, each seen at the next start: one PUT, nothing else."""
    from dra_driver.testing.fakenvml import FaultInjector, load_topology, topology_path

    server.create_node(NODE_NAME)
    args = [f"--kubeconfig={server.kubeconfig_path(tmp_path)}"]
    root = tmp_path / "node"
    root.mkdir()
    topo = json.loads(topology_path("small").read_text())
    topo_file = tmp_path / "small-edited.json"
    topo_file.write_text(json.dumps(topo))

    plugin = plugin_factory(args, topology=str(topo_file), root=root)
    wait_for(lambda: len(_devices(server)) == 5, 10.0, "slices published")
    assert plugin.stop() == 0
    before = _devices(server)
    generation = ours(server)[0]["spec"]["pool"]["generation"]

    # An operator re-partitions GPU 0: the 2g.20gb at slice 0 becomes two 1g.10gb.
    mig = topo["gpus"][0]["mig"]["devices"]
    mig[0] = {"profile_id": 19, "placement_start": 0, "gi_id": 11, "uuid": "MIG-aaaaaaaa-0000"}
    mig.append({"profile_id": 19, "placement_start": 1, "gi_id": 12, "uuid": "MIG-aaaaaaaa-0001"})
    topo_file.write_text(json.dumps(topo))
    server.requests.reset()
    _restart_and_settle(server, plugin_factory, args, topology=str(topo_file), root=root)
    assert server.requests.count(method="PUT", resource="resourceslices") == 1
    assert server.requests.writes("resourceslices") == 1
    after = _devices(server)
    assert "gpu-0-mig-2g20gb-14-0" in before and "gpu-0-mig-2g20gb-14-0" not in after
    assert {"gpu-0-mig-1g10gb-19-0", "gpu-0-mig-1g10gb-19-1"} <= set(after)
    assert ours(server)[0]["spec"]["pool"]["generation"] == generation  # one slice changed

    # GPU 1 falls off the bus while the plugin is down (persistent fault in the fake).
    FaultInjector(load_topology(topo_file), root / "fakenvml" / "small.faults.jsonl").lost(1)
    server.requests.reset()
    _restart_and_settle(server, plugin_factory, args, topology=str(topo_file), root=root)
    assert server.requests.writes("resourceslices") == 1
    assert "gpu-1" not in _devices(server)
    assert len(_devices(server)) == 5
