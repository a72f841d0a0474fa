"""A simulated kubelet host for claim preparation: files, inventories and claims.

Tests, benchmarks and the demo point Settings.dev_root / proc_root /
driver_root at a temp tree built here. Device nodes are regular files (an
unprivileged process cannot mknod), so specs carry paths without
major/minor for them; MIG capability nodes get their major from a simulated
/proc/devices, as on a real host.
"""

from __future__ import annotations

import os
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..inventory import Inventory, build_inventory
from ..nvml.types import MIG_DISABLE, MIG_ENABLE, GpuRecord, MigRecord, NvmlSnapshot

NVIDIA_CAPS_MAJOR = 508
DRIVER_VERSION = "550.54.15"
SIM_LIBRARIES = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so")


@dataclass(frozen=True)
class SimHost:
    root: Path
    dev_root: Path
    proc_root: Path
    driver_root: Path
    boot_id_file: Path

    def set_boot_id(self, boot_id: str) -> None:
        self.boot_id_file.write_text(boot_id + "\n")


def make_snapshot(
    gpus: int = 2, mig_gpus: Iterable[int] = (), driver_version: str = DRIVER_VERSION
) -> NvmlSnapshot:
    """A synthetic H100-like node; GPUs listed in mig_gpus carry two 3g.40gb MIG devices."""
    mig = set(mig_gpus)
    records = []
    for i in range(gpus):
        migs: tuple[MigRecord, ...] = ()
        if i in mig:
            migs = tuple(
                MigRecord(
                    index=j,
                    uuid=f"MIG-{uuid_mod.UUID(int=(i + 1) << 64 | (j + 1))}",
                    gpu_instance_id=1 + j,
                    compute_instance_id=0,
                    gi_profile_id=9,
                    profile_name="3g.40gb",
                    placement_start=4 * j,
                    placement_size=4,
                    multiprocessors=60,
                    copy_engines=3,
                    decoders=3,
                    encoders=0,
                    jpeg_engines=3,
                    ofa_engines=0,
                    memory_bytes=40 * 1024**3,
                )
                for j in range(2)
            )
        records.append(
            GpuRecord(
                index=i,
                minor=i,
                uuid=f"GPU-{uuid_mod.UUID(int=i + 1)}",
                name="NVIDIA H100 80GB HBM3",
                brand=2,
                architecture=9,
                cuda_compute_capability=(9, 0),
                memory_total_bytes=80 * 1024**3,
                pci_bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
                mig_mode_current=MIG_ENABLE if i in mig else MIG_DISABLE,
                mig_mode_pending=MIG_ENABLE if i in mig else MIG_DISABLE,
                migs=migs,
            )
        )
    return NvmlSnapshot(
        driver_version=driver_version, cuda_driver_version=12040, gpus=tuple(records)
    )


def make_inventory(gpus: int = 2, mig_gpus: Iterable[int] = ()) -> Inventory:
    return build_inventory(make_snapshot(gpus, mig_gpus), backend="simulated")


def _touch(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def populate_host(
    root: Path,
    inventory: Inventory,
    *,
    boot_id: str = "00000000-0000-4000-8000-000000000001",
    cdi_hook: bool = False,
) -> SimHost:
    """Create dev/, proc/ and driver/ under root for inventory's GPUs and MIG devices."""
    dev, proc, driver = root / "dev-root", root / "proc", root / "driver-root"
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        _touch(dev / "dev" / name)
    cap = 1
    for gpu in inventory.gpus:
        _touch(dev / "dev" / f"nvidia{gpu.minor}")
        for d in gpu.mig_devices:
            assert d.mig is not None
            base = proc / "driver/nvidia/capabilities" / f"gpu{gpu.minor}" / "mig"
            gi = base / f"gi{d.mig.gpu_instance_id}"
            for access in (gi / "access", gi / f"ci{d.mig.compute_instance_id}" / "access"):
                if not access.exists():
                    _touch(
                        access,
                        f"DeviceFileMinor: {cap}\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
                    )
                    _touch(dev / "dev/nvidia-caps" / f"nvidia-cap{cap}")
                    cap += 1
    _touch(
        proc / "devices",
        f"Character devices:\n  1 mem\n195 nvidia\n{NVIDIA_CAPS_MAJOR} nvidia-caps\n",
    )
    boot = proc / "sys/kernel/random/boot_id"
    _touch(boot, boot_id + "\n")
    if cdi_hook:
        hook = driver / "usr/bin/nvidia-cdi-hook"
        _touch(hook, "#!/bin/sh\nexit 0\n")
        os.chmod(hook, 0o755)
        _touch(driver / "usr/bin/nvidia-smi")
        arch = os.uname().machine
        for lib in SIM_LIBRARIES:
            _touch(driver / f"usr/lib/{arch}-linux-gnu" / f"{lib}.{inventory.driver_version}")
    driver.mkdir(parents=True, exist_ok=True)
    return SimHost(root, dev, proc, driver, boot)


def claim_uid(n: int) -> str:
    """A deterministic, valid claim UID."""
    return str(uuid_mod.UUID(int=0xC1A1 << 96 | n))


def claim_object(
    uid: str,
    name: str,
    results: Sequence[Mapping[str, Any]],
    *,
    namespace: str = "default",
    configs: Sequence[Mapping[str, Any]] = (),
    driver: str = "gpu.nvidia.com",
    pool: str = "node-1",
    allocated: bool = True,
) -> dict[str, Any]:
    """A resource.k8s.io/v1 ResourceClaim as the API returns it.

    results: {"request", "device"} plus optional "adminAccess", "pool", "driver".
    configs: {"source", "requests", "parameters"} for this driver's opaque configs.
    """
    claim: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {"devices": {"requests": []}},
        "status": {},
    }
    if allocated:
        claim["status"]["allocation"] = {
            "devices": {
                "results": [
                    {"driver": driver, "pool": pool, **{k: v for k, v in r.items()}}
                    for r in results
                ],
                "config": [
                    {
                        "source": c.get("source", "FromClaim"),
                        **({"requests": list(c["requests"])} if c.get("requests") else {}),
                        "opaque": {
                            "driver": c.get("driver", driver),
                            "parameters": c["parameters"],
                        },
                    }
                    for c in configs
                ],
            }
        }
    return claim
