"""The fake NVML's operator MIG re-layout: mig_destroy / mig_create through the fault log.

Each scenario reads the inventory in a fresh `dra-driver inventory` process (the
library is process-global), through both NVML backends, so what the driver sees
is what any conforming NVML client sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from dra_driver.settings import hermetic_environ
from dra_driver.testing.fakenvml import FakeNode, FakeNvmlError, library_path


def migs(node: FakeNode, backend: str) -> dict[str, str]:
    """MIG device name -> uuid, as `dra-driver inventory --json` reads them."""
    env = {**hermetic_environ(), **node.env()}
    out = subprocess.run(
        [sys.executable, "-m", "dra_driver", "inventory", "--json",
         f"--nvml-library={library_path()}", f"--nvml-backend={backend}"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    doc: dict[str, Any] = json.loads(out.stdout)
    found = {}
    for d in doc["devices"]:
        if d.get("type") == "mig":
            found[d["name"]] = d["uuid"]
    return found


@pytest.fixture
def node() -> FakeNode:
    return FakeNode("small")


@pytest.mark.parametrize("backend", ["cffi", "nvidia-ml-py"])
def test_destroy_then_create_again(node: FakeNode, backend: str) -> None:
    g0 = node.spec.gpu(0)
    before = migs(node, backend)
    assert len(before) == len(g0.mig_devices) == 4
    first = g0.mig_devices[0]
    name = next(n for n, u in before.items() if u == first.uuid)
    node.faults.mig_destroy(0, first.gi_id)
    after = migs(node, backend)
    assert set(after) == set(before) - {name}
    node.faults.mig_create(0, first.profile_id, first.placement_start)
    again = migs(node, backend)
    assert set(again) == set(before)
    # A new device in the old place: same name (profile + placement), new UUID.
    assert again[name] != first.uuid and again[name].startswith("MIG-")


def test_create_with_ids_and_refusals(node: FakeNode) -> None:
    g0 = node.spec.gpu(0)
    before = migs(node, "cffi")
    node.faults.mig_create(0, g0.mig_devices[0].profile_id)  # no free placement: nothing
    node.faults.mig_destroy(0, 63)  # no such instance: nothing
    assert migs(node, "cffi") == before
    node.faults.mig_destroy(0, g0.mig_devices[1].gi_id)
    uuid = "MIG-11111111-2222-4333-8444-555555555555"
    node.faults.mig_create(0, g0.mig_devices[1].profile_id, gi=30, uuid=uuid)
    assert uuid in migs(node, "cffi").values()


def test_a_refolded_log_restores_the_topology_layout(node: FakeNode) -> None:
    before = migs(node, "cffi")
    node.faults.mig_destroy(0, node.spec.gpu(0).mig_devices[0].gi_id)
    assert migs(node, "cffi") != before
    node.reset_faults()
    assert migs(node, "cffi") == before


def test_injector_refuses_bad_arguments(node: FakeNode) -> None:
    with pytest.raises(FakeNvmlError):
        node.faults.mig_destroy(0, -1)
    with pytest.raises(FakeNvmlError):
        node.faults.mig_create(0, 19, uuid="GPU-not-a-mig")
    log = str(node.fault_log)
    assert not os.path.exists(log) or os.path.getsize(log) == 0
