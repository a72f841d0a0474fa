"""A simulated node with a ClaimPreparer, for the hardening regression tests (not a test module)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dra_driver.health.board import HealthBoard
from dra_driver.inventory import Inventory
from dra_driver.prepare.options import PreparerConfig
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.sources import ClaimSource
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import MemoryClaimSource
from dra_driver.testing.simhost import (
    SimHost,
    claim_object,
    claim_uid,
    make_inventory,
    populate_host,
)

NODE = "node-1"
API = "resource.nvidia.com/v1beta1"
PREFIX = "k8s.gpu.nvidia.com-claim_"


@dataclass
class Node:
    host: SimHost
    settings: PreparerConfig
    inv: Inventory
    source: MemoryClaimSource
    board: HealthBoard

    def preparer(self, source: ClaimSource | None = None) -> ClaimPreparer:
        return ClaimPreparer(
            self.settings, lambda: self.inv, source or self.source, self.board, None
        )

    def put(self, n: int, *results: dict[str, Any], **kw: Any) -> ClaimRef:
        uid = claim_uid(n)
        self.source.put(claim_object(uid, f"claim-{n}", results, pool=NODE, **kw))
        return ClaimRef("default", uid, f"claim-{n}")

    def cdi_files(self) -> list[str]:
        root = self.settings.cdi_root
        return sorted(n for n in os.listdir(root) if n.endswith(".json")) if root.exists() else []

    def spec_path(self, uid: str) -> Path:
        return self.settings.cdi_root / f"{PREFIX}{uid}.json"

    def spec(self, uid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.spec_path(uid).read_bytes())
        return data


def simulated_host(
    tmp_path: Path, gpus: int = 4, mig_gpus: tuple[int, ...] = (3,)
) -> tuple[Inventory, SimHost, PreparerConfig]:
    """An inventory, its host tree under tmp_path and a preparer config pointing at both."""
    inv = make_inventory(gpus, mig_gpus)
    host = populate_host(tmp_path / "host", inv)
    settings = PreparerConfig(
        driver_name="gpu.nvidia.com",
        pool_name=NODE,
        state_dir=tmp_path / "plugins" / "gpu.nvidia.com",
        cdi_root=tmp_path / "cdi",
        dev_root=host.dev_root,
        proc_root=host.proc_root,
        driver_root=host.driver_root,
    )
    return inv, host, settings


def make_node(tmp_path: Path, gpus: int = 4, mig_gpus: tuple[int, ...] = (3,)) -> Node:
    inv, host, settings = simulated_host(tmp_path, gpus, mig_gpus)
    return Node(host, settings, inv, MemoryClaimSource(), HealthBoard(d.name for d in inv.devices))


def gpu_config(**sharing: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "GpuConfig", "sharing": sharing}
