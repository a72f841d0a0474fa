"""Unrelated answers while one claim is stuck, and while the API server hangs.

Usage:
  PYTHONPATH=. .venv/bin/python tests/bench/bench_isolation.py stuck [--retries 40] [--calls 200]
  PYTHONPATH=. .venv/bin/python tests/bench/bench_isolation.py hung [--outstanding 100]

stuck: the real ClaimPreparer behind the DRA gRPC servicer on a unix socket,
  in this process. One claim's API read never returns; the kubelet retries it
  --retries times (each call outstanding); meanwhile --calls unrelated
  prepare + unprepare pairs run one after another. Prints their p50/p99/max.
hung: the real `dra-driver run` process against the API server double. After
  two claims are prepared, the double stops answering (every request sleeps
  longer than any deadline) and --outstanding prepares of new claims are sent;
  then a cached re-prepare and an unprepare are timed, and one uncached prepare
  with a 10 s deadline shows what the kubelet gets back.
The design target is 100 ms for an unrelated answer (DESIGN.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from dra_driver.health.board import HealthBoard
from dra_driver.inventory import DeviceType
from dra_driver.kubelet.dra import ClaimCalls, DRAPluginV1
from dra_driver.kubelet.server import SocketServer
from dra_driver.kubelet.stubs import add_dra_v1
from dra_driver.prepare.options import PreparerConfig
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.sources import MemoryClaimSource
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.kubelet import DraClient
from dra_driver.testing.plugin import PluginProcess
from dra_driver.testing.simhost import claim_object, claim_uid, make_inventory, populate_host

NODE = "bench-node"
TARGET_MS = 100.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3 if values else 0.0


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name}: n={len(values)} p50 {pct(values, 0.5):.2f} ms, p99 {pct(values, 0.99):.2f} ms, "
        f"max {max(values, default=0) * 1e3:.2f} ms (target < {TARGET_MS:.0f} ms)"
    )


class StuckSource:
    """Claims from memory; the read of claim "stuck" blocks until released."""

    def __init__(self, inner: MemoryClaimSource) -> None:
        self.inner = inner
        self.release = threading.Event()

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        if name == "stuck":
            self.release.wait(600)
        return self.inner.get_claim(namespace, name)


async def stuck(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-iso-", dir="/tmp"))
    inv = make_inventory(gpus=8)
    host = populate_host(tmp / "host", inv)
    config = PreparerConfig(
        driver_name="gpu.nvidia.com",
        pool_name=NODE,
        state_dir=tmp / "state",
        cdi_root=tmp / "cdi",
        dev_root=host.dev_root,
        proc_root=host.proc_root,
        driver_root=host.driver_root,
    )
    memory = MemoryClaimSource()
    source = StuckSource(memory)
    prep = ClaimPreparer(
        config, lambda: inv, source, HealthBoard(d.name for d in inv.devices), None
    )
    await prep.start()
    calls = ClaimCalls(prep)
    srv = SocketServer("dra", tmp / "dra.sock", lambda s: add_dra_v1(DRAPluginV1(calls), s))
    await srv.start()
    stuck_uid = claim_uid(0)
    memory.put(claim_object(stuck_uid, "stuck", [{"request": "gpu", "device": "gpu-0"}], pool=NODE))
    stuck_ref = ClaimRef("default", stuck_uid, "stuck")
    try:
        async with DraClient(srv.path) as kubelet:
            retries = [
                asyncio.ensure_future(kubelet.prepare([stuck_ref], timeout=45))
                for _ in range(args.retries)
            ]
            await asyncio.sleep(0.5)
            prepare_s: list[float] = []
            unprepare_s: list[float] = []
            for n in range(1, args.calls + 1):
                uid = claim_uid(n)
                name = f"c-{n}"
                device = f"gpu-{1 + n % 7}"
                memory.put(
                    claim_object(uid, name, [{"request": "gpu", "device": device}], pool=NODE)
                )
                ref = ClaimRef("default", uid, name)
                t0 = time.perf_counter()
                resp = await kubelet.prepare([ref], timeout=45)
                t1 = time.perf_counter()
                assert resp.claims[uid].error == "", resp.claims[uid].error
                await kubelet.unprepare([ref], timeout=45)
                t2 = time.perf_counter()
                prepare_s.append(t1 - t0)
                unprepare_s.append(t2 - t1)
            print(f"one claim stuck in its API read, {args.retries} kubelet retries of it open")
            print(summary("unrelated prepare", prepare_s))
            print(summary("unrelated unprepare", unprepare_s))
            source.release.set()
            await asyncio.gather(*retries, return_exceptions=True)
    finally:
        source.release.set()
        await srv.stop(0)
        await prep.close()
        shutil.rmtree(tmp, ignore_errors=True)


def new_claim(api: ApiServerDouble, device: str) -> ClaimRef:
    name = f"hung-{secrets.token_hex(4)}"
    obj = claim_object("", name, [{"request": "gpu", "device": device}], pool=NODE)
    del obj["metadata"]["uid"]
    created = api.create("resourceclaims", obj)
    return ClaimRef("default", created["metadata"]["uid"], name)


async def hung(args: argparse.Namespace) -> None:
    from dra_driver.commands.inventory import load_inventory
    from dra_driver.settings import Settings
    from dra_driver.testing.fakenvml import library_path

    root = Path(tempfile.mkdtemp(prefix="bench-hung-", dir="/tmp"))
    os.environ["FAKE_NVML_TOPOLOGY"] = "dgx-h100-mig7"
    os.environ["FAKE_NVML_STATE_DIR"] = str(root / "fakenvml-inv")
    inv = load_inventory(Settings(nvml_library=library_path()))
    migs = [d.name for d in inv.devices if d.type is DeviceType.MIG]
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
            node_name=NODE,
            topology="dgx-h100-mig7",
        )
        try:
            plugin.wait_ready(30)
            async with DraClient(plugin.dra_socket) as kubelet:
                cached, other = new_claim(api, migs[0]), new_claim(api, migs[1])
                for ref in (cached, other):
                    resp = await kubelet.prepare([ref])
                    assert resp.claims[ref.uid].error == "", resp.claims[ref.uid].error
                waiting = [
                    new_claim(api, migs[2 + i % (len(migs) - 3)]) for i in range(args.outstanding)
                ]
                probe = new_claim(api, migs[-1])
                api.faults.set_latency(120)  # hung: every request outlives every deadline
                outstanding = [
                    asyncio.ensure_future(kubelet.prepare([r], timeout=45)) for r in waiting
                ]
                await asyncio.sleep(2)
                print(
                    f"API server hung, {args.outstanding} prepares waiting on it; "
                    f"nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
                )
                again: list[float] = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    resp = await kubelet.prepare([cached], timeout=45)
                    again.append(time.perf_counter() - t0)
                    assert resp.claims[cached.uid].error == "", resp.claims[cached.uid].error
                print(summary("cached re-prepare", again))
                t0 = time.perf_counter()
                resp = await kubelet.unprepare([other], timeout=45)
                print(
                    f"unprepare: {(time.perf_counter() - t0) * 1e3:.2f} ms, "
                    f"error {resp.claims[other.uid].error!r}"
                )
                t0 = time.perf_counter()
                try:
                    resp = await kubelet.prepare([probe], timeout=10)
                    what = f"per-claim error {resp.claims[probe.uid].error!r}"
                except grpc.aio.AioRpcError as e:
                    what = f"the whole call failed: {e.code()}"
                print(
                    f"uncached prepare with a 10 s deadline: answered after "
                    f"{time.perf_counter() - t0:.2f} s with {what}"
                )
                api.faults.set_latency(0)
                results = await asyncio.gather(*outstanding, return_exceptions=True)
                failed = sum(isinstance(r, Exception) for r in results)
                print(f"outstanding prepares: {failed} of {len(results)} ended as gRPC errors")
        finally:
            api.faults.set_latency(0)
            plugin.stop()
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("stuck")
    s.add_argument("--retries", type=int, default=40)
    s.add_argument("--calls", type=int, default=200)
    h = sub.add_parser("hung")
    h.add_argument("--outstanding", type=int, default=100)
    args = p.parse_args(argv)
    asyncio.run(stuck(args) if args.mode == "stuck" else hung(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
