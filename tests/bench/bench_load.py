"""Load and soak: 50 concurrent kubelet clients against the real `dra-driver run` process.

Usage:
  PYTHONPATH=. .venv/bin/python tests/bench/bench_load.py [--clients 50] [--duration 60]
      [--warmup 60] [--sample 5] [--new-claim-every 10] [--think 0] [--cached-only]

The plugin runs on the fake NVML's dgx-h100-mig7 topology (56 MIG devices, so
each client has a device of its own) against the API server double. Each
client loops: NodePrepareResources of its claim, then NodeUnprepareResources;
every --new-claim-every rounds its claim is replaced by a new one (a new UID,
as pods come and go). Prints prepare and unprepare p50/p99, claims/s, errors,
and the plugin's RSS sampled every --sample seconds with the least-squares
slope after --warmup (the soak figure: run with --duration 600 or more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dra_driver.inventory import DeviceType, Inventory
from dra_driver.prepare.types import ClaimRef
from dra_driver.settings import Settings
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.kubelet import DraClient
from dra_driver.testing.plugin import PluginProcess
from dra_driver.testing.simhost import claim_object, populate_host

NODE = "bench-node"
TOPOLOGY = "dgx-h100-mig7"


def load_inventory(tmp: Path) -> Inventory:
    from dra_driver.commands.inventory import load_inventory as load
    from dra_driver.testing.fakenvml import library_path

    os.environ["FAKE_NVML_TOPOLOGY"] = TOPOLOGY
    os.environ["FAKE_NVML_STATE_DIR"] = str(tmp / "fakenvml-inv")
    return load(Settings(nvml_library=library_path()))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3 if values else 0.0


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


class Stats:
    def __init__(self) -> None:
        self.prepare: list[float] = []
        self.unprepare: list[float] = []
        self.errors: list[str] = []


def new_claim(api: ApiServerDouble, device: str) -> ClaimRef:
    name = f"load-{secrets.token_hex(4)}"
    obj = claim_object("", name, [{"request": "gpu", "device": device}], pool=NODE)
    del obj["metadata"]["uid"]
    created = api.create("resourceclaims", obj)
    return ClaimRef("default", created["metadata"]["uid"], name)


async def client_loop(
    endpoint: Path,
    api: ApiServerDouble,
    device: str,
    stop_at: float,
    every: int,
    stats: Stats,
    cached_only: bool = False,
    think: float = 0.0,
) -> None:
    loop = asyncio.get_running_loop()
    ref = await asyncio.to_thread(new_claim, api, device)
    rounds = 0
    async with DraClient(endpoint) as client:
        while loop.time() < stop_at:
            t0 = time.perf_counter()
            resp = await client.prepare([ref], timeout=45)
            t1 = time.perf_counter()
            err = resp.claims[ref.uid].error
            if err:
                stats.errors.append(f"prepare: {err}")
            if cached_only:
                stats.prepare.append(t1 - t0)
                continue
            resp = await client.unprepare([ref], timeout=45)
            t2 = time.perf_counter()
            if resp.claims[ref.uid].error:
                stats.errors.append(f"unprepare: {resp.claims[ref.uid].error}")
            stats.prepare.append(t1 - t0)
            stats.unprepare.append(t2 - t1)
            rounds += 1
            if think:
                await asyncio.sleep(think)
            if every and rounds % every == 0:
                old = ref
                ref = await asyncio.to_thread(new_claim, api, device)
                await asyncio.to_thread(api.delete, "resourceclaims", old.name, "default")


async def sample_rss(
    plugin: PluginProcess, every: float, stop_at: float, out: list[tuple[float, float]]
) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() < stop_at:
        out.append((loop.time() - start, plugin.rss_kib() / 1024))
        await asyncio.sleep(every)
    out.append((loop.time() - start, plugin.rss_kib() / 1024))


async def bench(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="bench-load-", dir="/tmp"))
    try:
        inv = load_inventory(root)
        migs = [d.name for d in inv.devices if d.type is DeviceType.MIG]
        if len(migs) < args.clients:
            raise SystemExit(f"{len(migs)} MIG devices for {args.clients} clients")
        host = populate_host(root, inv)
        with ApiServerDouble() as api:
            api.create_node(NODE)
            plugin = PluginProcess.start(
                root,
                [
                    f"--kubeconfig={api.kubeconfig_path(root)}",
                    f"--dev-root={host.dev_root}",
                    f"--proc-root={host.proc_root}",
                    f"--driver-root={host.driver_root}",
                ],
                env=dict(e.split("=", 1) for e in args.env),
                node_name=NODE,
                topology=TOPOLOGY,
            )
            try:
                plugin.wait_ready(120)
                print(f"plugin pid {plugin.pid}, RSS {plugin.rss_kib() / 1024:.1f} MiB at start")
                print(
                    f"{args.clients} clients x prepare+unprepare for {args.duration:.0f}s, "
                    f"new claim every {args.new_claim_every} rounds; nproc {os.cpu_count()}, "
                    f"load average {os.getloadavg()[0]:.2f}"
                )
                loop = asyncio.get_running_loop()
                stop_at = loop.time() + args.duration
                stats = Stats()
                rss: list[tuple[float, float]] = []
                started = time.perf_counter()
                sampler = asyncio.create_task(sample_rss(plugin, args.sample, stop_at, rss))
                await asyncio.gather(
                    *(
                        client_loop(
                            plugin.dra_socket,
                            api,
                            migs[i],
                            stop_at,
                            args.new_claim_every,
                            stats,
                            args.cached_only,
                            args.think,
                        )
                        for i in range(args.clients)
                    )
                )
                elapsed = time.perf_counter() - started
                await sampler
                report(args, stats, rss, elapsed)
                alive = plugin.alive
            finally:
                plugin.stop()
        return 0 if alive and not stats.errors else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(
    args: argparse.Namespace, stats: Stats, rss: list[tuple[float, float]], elapsed: float
) -> None:
    n = len(stats.prepare)
    print(
        f"prepare   p50 {pct(stats.prepare, 0.5):7.2f} ms  p99 {pct(stats.prepare, 0.99):7.2f} ms"
        f"  max {max(stats.prepare, default=0) * 1e3:7.1f} ms"
    )
    print(
        f"unprepare p50 {pct(stats.unprepare, 0.5):7.2f} ms  p99 "
        f"{pct(stats.unprepare, 0.99):7.2f} ms  max {max(stats.unprepare, default=0) * 1e3:7.1f} ms"
    )
    print(
        f"{n} prepares + {n} unprepares in {elapsed:.1f}s: {n / elapsed:.1f} claims/s "
        f"({2 * n / elapsed:.1f} calls/s); errors {len(stats.errors)}"
        + (f", e.g. {stats.errors[0]}" if stats.errors else "")
    )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    after = [s for s in rss if s[0] >= args.warmup]
    line = " ".join(f"{mib:.1f}" for _, mib in rss[:: max(1, len(rss) // 20)])
    print(f"RSS MiB (every ~{args.sample * max(1, len(rss) // 20):.0f}s): {line}")
    if len(after) >= 2:
        print(
            f"RSS after {args.warmup:.0f}s warm-up: {after[0][1]:.1f} -> {after[-1][1]:.1f} MiB "
            f"over {(after[-1][0] - after[0][0]) / 60:.1f} min, slope "
            f"{slope_mib_per_min(after):+.3f} MiB/min (target < 0.1)"
        )
    else:
        print("RSS slope: run longer than --warmup to get one")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (soak: 600 or more)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the slope")
    p.add_argument("--sample", type=float, default=5.0, help="RSS sampling interval, seconds")
    p.add_argument("--new-claim-every", type=int, default=10)
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="prepare the same prepared claim again and again (checkpoint hits only)",
    )
    p.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds each client pauses between rounds (a lighter soak on a shared machine)",
    )
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the plugin")
    args: Any = p.parse_args(argv)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
