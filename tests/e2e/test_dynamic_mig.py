"""Dynamic MIG end to end: the real `dra-driver run --dynamic-mig` on the fake NVML.

Claims are allocated the way the scheduler does it from what the plugin
publishes (first fit over the devices of the API double's slices, honouring
the shared counters and NVIDIA's matchAttribute constraint), then prepared
and unprepared over the kubelet's gRPC. The fake's fault log is where the MIG
layout lives, so the test reads which instances exist from it, as a second
process (an operator's nvidia-smi) would.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from dra_driver.prepare.checkpoint import ClaimState, decode
from dra_driver.prepare.types import ClaimRef
from dra_driver.slices.quantity import parse_quantity
from dra_driver.testing import fakenvml
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.kubelet import DraClient, register
from dra_driver.testing.simhost import claim_object, populate_host

from .conftest import NODE_NAME, PluginFactory, PluginProcess

QUICKSTART = Path("/work/shared/nvidia-quickstart/v1/gpu-test4.yaml")
DOMAIN = "gpu.nvidia.com"


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        server.create_node(NODE_NAME)
        yield server


def emptied(topology: str, directory: Path) -> Path:
    """The topology with its MIG-mode GPUs' devices removed (the whole GPU free)."""
    raw = json.loads(fakenvml.topology_path(topology).read_text())
    raw["name"] = f"{raw['name']}-empty"
    for g in raw["gpus"]:
        if g.get("mig", {}).get("current"):
            g["mig"]["devices"] = []
    path = directory / f"{raw['name']}.json"
    path.write_text(json.dumps(raw))
    return path


class Node:
    """A simulated host running `dra-driver run --dynamic-mig` on one topology."""

    def __init__(self, factory: PluginFactory, api: ApiServerDouble, topology: str | Path) -> None:
        self.factory, self.api = factory, api
        self.root = Path(tempfile.mkdtemp(prefix="dra-e2e-dyn-", dir="/tmp"))
        self.topology = fakenvml.load_topology(topology)
        self.host = populate_host(self.root, self.topology, spare_mig_caps=True)
        self.kubeconfig = api.kubeconfig_path(self.root)
        self.plugin: PluginProcess | None = None
        for s in api.slices(node=NODE_NAME):
            api.delete("resourceslices", s["metadata"]["name"])

    def start(
        self, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> PluginProcess:
        (self.root / "registry" / "gpu.nvidia.com-reg.sock").unlink(missing_ok=True)
        self.plugin = self.factory(
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--dev-root={self.host.dev_root}",
                f"--proc-root={self.host.proc_root}",
                f"--driver-root={self.host.driver_root}",
                "--dynamic-mig",
                *extra,
            ],
            env=env,
            root=self.root,
            topology=str(self.topology.path),
            timeout=30.0,  # a loaded CI machine; a healthy start takes well under a second
        )
        return self.plugin

    @property
    def fault_log(self) -> Path:
        assert self.plugin is not None and self.plugin.fault_log is not None
        return self.plugin.fault_log

    def migs(self) -> dict[int, tuple[fakenvml.TopologyMig, ...]]:
        return {g: m for g, m in fakenvml.current_migs(self.topology, self.fault_log).items() if m}

    def claim(self, *results: dict[str, Any]) -> ClaimRef:
        name = f"claim-{secrets.token_hex(4)}"
        obj = claim_object("", name, results, pool=NODE_NAME)
        del obj["metadata"]["uid"]
        created = self.api.create("resourceclaims", obj)
        return ClaimRef("default", created["metadata"]["uid"], name)

    def checkpoint(self) -> dict[str, Any]:
        cp = decode((self.root / "state" / "checkpoint.json").read_bytes())
        return dict(cp.claims)

    def spec(self, uid: str) -> dict[str, Any]:
        path = self.root / "cdi" / f"k8s.gpu.nvidia.com-claim_{uid}.json"
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data

    def published(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
        def complete(a: ApiServerDouble) -> bool:
            got = a.slices(node=NODE_NAME)
            return bool(got) and len(got) == got[0]["spec"]["pool"]["resourceSliceCount"]

        assert self.api.wait_for(complete, timeout=10)
        devices, counters = [], {}
        for s in self.api.slices(node=NODE_NAME):
            devices += s["spec"].get("devices", [])
            for cs in s["spec"].get("sharedCounters", []):
                counters[cs["name"]] = {
                    k: parse_quantity(v["value"]) for k, v in cs["counters"].items()
                }
        return devices, counters


def _attr(device: dict[str, Any], name: str) -> Any:
    value = device.get("attributes", {}).get(name, {})
    return next(iter(value.values()), None)


def allocate(
    devices: list[dict[str, Any]],
    counters: dict[str, dict[str, int]],
    profiles: list[str],
    taken: frozenset[str] = frozenset(),
) -> list[str]:
    """First fit of MIG requests on one parent GPU, as the scheduler's allocator does."""
    parents = sorted({_attr(d, "parentUUID") for d in devices if _attr(d, "type") == "mig"})
    for parent in parents:
        used: dict[str, int] = {}
        chosen: list[str] = []
        for profile in profiles:
            for d in devices:
                if d["name"] in chosen or d["name"] in taken or _attr(d, "profile") != profile:
                    continue
                if _attr(d, "parentUUID") != parent:
                    continue
                (cc,) = d["consumesCounters"]
                need = {k: parse_quantity(v["value"]) for k, v in cc["counters"].items()}
                cap = counters[cc["counterSet"]]
                if all(used.get(k, 0) + v <= cap[k] for k, v in need.items()):
                    for k, v in need.items():
                        used[k] = used.get(k, 0) + v
                    chosen.append(d["name"])
                    break
        if len(chosen) == len(profiles):
            return chosen
    raise AssertionError(f"no GPU fits {profiles}")


@pytest.fixture
def node_factory(plugin_factory: PluginFactory, api: ApiServerDouble) -> Iterator[Any]:
    made: list[Node] = []

    def make(topology: str | Path) -> Node:
        n = Node(plugin_factory, api, topology)
        made.append(n)
        return n

    yield make
    for n in made:
        if n.plugin is not None:
            n.plugin.stop()
        shutil.rmtree(n.root, ignore_errors=True)


def _quickstart_profiles() -> list[str]:
    docs = list(yaml.safe_load_all(QUICKSTART.read_text()))
    (template,) = [d for d in docs if d and d.get("kind") == "ResourceClaimTemplate"]
    requests = template["spec"]["spec"]["devices"]["requests"]
    assert template["spec"]["spec"]["devices"]["constraints"][0]["matchAttribute"] == (
        f"{DOMAIN}/parentUUID"
    )
    out = []
    for r in requests:
        (sel,) = r["exactly"]["selectors"]
        m = re.search(r"profile == '([^']+)'", sel["cel"]["expression"])
        assert m is not None and r["exactly"]["deviceClassName"] == "mig.nvidia.com"
        out.append(m.group(1))
    return out


@pytest.mark.skipif(not QUICKSTART.exists(), reason="NVIDIA's quickstart manifests not present")
async def test_quickstart_gpu_test4_creates_prepares_and_destroys(node_factory: Any) -> None:
    node = node_factory("a100-dynamic")
    plugin = node.start()
    await register(plugin.registration_socket)
    devices, counters = node.published()
    names = {d["name"] for d in devices}
    assert "gpu-0" not in names and "gpu-2" in names  # MIG mode: no full GPU
    profiles = _quickstart_profiles()
    assert profiles == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"]
    chosen = allocate(devices, counters, profiles)
    requests = ["mig-1g-5gb-0", "mig-1g-5gb-1", "mig-2g-10gb", "mig-3g-20gb"]
    ref = node.claim(*({"request": r, "device": d} for r, d in zip(requests, chosen, strict=True)))
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.prepare([ref])
        entry = resp.claims[ref.uid]
        assert entry.error == ""
        assert sorted(d.device_name for d in entry.devices) == sorted(chosen)
        made = node.migs()
        assert list(made) == [0] and len(made[0]) == 4  # all four on one parent
        rec = node.checkpoint()[ref.uid]
        assert rec.state is ClaimState.PREPARED
        assert {d.uuid for d in rec.devices} == {m.uuid for m in made[0]}
        env = [e for dev in node.spec(ref.uid)["devices"] for e in dev["containerEdits"]["env"]]
        for m in made[0]:
            assert any(e.endswith(f"={m.uuid}") for e in env)
        again = await dra.prepare([ref])  # answered from the checkpoint, nothing new made
        assert list(again.claims[ref.uid].devices) == list(entry.devices)
        assert node.migs() == made
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.migs() == {} and node.checkpoint() == {}
    assert "created MIG device" in plugin.log_text()


@pytest.mark.parametrize("topology", ["a100", "dgx-h100"])
async def test_a_claim_for_each_profile(node_factory: Any, topology: str, tmp_path: Path) -> None:
    """Every profile, created on an empty MIG GPU, prepared, then destroyed at unprepare."""
    node = node_factory(emptied(topology, tmp_path))
    plugin = node.start()
    await register(plugin.registration_socket)
    devices, counters = node.published()
    profiles = sorted({_attr(d, "profile") for d in devices if _attr(d, "type") == "mig"})
    assert len(profiles) == 7
    async with DraClient(plugin.dra_socket) as dra:
        for profile in profiles:
            (name,) = allocate(devices, counters, [profile])
            ref = node.claim({"request": "mig", "device": name})
            resp = await dra.prepare([ref])
            assert resp.claims[ref.uid].error == "", (profile, resp.claims[ref.uid].error)
            (made,) = [m for migs in node.migs().values() for m in migs]
            assert name.endswith(f"-{made.profile_id}-{made.placement_start}")
            assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
            assert node.migs() == {}


async def test_operator_devices_are_prepared_as_they_are_and_never_destroyed(
    node_factory: Any,
) -> None:
    node = node_factory("a100")
    plugin = node.start()
    await register(plugin.registration_socket)
    before = node.migs()
    assert len(before[1]) == 3
    devices, _ = node.published()
    operator = [d for d in devices if _attr(d, "uuid") in {m.uuid for m in before[1]}]
    assert len(operator) == 3
    async with DraClient(plugin.dra_socket) as dra:
        for d in operator:
            ref = node.claim({"request": "mig", "device": d["name"]})
            assert (await dra.prepare([ref])).claims[ref.uid].error == ""
            assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.migs() == before


async def test_a_failed_device_rolls_back_the_instances_the_claim_made(node_factory: Any) -> None:
    node = node_factory("a100-dynamic")
    plugin = node.start()
    await register(plugin.registration_socket)
    devices, counters = node.published()
    chosen = allocate(devices, counters, ["1g.5gb", "2g.10gb", "3g.20gb"])
    # The second create of the claim fails: the first instance must go again.
    fakenvml.FaultInjector(node.topology, node.fault_log).fail(
        "nvmlDeviceCreateGpuInstanceWithPlacement", 23, gpu=0, count=0
    )
    ref = node.claim(*({"request": f"r{i}", "device": d} for i, d in enumerate(chosen)))
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.prepare([ref])
        assert "Insufficient resources" in resp.claims[ref.uid].error
        assert "the placement is already in use" in resp.claims[ref.uid].error
    assert node.migs() == {} and node.checkpoint() == {}
    # An overlapping second claim for a created placement is refused by NVML, cleanly.
    fakenvml.FaultInjector(node.topology, node.fault_log).release()
    a = node.claim({"request": "mig", "device": "gpu-0-mig-3g20gb-9-0"})
    b = node.claim({"request": "mig", "device": "gpu-0-mig-1g5gb-19-1"})
    async with DraClient(plugin.dra_socket) as dra:
        assert (await dra.prepare([a])).claims[a.uid].error == ""
        err = (await dra.prepare([b])).claims[b.uid].error
        assert "Insufficient resources" in err
        assert len(node.migs()[0]) == 1
        assert (await dra.unprepare([a])).claims[a.uid].error == ""
    assert node.migs() == {}


POINTS = ["after-started", "after-mig-create", "after-mig-record", "after-cdi", "before-prepared"]


@pytest.mark.parametrize("point", POINTS)
async def test_kill_at_each_crash_point_leaks_nothing(node_factory: Any, point: str) -> None:
    node = node_factory("a100-dynamic")
    names = ["gpu-0-mig-1g5gb-19-0", "gpu-0-mig-2g10gb-14-2"]
    ref = node.claim(*({"request": f"r{i}", "device": d} for i, d in enumerate(names)))
    doomed = node.start(env={"DRA_DRIVER_TEST_CRASH_AT": point})
    await register(doomed.registration_socket)
    async with DraClient(doomed.dra_socket) as dra:
        with pytest.raises(grpc.aio.AioRpcError):
            await dra.prepare([ref], timeout=10)
    assert doomed.wait_exit() == 137
    left = node.migs()
    assert bool(left) == (point != "after-started")  # the crash left an instance behind
    plugin = node.start()
    await register(plugin.registration_socket)
    assert node.migs() == {}, f"leaked after a crash at {point}"
    assert node.checkpoint() == {}
    async with DraClient(plugin.dra_socket) as dra:
        resp = await dra.prepare([ref])
        entry = resp.claims[ref.uid]
        assert entry.error == ""
        assert sorted(d.device_name for d in entry.devices) == sorted(names)
        assert len(node.migs()[0]) == 2
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.migs() == {} and node.checkpoint() == {}


async def test_kill_after_destroy_then_unprepare_again(node_factory: Any) -> None:
    node = node_factory("a100-dynamic")
    ref = node.claim({"request": "mig", "device": "gpu-0-mig-4g20gb-5-0"})
    doomed = node.start(env={"DRA_DRIVER_TEST_CRASH_AT": "after-mig-destroy"})
    await register(doomed.registration_socket)
    async with DraClient(doomed.dra_socket) as dra:
        assert (await dra.prepare([ref])).claims[ref.uid].error == ""
        assert len(node.migs()[0]) == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await dra.unprepare([ref], timeout=10)
    assert doomed.wait_exit() == 137
    assert node.migs() == {} and ref.uid in node.checkpoint()
    plugin = node.start()
    await register(plugin.registration_socket)
    async with DraClient(plugin.dra_socket) as dra:
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.migs() == {} and node.checkpoint() == {}


async def test_a_restart_keeps_what_it_made_abstract_and_destroys_it_later(
    node_factory: Any,
) -> None:
    node = node_factory("a100-dynamic")
    name = "gpu-1-mig-3g20gb-9-4"
    ref = node.claim({"request": "mig", "device": name})
    first = node.start()
    await register(first.registration_socket)
    async with DraClient(first.dra_socket) as dra:
        assert (await dra.prepare([ref])).claims[ref.uid].error == ""
    first.stop()
    (made,) = node.migs()[1]
    plugin = node.start()  # its start-up inventory now lists the instance
    await register(plugin.registration_socket)
    devices, _ = node.published()
    (published,) = [d for d in devices if d["name"] == name]
    assert "uuid" not in published["attributes"]  # still the abstract device, not an operator's
    async with DraClient(plugin.dra_socket) as dra:
        again = await dra.prepare([ref])  # answered from the checkpoint
        assert [d.device_name for d in again.claims[ref.uid].devices] == [name]
        assert (await dra.unprepare([ref])).claims[ref.uid].error == ""
    assert node.migs() == {}
    assert made.uuid in plugin.log_text() or "destroyed MIG device" in plugin.log_text()


async def test_a_hung_create_fails_the_claim_within_the_deadline(node_factory: Any) -> None:
    node = node_factory("a100-dynamic")
    plugin = node.start(extra=("--mig-deadline=1",))
    await register(plugin.registration_socket)
    faults = fakenvml.FaultInjector(node.topology, node.fault_log)
    faults.hang(gpu=0, fn="nvmlDeviceCreateGpuInstanceWithPlacement")
    stuck = node.claim({"request": "mig", "device": "gpu-0-mig-1g5gb-19-0"})
    other = node.claim({"request": "mig", "device": "gpu-1-mig-1g5gb-19-0"})
    async with DraClient(plugin.dra_socket) as dra:
        t = time.monotonic()
        resp = await dra.prepare([stuck, other])
        assert time.monotonic() - t < 10
        assert "has not answered" in resp.claims[stuck.uid].error
        assert resp.claims[other.uid].error == ""  # the other GPU is not held up
        faults.release()
        # The abandoned create finishes once NVML answers: an instance nobody recorded.
        deadline = time.monotonic() + 10
        while not node.migs().get(0) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert node.migs().get(0), "the abandoned create never finished"
        # The kubelet's first retry clears what the abandoned attempt left, and prepares.
        retry = await dra.prepare([stuck])
        assert retry.claims[stuck.uid].error == "", retry.claims[stuck.uid].error
        assert len(node.migs()[0]) == 1
        assert (await dra.unprepare([stuck, other])).claims[stuck.uid].error == ""
    assert node.migs() == {} and node.checkpoint() == {}
