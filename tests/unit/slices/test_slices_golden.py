"""Golden ResourceSlices for the shipped fake topologies and a synthetic 16-GPU node.

Regenerate after an intended change with UPDATE_GOLDEN=1 and review the diff.
Every golden slice must survive a round trip through the official client's
V1ResourceSlice model unchanged (no field we send is unknown to the API).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from dra_driver import cli
from dra_driver.inventory import Inventory, build_inventory
from dra_driver.nvml import open_backend
from dra_driver.nvml.types import NvmlSnapshot
from dra_driver.slices import validation
from dra_driver.slices.builder import build_slices
from dra_driver.testing import gpu_record, library_path, mig_profile, mig_record, snapshot

GOLDEN = Path(__file__).resolve().parents[3] / "tests" / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
DRIVER = "gpu.nvidia.com"
NODE = "node-a"
NODE_UID = "0f3c6a52-5d1e-4d43-9a55-7a3c1b2f9e01"
MiB = 1024**2

FAKE_CASES = [
    ("dgx-h100", False, "slices-dgx-h100"),
    ("a100", False, "slices-a100"),
    ("small", False, "slices-small"),
    ("dgx-h100", True, "slices-dgx-h100-partitionable"),
]


def fake_inventory(
    topology: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Inventory:
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", topology)
    monkeypatch.setenv("FAKE_NVML_FAULTS", str(tmp_path / "faults.jsonl"))
    nvml = open_backend(library=library_path(), backend=backend)
    try:
        return build_inventory(nvml.inventory(), backend=nvml.name)
    finally:
        nvml.close()


def synthetic_16x7() -> NvmlSnapshot:
    """16 H100s in MIG mode with seven 1g.10gb devices each: 112 devices, two slices."""
    one_g = mig_profile(19, "1g.10gb", 1, range(7))
    return snapshot(
        *(
            gpu_record(
                g,
                (
                    mig_record(
                        i,
                        gpu=g,
                        gi=7 + i,
                        uuid=f"MIG-{g:08x}-{i:04x}-4000-8000-{g * 16 + i:012x}",
                        memory_bytes=9984 * MiB,
                    )
                    for i in range(7)
                ),
                uuid=f"GPU-{g:08x}-1111-4000-8000-00000000{g:04x}",
                bus=f"00000000:{0x18 + g * 8:02X}:00.0",
                memory_total_bytes=81559 * MiB,
                mig_profiles=(one_g,),
            )
            for g in range(16)
        )
    )


def golden_text(value: Any, depth: int = 0) -> str:
    """JSON with one device or counter set per line: small files, reviewable diffs."""
    pad = "  " * (depth + 1)
    if depth >= 4 or not isinstance(value, dict | list) or not value:
        return json.dumps(value, separators=(", ", ": "))
    if isinstance(value, list):
        items = [pad + golden_text(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * depth + "]"
    items = [f"{pad}{json.dumps(k)}: {golden_text(v, depth + 1)}" for k, v in value.items()]
    return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"


def check_golden(name: str, objs: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(golden_text(objs) + "\n")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text()) == objs, f"{path} differs: UPDATE_GOLDEN=1 to accept"


def check_valid_and_lossless(objs: list[dict[str, Any]]) -> None:
    api = client.ApiClient()
    for obj in objs:
        spec = obj["spec"]
        assert validation.slice_problems(spec) == []
        for dev in spec.get("devices", []):
            checked = validation.check_device(dev)
            assert checked.problems == [] and checked.value == dev
        model = api.deserialize(json.dumps(obj), "V1ResourceSlice", "application/json")
        assert isinstance(model, client.V1ResourceSlice)
        assert api.sanitize_for_serialization(model) == obj


@pytest.mark.parametrize("backend", ["cffi", "nvidia-ml-py"])
@pytest.mark.parametrize(("topology", "partitionable", "golden"), FAKE_CASES)
def test_fake_topology_golden(
    topology: str,
    partitionable: bool,
    golden: str,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inv = fake_inventory(topology, backend, tmp_path, monkeypatch)
    objs, problems = build_slices(
        inv, driver=DRIVER, node_name=NODE, node_uid=NODE_UID, partitionable=partitionable
    )
    assert problems == ()
    check_valid_and_lossless(objs)
    check_golden(golden, objs)


def test_synthetic_sixteen_gpu_node_golden() -> None:
    objs, problems = build_slices(
        build_inventory(synthetic_16x7()), driver=DRIVER, node_name=NODE, node_uid=NODE_UID
    )
    assert problems == ()
    assert [len(o["spec"]["devices"]) for o in objs] == [63, 49]
    assert {o["spec"]["pool"]["resourceSliceCount"] for o in objs} == {2}
    check_valid_and_lossless(objs)
    check_golden("slices-synthetic-16x7", objs)


def test_synthetic_sixteen_gpu_partitionable_shards_counter_sets() -> None:
    objs, problems = build_slices(
        build_inventory(synthetic_16x7()), driver=DRIVER, node_name=NODE, partitionable=True
    )
    assert problems == ()
    check_valid_and_lossless(objs)
    assert [len(o["spec"].get("sharedCounters", [])) for o in objs[:2]] == [8, 8]
    assert all("sharedCounters" not in o["spec"] for o in objs[2:])
    # In MIG mode: the seven MIG devices each GPU has (no full GPU, no abstract ones).
    assert sum(len(o["spec"].get("devices", [])) for o in objs) == 16 * 7


@pytest.mark.parametrize(("topology", "partitionable", "golden"), FAKE_CASES)
@pytest.mark.parametrize("output", ["json", "yaml"])
def test_slices_command_prints_the_golden_slices(
    topology: str,
    partitionable: bool,
    golden: str,
    output: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_NVML_TOPOLOGY", topology)
    monkeypatch.setenv("FAKE_NVML_FAULTS", str(tmp_path / "faults.jsonl"))
    argv = ["slices", "--nvml-library", library_path(), "--node", NODE, "-o", output]
    argv += ["--sys-root", str(tmp_path), "--nvml-backend", "cffi"]
    if partitionable:
        argv.append("--partitionable-devices")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    items = json.loads(out)["items"] if output == "json" else list(yaml.safe_load_all(out))
    expected = json.loads((GOLDEN / f"{golden}.json").read_text())
    for obj in expected:
        del obj["metadata"]["ownerReferences"]  # a dry run does not know the Node's UID
    assert items == expected


def test_slices_command_rejects_an_invalid_node_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["slices", "--node", "Not A Node"]) == 2
    assert "pool name" in capsys.readouterr().err
