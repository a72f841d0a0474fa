"""Dynamic MIG latency: create+prepare and unprepare+destroy, in process, through NVML.

Usage: PYTHONPATH=. .venv/bin/python tests/bench/bench_dynamic_mig.py [--rounds N]
       PYTHONPATH=. .venv/bin/python tests/bench/bench_dynamic_mig.py --hardware
           [--nvml-library PATH] [--rounds N]

Default: the fake's a100-dynamic (GPUs 0 and 1 in MIG mode, no MIG devices).
Each round prepares a claim for one MIG device that does not exist yet (so the
preparer creates it: GI + CI through the cffi fast path, intent and ids in the
checkpoint, CDI spec) and unprepares it (spec removed, instance destroyed,
record dropped); checkpoint fsyncs are included. Also printed: the bare
create and destroy through the fast path alone (bench_prepare.py has the
static-device prepare to compare with).

--hardware runs the same on this machine's GPUs through the system's
libnvidia-ml (or --nvml-library): it never changes MIG mode and never touches
a MIG device it did not create. It needs a GPU already in MIG mode with a free
placement for its smallest profile, else it prints why it skipped and exits 0.
CDI specs and the checkpoint go to a temporary directory; device nodes and MIG
capability files are read from the real /dev and /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from dra_driver.commands.inventory import load_inventory
from dra_driver.inventory import Gpu, Inventory, mig_device_name
from dra_driver.nvml.errors import NvmlError, NvmlInsufficientResourcesError
from dra_driver.nvml.migops import CffiMigManager
from dra_driver.nvml.types import MigProfile
from dra_driver.prepare.options import PreparerConfig
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.types import ClaimRef
from dra_driver.settings import Settings
from dra_driver.testing.claims import MemoryClaimSource
from dra_driver.testing.fakenvml import library_path
from dra_driver.testing.simhost import claim_object, claim_uid, populate_host

NODE = "bench-node"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3


def free_placement(
    manager: CffiMigManager, inv: Inventory, largest: bool = False
) -> tuple[Gpu, MigProfile, int] | None:
    """A (GPU, profile, start) that can be created now, found by creating and destroying it.

    Only instances made here are destroyed; a placement an existing device
    covers answers INSUFFICIENT_RESOURCES and is skipped.
    """
    for gpu in (g for g in inv.gpus if g.mig_enabled):
        plain = [p for p in gpu.mig_profiles if "+" not in p.name and p.placements]
        for profile in sorted(plain, key=lambda p: p.slice_count, reverse=largest):
            for start, _size in profile.placements:
                try:
                    made = manager.create(gpu.uuid, profile.profile_id, start)
                except NvmlInsufficientResourcesError:
                    continue
                manager.destroy(gpu.uuid, made.gpu_instance_id, made.compute_instance_id)
                return gpu, profile, start
            break  # the smallest (or largest) profile has no free placement on this GPU
    return None


async def bench(rounds: int, hardware: bool, library: str | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dynmig-", dir="/tmp"))
    try:
        if hardware:
            lib = library
            where = f"this machine's NVML ({library or 'libnvidia-ml.so.1'})"
        else:
            os.environ["FAKE_NVML_TOPOLOGY"] = "a100-dynamic"
            os.environ["FAKE_NVML_FAULTS"] = str(tmp / "fakenvml" / "a100-dynamic.faults.jsonl")
            lib = library_path()
            where = "fake NVML a100-dynamic"
        try:
            inv = load_inventory(Settings(nvml_library=lib, dynamic_mig=True))
        except NvmlError as e:
            print(f"skip: cannot read {where}: {e}")
            return
        if not any(g.mig_enabled for g in inv.gpus):
            print(f"skip: no GPU in MIG mode on {where} (this bench never changes MIG mode)")
            return
        if hardware:
            dev_root, proc_root, driver_root = Path("/"), Path("/proc"), Path("/")
        else:
            host = populate_host(tmp / "host", inv, spare_mig_caps=True)
            dev_root, proc_root, driver_root = host.dev_root, host.proc_root, host.driver_root
        manager = CffiMigManager(lib)
        small = free_placement(manager, inv)
        if small is None:
            print(f"skip: no free placement on the MIG-mode GPUs of {where}")
            manager.close()
            return
        big = None if hardware else free_placement(manager, inv, largest=True)
        config = PreparerConfig(
            driver_name="gpu.nvidia.com",
            pool_name=NODE,
            state_dir=tmp / "state",
            cdi_root=tmp / "cdi",
            dev_root=dev_root,
            proc_root=proc_root,
            driver_root=driver_root,
            dynamic_mig=True,
        )
        source = MemoryClaimSource()
        prep = ClaimPreparer(config, lambda: inv, source, None, None, migs=manager)
        await prep.start()
        n = 0

        def claim(device: str) -> ClaimRef:
            nonlocal n
            n += 1
            uid = claim_uid(n)
            results = [{"request": "mig", "device": device}]
            source.put(claim_object(uid, f"c{n}", results, pool=NODE))
            return ClaimRef("default", uid, f"c{n}")

        async def cycle(device: str, count: int) -> tuple[list[float], list[float]]:
            p, u = [], []
            for _ in range(count):
                ref = claim(device)
                t = time.perf_counter()
                res = await prep.prepare([ref])
                p.append(time.perf_counter() - t)
                assert res[ref.uid].error == "", res[ref.uid].error
                t = time.perf_counter()
                un = await prep.unprepare([ref])
                u.append(time.perf_counter() - t)
                assert un[ref.uid].error == "", un[ref.uid].error
            return p, u

        def name(target: tuple[Gpu, MigProfile, int]) -> tuple[str, str]:
            gpu, profile, start = target
            return profile.name, mig_device_name(gpu.minor, profile.name, profile.profile_id, start)

        rows: list[tuple[str, list[float]]] = []
        warm = 3 if hardware else 10
        for target, count in ((small, rounds), (big, max(rounds // 2, 10))):
            if target is None:
                continue
            label, device = name(target)
            await cycle(device, warm)
            p, u = await cycle(device, count)
            rows += [(f"create+prepare {label}", p), (f"unprepare+destroy {label}", u)]
        await prep.close()

        gpu, profile, start = small
        create, destroy = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            made = manager.create(gpu.uuid, profile.profile_id, start)
            create.append(time.perf_counter() - t)
            t = time.perf_counter()
            try:
                manager.destroy(gpu.uuid, made.gpu_instance_id, made.compute_instance_id)
            except NvmlError:
                manager.destroy_at(gpu.uuid, profile.profile_id, start)
                raise
            destroy.append(time.perf_counter() - t)
        rows += [
            ("fast path create alone (GI+CI+UUID)", create),
            ("fast path destroy alone (CI+GI)", destroy),
        ]
        calls = manager.nvml_calls
        manager.close()

        print(f"node: {where}; {rounds} rounds; checkpoint fsync included")
        print(f"\n{'what':<40}{'p50':>10}{'p99':>10}")
        for label, values in rows:
            print(f"{label:<40}{pct(values, 0.5):>8.2f}ms{pct(values, 0.99):>8.2f}ms")
        print(f"\nNVML calls through the MIG fast path: {calls}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--hardware",
        action="store_true",
        help="this machine's GPUs in MIG mode instead of the fake (MIG mode is never changed)",
    )
    parser.add_argument("--nvml-library", help="with --hardware: libnvidia-ml.so.1 to load")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    asyncio.run(bench(args.rounds, args.hardware, args.nvml_library))


if __name__ == "__main__":
    main()
