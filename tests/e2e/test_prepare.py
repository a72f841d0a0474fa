"""Claim preparation end to end: kubelet-side gRPC client -> real `dra-driver run` process.

The plugin runs on the fake NVML ("small": GPU 0 in MIG mode with 2g.20gb, 2 x
1g.10gb and 3g.40gb, GPU 1 whole) against the API server double, with
dev_root / proc_root / driver_root pointed at a simulated host tree (device
nodes are regular files there; MIG capability files and the nvidia-caps major
are simulated). Crash points are reached through the DRA_DRIVER_TEST_CRASH_AT
test hook, which makes the process exit like a kill -9 (os._exit(137)).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dra_driver.inventory import Inventory
from dra_driver.prepare.checkpoint import ClaimState, decode
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import (
    ApiServerDouble,
    DraClient,
    SimHost,
    claim_object,
    populate_host,
    register,
)

from .conftest import NODE_NAME, PluginFactory, PluginProcess

API = "resource.nvidia.com/v1beta1"
KIND = "k8s.gpu.nvidia.com/claim"
MIG_A = "gpu-0-mig-1g10gb-19-2"
MIG_B = "gpu-0-mig-1g10gb-19-3"
MIG_2G = "gpu-0-mig-2g20gb-14-0"
MIG_3G = "gpu-0-mig-3g40gb-9-4"


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        server.create_node(NODE_NAME)
        yield server


class Node:
    """A simulated host, the API double and the plugin process(es) running on them."""

    def __init__(self, factory: PluginFactory, api: ApiServerDouble, inv: Inventory) -> None:
        self.factory = factory
        self.api = api
        self.inv = inv
        self.root = Path(tempfile.mkdtemp(prefix="dra-e2e-prep-", dir="/tmp"))
        self.host: SimHost = populate_host(self.root, inv)
        self.kubeconfig = api.kubeconfig_path(self.root)
        self.plugin: PluginProcess | None = None
        self.claims = 0

    def start(self, env: dict[str, str] | None = None) -> PluginProcess:
        # A killed plugin leaves its registration socket behind; the kubelet would
        # see the new one replace it, here we wait for the new one explicitly.
        (self.root / "registry" / "gpu.nvidia.com-reg.sock").unlink(missing_ok=True)
        self.plugin = self.factory(
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--dev-root={self.host.dev_root}",
                f"--proc-root={self.host.proc_root}",
                f"--driver-root={self.host.driver_root}",
                "--log-level=DEBUG",
            ],
            env=env,
            root=self.root,
        )
        return self.plugin

    def claim(self, *results: dict[str, Any], configs: tuple[dict[str, Any], ...] = ()) -> ClaimRef:
        self.claims += 1
        name = f"claim-{self.claims}-{secrets.token_hex(3)}"
        obj = claim_object("", name, results, pool=NODE_NAME, configs=configs)
        del obj["metadata"]["uid"]
        created = self.api.create("resourceclaims", obj)
        return ClaimRef("default", created["metadata"]["uid"], name)

    def cdi_json(self) -> list[str]:
        cdi = self.root / "cdi"
        return sorted(n for n in os.listdir(cdi) if n.endswith(".json")) if cdi.exists() else []

    def spec(self, uid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.root / "cdi" / f"k8s.gpu.nvidia.com-claim_{uid}.json").read_bytes()
        )
        return data

    def checkpoint(self) -> dict[str, Any]:
        cp = decode((self.root / "state" / "checkpoint.json").read_bytes())
        return {uid: rec for uid, rec in cp.claims.items()}

    def hidden_files_of_dead(self, alive: str) -> list[str]:
        """Hidden temp/spare files in the CDI and state dirs not owned by instance alive."""
        out = []
        for d in (self.root / "cdi", self.root / "state"):
            if d.exists():
                out += [
                    n
                    for n in os.listdir(d)
                    if n.startswith(".") and (".tmp-" in n or ".spare-" in n) and alive not in n
                ]
        return out


@pytest.fixture
def node(
    plugin_factory: PluginFactory, api: ApiServerDouble, inventory: Inventory
) -> Iterator[Node]:
    n = Node(plugin_factory, api, inventory)
    yield n
    if n.plugin is not None:
        n.plugin.stop()
    shutil.rmtree(n.root, ignore_errors=True)


def devices(resp: Any, uid: str) -> list[tuple[tuple[str, ...], str, str, tuple[str, ...]]]:
    entry = resp.claims[uid]
    assert entry.error == "", entry.error
    return [
        (tuple(d.request_names), d.pool_name, d.device_name, tuple(d.cdi_device_ids))
        for d in entry.devices
    ]


def cdi_id(ref: ClaimRef, device: str) -> str:
    return f"{KIND}={ref.uid}-{device}"


def instance_of(plugin: PluginProcess) -> str:
    ids = os.listdir(plugin.state_dir / "instances")
    assert len(ids) == 1, ids
    return ids[0].removesuffix(".lock")


async def test_prepare_and_unprepare_many_kinds_of_claims(node: Node) -> None:
    plugin = node.start()
    reg = await register(plugin.registration_socket)
    single = node.claim(
        {"request": "gpu", "device": "gpu-1"},
        configs=(
            {
                "requests": ["gpu"],
                "parameters": {
                    "apiVersion": API,
                    "kind": "GpuConfig",
                    "sharing": {"strategy": "TimeSlicing"},
                },
            },
        ),
    )
    mig = node.claim({"request": "mig", "device": MIG_A})
    multi = node.claim(
        {"request": "big/first", "device": MIG_2G},
        {"request": "big/second", "device": MIG_3G},
    )
    admin1 = node.claim({"request": "debug", "device": MIG_B, "adminAccess": True})
    admin2 = node.claim({"request": "debug", "device": MIG_B, "adminAccess": True})
    mps = node.claim(
        {"request": "gpu", "device": "gpu-1"},
        configs=(
            {
                "parameters": {
                    "apiVersion": API,
                    "kind": "GpuConfig",
                    "sharing": {"strategy": "MPS"},
                }
            },
        ),
    )
    missing = ClaimRef("default", "0c0c0c0c-0000-4000-8000-000000000000", "does-not-exist")
    refs = [single, mig, multi, admin1, admin2, mps, missing]
    async with DraClient.for_registration(reg) as dra:
        resp = await dra.prepare(refs)
        assert set(resp.claims) == {r.uid for r in refs}
        assert devices(resp, single.uid) == [
            (("gpu",), NODE_NAME, "gpu-1", (cdi_id(single, "gpu-1"),))
        ]
        assert devices(resp, mig.uid) == [(("mig",), NODE_NAME, MIG_A, (cdi_id(mig, MIG_A),))]
        assert devices(resp, multi.uid) == [
            (("big",), NODE_NAME, MIG_2G, (cdi_id(multi, MIG_2G),)),
            (("big",), NODE_NAME, MIG_3G, (cdi_id(multi, MIG_3G),)),
        ]
        for a in (admin1, admin2):
            assert devices(resp, a.uid) == [(("debug",), NODE_NAME, MIG_B, (cdi_id(a, MIG_B),))]
        assert "MPS sharing needs an MPS control daemon" in resp.claims[mps.uid].error
        assert "not found" in resp.claims[missing.uid].error

        # Every returned CDI id names a device of a spec file on disk.
        prepared = [single, mig, multi, admin1, admin2]
        assert node.cdi_json() == sorted(f"k8s.gpu.nvidia.com-claim_{r.uid}.json" for r in prepared)
        for ref in prepared:
            spec = node.spec(ref.uid)
            names = {f"{spec['kind']}={d['name']}" for d in spec["devices"]}
            assert {i for d in devices(resp, ref.uid) for i in d[3]} == names
        mig_nodes = node.spec(mig.uid)["devices"][0]["containerEdits"]["deviceNodes"]
        assert mig_nodes[0] == {"path": "/dev/nvidia0"}
        assert [n["major"] for n in mig_nodes[1:]] == [508, 508]
        checkpoint = node.checkpoint()
        assert set(checkpoint) == {r.uid for r in prepared}
        assert all(r.state is ClaimState.PREPARED for r in checkpoint.values())
        gpu1 = node.inv.device("gpu-1")
        assert gpu1 is not None
        assert checkpoint[single.uid].actions == ({"gpuUuid": gpu1.uuid, "computeMode": 0},)

        # A second ordinary claim on a device an ordinary claim holds is refused
        # (admin claims, above, share a device with anyone).
        intruder = node.claim({"request": "gpu", "device": MIG_A})
        refused = await dra.prepare([intruder])
        assert (
            "device gpu-0-mig-1g10gb-19-2 is already prepared" in refused.claims[intruder.uid].error
        )

        # Repeating the call answers identically, without the API server.
        node.api.delete("resourceclaims", single.name, "default")
        again = await dra.prepare(prepared)
        for ref in prepared:
            assert devices(again, ref.uid) == devices(resp, ref.uid)

        un = await dra.unprepare([*refs, intruder])
        assert all(un.claims[r.uid].error == "" for r in [*refs, intruder])
    assert node.cdi_json() == [] and node.checkpoint() == {}


async def test_v1beta1_gives_the_same_answer(node: Node) -> None:
    plugin = node.start()
    await register(plugin.registration_socket)
    ref = node.claim({"request": "gpu", "device": "gpu-1"})
    async with DraClient(plugin.dra_socket, "v1beta1") as beta, DraClient(plugin.dra_socket) as v1:
        first = await beta.prepare([ref])
        assert devices(first, ref.uid) == [(("gpu",), NODE_NAME, "gpu-1", (cdi_id(ref, "gpu-1"),))]
        assert devices(await v1.prepare([ref]), ref.uid) == devices(first, ref.uid)
        assert (await beta.unprepare([ref])).claims[ref.uid].error == ""
    assert node.cdi_json() == [] and node.checkpoint() == {}


@pytest.mark.parametrize("point", ["after-started", "after-cdi", "before-prepared"])
async def test_kill_at_each_crash_point_then_recover(node: Node, point: str) -> None:
    ref = node.claim(
        {"request": "gpus/a", "device": "gpu-1"},
        {"request": "gpus/b", "device": MIG_3G},
    )
    expected = [
        (("gpus",), NODE_NAME, "gpu-1", (cdi_id(ref, "gpu-1"),)),
        (("gpus",), NODE_NAME, MIG_3G, (cdi_id(ref, MIG_3G),)),
    ]
    doomed = node.start(env={"DRA_DRIVER_TEST_CRASH_AT": point})
    await register(doomed.registration_socket)
    async with DraClient(doomed.dra_socket) as dra:
        with pytest.raises(grpc.aio.AioRpcError):
            await dra.prepare([ref], timeout=10)
    assert doomed.wait_exit() == 137
    assert f"TEST HOOK: exiting at {point}" in doomed.log_text()
    # What the crash left: a started record, and (after-cdi on) a spec file.
    left = node.checkpoint()
    assert left[ref.uid].state is ClaimState.STARTED
    assert bool(node.cdi_json()) == (point != "after-started")

    plugin = node.start()
    await register(plugin.registration_socket)
    assert "rolled back 1 unfinished claim(s)" in plugin.log_text()
    assert node.checkpoint() == {} and node.cdi_json() == []  # rolled back at start
    live = instance_of(plugin)
    assert node.hidden_files_of_dead(live) == []  # the dead writer's temp files are gone
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.prepare([ref])
        assert devices(resp, ref.uid) == expected
        assert devices(await dra.prepare([ref]), ref.uid) == expected
        assert node.checkpoint()[ref.uid].state is ClaimState.PREPARED
        assert node.cdi_json() == [f"k8s.gpu.nvidia.com-claim_{ref.uid}.json"]
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.checkpoint() == {} and node.cdi_json() == []
    assert node.hidden_files_of_dead(live) == []
