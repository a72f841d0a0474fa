"""The fake NVML creates and destroys MIG instances with real NVML semantics, for every process.

Each test runs nvidia-ml-py on the fake in a fresh subprocess (the library's
state is per process, so that is also how "another process sees it" is shown),
against a100-dynamic: GPUs 0 and 1 in MIG mode with no MIG devices, 2 and 3 not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dra_driver.testing import fakenvml

INSUFFICIENT_RESOURCES = 23
IN_USE = 19
NOT_SUPPORTED = 3
INVALID_ARGUMENT = 2
NO_PERMISSION = 4

_PRELUDE = """
import ctypes, json, os, sys
from dra_driver.testing.fakenvml import load_into_pynvml
n = load_into_pynvml()
n.nvmlInit()
out = {}
def rc(fn, *a):
    try:
        fn(*a)
        return 0
    except n.NVMLError as e:
        return e.value
def place(start, size):
    p = n.c_nvmlGpuInstancePlacement_t()
    p.start, p.size = start, size
    return ctypes.byref(p)
def create(gpu, profile, start, size):
    dev = n.nvmlDeviceGetHandleByIndex(gpu)
    gi = n.nvmlDeviceCreateGpuInstanceWithPlacement(dev, profile, place(start, size))
    slices = {19: 1, 14: 2, 9: 3, 5: 4, 0: 7, 15: 1, 20: 1}[profile]
    ci_profile = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4}[slices]
    info = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_profile, 0)
    ci = n.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
    return gi, ci
def migs(gpu):
    dev = n.nvmlDeviceGetHandleByIndex(gpu)
    found = []
    for i in range(n.nvmlDeviceGetMaxMigDeviceCount(dev)):
        try:
            m = n.nvmlDeviceGetMigDeviceHandleByIndex(dev, i)
        except n.NVMLError_NotFound:
            continue
        uuid = n.nvmlDeviceGetUUID(m)
        found.append([i, uuid if isinstance(uuid, str) else uuid.decode(),
                      n.nvmlDeviceGetGpuInstanceId(m), n.nvmlDeviceGetComputeInstanceId(m)])
    return found
"""


def _run(node: fakenvml.FakeNode, body: str) -> dict:
    env = {**_base_env(), **node.env()}
    code = _PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}


@pytest.fixture
def node(tmp_path: Path) -> fakenvml.FakeNode:
    return fakenvml.FakeNode("a100-dynamic", tmp_path / "node.faults.jsonl")


def test_a100_dynamic_has_two_empty_mig_gpus_and_two_without_mig() -> None:
    topo = fakenvml.load_topology("a100-dynamic")
    assert len(topo.gpus) == 4
    assert {g.model for g in topo.gpus} == {"A100-SXM4-40GB"}
    assert all(g.mig_devices == () for g in topo.gpus)
    assert [topo.raw["gpus"][i]["mig"]["current"] for i in range(4)] == [1, 1, 0, 0]


def test_created_instance_is_a_mig_device_that_another_process_sees(
    node: fakenvml.FakeNode,
) -> None:
    made = _run(
        node,
        """
        gi, ci = create(0, 19, 3, 1)
        info = n.nvmlGpuInstanceGetInfo(gi)
        out["gi"] = [info.id, info.profileId, info.placement.start, info.placement.size]
        out["migs"] = migs(0)
    """,
    )
    gi_id = made["gi"][0]
    assert made["gi"][1:] == [19, 3, 1]
    ((_slot, uuid, mig_gi, mig_ci),) = made["migs"]
    assert (mig_gi, mig_ci) == (gi_id, 0) and uuid.startswith("MIG-")
    seen = _run(
        node,
        f"""
        out["migs"] = migs(0)
        out["by_uuid"] = n.nvmlDeviceGetGpuInstanceId(n.nvmlDeviceGetHandleByUUID({uuid!r}))
    """,
    )
    assert seen["migs"] == made["migs"]
    assert seen["by_uuid"] == gi_id
    assert fakenvml.current_migs(node.spec, node.fault_log)[0] == (
        fakenvml.TopologyMig(19, 3, gi_id, 0, uuid),
    )


def test_overlap_limits_and_bad_arguments_answer_as_nvml_does(node: fakenvml.FakeNode) -> None:
    got = _run(
        node,
        """
        dev0, dev2 = n.nvmlDeviceGetHandleByIndex(0), n.nvmlDeviceGetHandleByIndex(2)
        create(0, 9, 0, 4)  # 3g.20gb on slices 0..3
        out["overlap"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev0, 19, place(2, 1))
        out["not_offered"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev0, 19, place(7, 1))
        out["wrong_size"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev0, 19, place(4, 2))
        out["unknown_profile"] = rc(
            n.nvmlDeviceCreateGpuInstanceWithPlacement, dev0, 99, place(0, 1))
        out["mig_off"] = rc(n.nvmlDeviceCreateGpuInstance, dev2, 19)
        out["full_gpu_profile"] = rc(n.nvmlDeviceCreateGpuInstance, dev0, 0)
        create(0, 20, 4, 1)  # 1g.5gb+me: one per GPU
        out["me_twice"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev0, 20, place(5, 1))
        out["remaining_1g"] = n.nvmlDeviceGetGpuInstanceRemainingCapacity(dev0, 19)
        gi = n.nvmlDeviceCreateGpuInstance(dev0, 19)  # first free placement: 5
        out["auto_start"] = n.nvmlGpuInstanceGetInfo(gi).placement.start
        out["ci"] = rc(n.nvmlGpuInstanceCreateComputeInstance, gi, 0)
        out["second_ci"] = rc(n.nvmlGpuInstanceCreateComputeInstance, gi, 0)
        out["gi_with_ci"] = rc(n.nvmlGpuInstanceDestroy, gi)
    """,
    )
    assert got == {
        "overlap": INSUFFICIENT_RESOURCES,
        "not_offered": INVALID_ARGUMENT,
        "wrong_size": INVALID_ARGUMENT,
        "unknown_profile": INVALID_ARGUMENT,
        "mig_off": NOT_SUPPORTED,
        "full_gpu_profile": INSUFFICIENT_RESOURCES,
        "me_twice": INSUFFICIENT_RESOURCES,
        "remaining_1g": 2,  # slices 5 and 6 (7 is not offered to 1g.5gb)
        "auto_start": 5,
        "ci": 0,
        "second_ci": INSUFFICIENT_RESOURCES,
        "gi_with_ci": IN_USE,
    }


def test_destroy_leaves_a_hole_and_stale_handles_are_invalid(node: fakenvml.FakeNode) -> None:
    got = _run(
        node,
        """
        a = create(0, 19, 0, 1)
        b = create(0, 19, 1, 1)
        n.nvmlComputeInstanceDestroy(a[1])
        out["ci_again"] = rc(n.nvmlComputeInstanceDestroy, a[1])
        n.nvmlGpuInstanceDestroy(a[0])
        out["gi_again"] = rc(n.nvmlGpuInstanceDestroy, a[0])
        out["info_stale"] = rc(n.nvmlGpuInstanceGetInfo, a[0])
        out["migs"] = [m[0] for m in migs(0)]
        c = create(0, 14, 2, 2)
        out["after"] = [[m[0], m[2]] for m in migs(0)]
    """,
    )
    assert got["ci_again"] == INVALID_ARGUMENT and got["gi_again"] == INVALID_ARGUMENT
    assert got["info_stale"] == INVALID_ARGUMENT
    assert got["migs"] == [1]  # slot 0 is a hole now
    assert got["after"] == [[0, 1], [1, 2]]  # the freed slot and GI id are reused


def test_busy_device_refuses_destroy_until_idle(node: fakenvml.FakeNode) -> None:
    made = _run(node, 'out["gi"] = n.nvmlGpuInstanceGetInfo(create(1, 5, 0, 4)[0]).id')
    node.faults.mig_busy(1, made["gi"])
    body = f"""
        dev = n.nvmlDeviceGetHandleByIndex(1)
        gi = n.nvmlDeviceGetGpuInstanceById(dev, {made["gi"]})
        ci = n.nvmlGpuInstanceGetComputeInstanceById(gi, 0)
        out["ci"] = rc(n.nvmlComputeInstanceDestroy, ci)
    """
    assert _run(node, body) == {"ci": IN_USE}
    node.faults.mig_busy(1, made["gi"], busy=False)
    assert _run(node, body) == {"ci": 0}


def test_fail_fault_makes_create_fail_then_release_lifts_it(node: fakenvml.FakeNode) -> None:
    node.faults.fail("nvmlDeviceCreateGpuInstanceWithPlacement", NO_PERMISSION, gpu=0, count=2)
    node.faults.fail("nvmlComputeInstanceDestroy", INSUFFICIENT_RESOURCES)
    got = _run(
        node,
        """
        dev = n.nvmlDeviceGetHandleByIndex(0)
        out["first"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev, 19, place(0, 1))
        out["second"] = rc(n.nvmlDeviceCreateGpuInstanceWithPlacement, dev, 19, place(0, 1))
        out["other_gpu"] = rc(create, 1, 19, 0, 1)
        gi, ci = create(0, 19, 0, 1)
        out["destroy"] = rc(n.nvmlComputeInstanceDestroy, ci)
        out["migs"] = len(migs(0))
    """,
    )
    assert got == {
        "first": NO_PERMISSION,
        "second": NO_PERMISSION,
        "other_gpu": 0,
        "destroy": INSUFFICIENT_RESOURCES,
        "migs": 1,
    }
    node.faults.release(fn="nvmlComputeInstanceDestroy")
    got = _run(
        node,
        """
        dev = n.nvmlDeviceGetHandleByIndex(0)
        ci = n.nvmlGpuInstanceGetComputeInstanceById(n.nvmlDeviceGetGpuInstanceById(dev, 1), 0)
        out["destroy"] = rc(n.nvmlComputeInstanceDestroy, ci)
    """,
    )
    assert got == {"destroy": 0}


def test_layout_changes_are_mig_config_events(node: fakenvml.FakeNode) -> None:
    got = _run(
        node,
        """
        dev = n.nvmlDeviceGetHandleByIndex(0)
        es = n.nvmlEventSetCreate()
        assert n.nvmlDeviceGetSupportedEventTypes(dev) & n.nvmlEventMigConfigChange
        n.nvmlDeviceRegisterEvents(dev, n.nvmlEventMigConfigChange, es)
        gi, ci = create(0, 19, 0, 1)
        seen = []
        for _ in range(2):
            e = n.nvmlEventSetWait_v2(es, 1000)
            seen.append([e.eventType, e.gpuInstanceId, e.computeInstanceId])
        out["events"] = seen
    """,
    )
    assert got["events"] == [[0x100, 1, 0xFFFFFFFF], [0x100, 1, 0]]


def test_cli_creates_lists_and_destroys_like_an_operator(
    node: fakenvml.FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    made = node.faults.create_mig_device(0, "2g.10gb", placement=2)
    assert (made.profile_id, made.placement_start, made.ci_id) == (14, 2, 0)
    auto = node.faults.create_mig_device(0, "1g.5gb")
    assert auto.placement_start == 0
    with pytest.raises(fakenvml.FakeNvmlError, match="Insufficient resources"):
        node.faults.create_mig_device(0, "3g.20gb", placement=0)
    with pytest.raises(fakenvml.FakeNvmlError, match="no MIG profile"):
        node.faults.create_mig_device(0, "5g.99gb")
    args = ["--topology", "a100-dynamic", "--faults", str(node.fault_log)]
    assert fakenvml.main(["mig-list", *args]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["gi_id"] for m in listed["0"]] == [made.gi_id, auto.gi_id]
    node.faults.xid(0, 43, gi=made.gi_id)  # the injector knows created instances
    node.faults.destroy_mig_device(0, made.gi_id)
    assert [m.gi_id for m in fakenvml.current_migs(node.spec, node.fault_log)[0]] == [auto.gi_id]
