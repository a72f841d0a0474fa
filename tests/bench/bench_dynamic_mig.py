"""Dynamic MIG latency: create+prepare and unprepare+destroy, in process, on the fake NVML.

Usage: PYTHONPATH=. .venv/bin/python tests/bench/bench_dynamic_mig.py [--rounds N]

The node is the fake's a100-dynamic (GPUs 0 and 1 in MIG mode, no MIG devices).
Each round prepares a claim for one MIG device that does not exist yet (so the
preparer creates it: GI + CI through the cffi fast path, intent and ids in the
checkpoint, CDI spec) and unprepares it (spec removed, instance destroyed,
record dropped); checkpoint fsyncs are included. Also printed: the bare
create and destroy through the fast path alone (bench_prepare.py has the
static-device prepare to compare with).
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
from dra_driver.nvml.migops import CffiMigManager
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


def caps_for_every_instance(proc_root: Path, minors: list[int]) -> None:
    n = 1000
    for minor in minors:
        base = proc_root / "driver/nvidia/capabilities" / f"gpu{minor}" / "mig"
        for gi in range(1, 15):
            for access in (base / f"gi{gi}" / "access", base / f"gi{gi}" / "ci0" / "access"):
                access.parent.mkdir(parents=True, exist_ok=True)
                access.write_text(f"DeviceFileMinor: {n}\nDeviceFileMode: 292\n")
                n += 1


async def bench(rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dynmig-", dir="/tmp"))
    try:
        os.environ["FAKE_NVML_TOPOLOGY"] = "a100-dynamic"
        os.environ["FAKE_NVML_FAULTS"] = str(tmp / "fakenvml" / "a100-dynamic.faults.jsonl")
        lib = library_path()
        inv = load_inventory(Settings(nvml_library=lib))
        host = populate_host(tmp / "host", inv)
        caps_for_every_instance(host.proc_root, [g.minor for g in inv.gpus if g.mig_enabled])
        config = PreparerConfig(
            driver_name="gpu.nvidia.com",
            pool_name=NODE,
            state_dir=tmp / "state",
            cdi_root=tmp / "cdi",
            dev_root=host.dev_root,
            proc_root=host.proc_root,
            driver_root=host.driver_root,
            dynamic_mig=True,
        )
        manager = CffiMigManager(lib)
        source = MemoryClaimSource()
        prep = ClaimPreparer(config, lambda: inv, source, None, None, migs=manager)
        await prep.start()
        gpu0 = inv.gpus[0].uuid
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

        device = "gpu-0-mig-1g5gb-19-0"
        await cycle(device, 10)  # warm up
        dyn_p, dyn_u = await cycle(device, rounds)
        big_p, big_u = await cycle("gpu-1-mig-7g40gb-0-0", max(rounds // 2, 10))
        await prep.close()

        create, destroy = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            made = manager.create(gpu0, 19, 0)
            create.append(time.perf_counter() - t)
            t = time.perf_counter()
            manager.destroy(gpu0, made.gpu_instance_id, made.compute_instance_id)
            destroy.append(time.perf_counter() - t)
        calls = manager.nvml_calls
        manager.close()

        print(f"node: fake NVML a100-dynamic; {rounds} rounds; checkpoint fsync included")
        print(f"\n{'what':<40}{'p50':>10}{'p99':>10}")
        rows = (
            ("create+prepare 1g.5gb", dyn_p),
            ("unprepare+destroy 1g.5gb", dyn_u),
            ("create+prepare 7g.40gb", big_p),
            ("unprepare+destroy 7g.40gb", big_u),
            ("fast path create alone (GI+CI+UUID)", create),
            ("fast path destroy alone (CI+GI)", destroy),
        )
        for label, values in rows:
            print(f"{label:<40}{pct(values, 0.5):>8.2f}ms{pct(values, 0.99):>8.2f}ms")
        print(f"\nNVML calls through the MIG fast path: {calls}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(bench(args.rounds))


if __name__ == "__main__":
    main()
