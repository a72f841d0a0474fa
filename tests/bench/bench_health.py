"""Injected fault -> DeviceHealth message latency, health against a hung NVML, poll cost.

Latency: the real `dra-driver run` on the fake NVML (topology small) with a
kubelet-side NodeWatchResources stream (v1, as a 1.37 kubelet opens it); N
XIDs are injected through the fault log, alternating between a MIG device of
GPU 0 (MIG-scoped XID) and the whole GPU 1, each followed by `recover` and the
(short) hold so the device is Healthy again before the next one. Measured:
from just before the fault record is appended to the stream message that
reports the device Unhealthy (fault log -> inotify -> nvmlEventSetWait ->
policy -> board -> gRPC). Target: p99 under 5 ms.

Hung NVML (a second plugin, --health-nvml-deadline 1, poll 0.2 s): a hang
fault blocks nvmlDeviceGetTemperature on GPU 0, as a GPU off the bus blocks
NVML. Measured: injection -> GPU 0's devices Unknown on the stream (target:
within the deadline + 1 s of the hung call, which starts at the next poll,
i.e. under poll + deadline + 1 s from the injection); then, with GPU 0 still
hung, N XIDs on GPU 1 -> Unhealthy on the stream (target p99 under 50 ms);
then SIGTERM with every GPU 0 call hung -> process exit (target: within the
shutdown grace, 3 s here).

Poll cost: in this process, one health_sample() of every GPU of a topology
(default dgx-h100: 8 GPUs x 7 MIG devices) through each backend, the policy
step alone, and a whole HealthMonitor.poll_once() (worker thread included).

    PYTHONPATH=. .venv/bin/python tests/bench/bench_health.py [--events 50] [--polls 200]
        [--hung-events 20] [--backend auto|cffi|nvidia-ml-py]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from dra_driver.health.board import HealthBoard  # noqa: E402
from dra_driver.health.monitor import HealthMonitor, MonitorConfig  # noqa: E402
from dra_driver.inventory import build_inventory, mig_device_name  # noqa: E402
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as health_pb  # noqa: E402
from dra_driver.nvml import open_backend  # noqa: E402
from dra_driver.nvml._common import profile_name  # noqa: E402
from dra_driver.testing import (  # noqa: E402
    DraClient,
    FakeNode,
    FaultInjector,
    PluginProcess,
    library_path,
    load_topology,
)

TARGET_P99_MS = 5.0
TARGET_HUNG_XID_MS = 50.0
HOLD_S = 0.1
POLL_S = 0.05
HUNG_DEADLINE_S = 1.0
HUNG_POLL_S = 0.2
GRACE_S = 3.0


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_plugin(root: Path, backend: str, extra: tuple[str, ...] = ()) -> PluginProcess:
    plugin = PluginProcess.start(
        root,
        [
            f"--health-hold={HOLD_S}",
            f"--health-poll-interval={POLL_S}",
            "--log-level=WARNING",
            *extra,
        ],
        node_name="bench-health",
        topology="small",
        nvml_backend=backend,
    )
    plugin.wait_ready(timeout=30)
    return plugin


async def next_list(
    stream: AsyncIterator[health_pb.NodeWatchResourcesResponse], timeout: float
) -> dict[str, int]:
    message = await asyncio.wait_for(anext(stream), timeout)
    return {d.device.device_name: d.health for d in message.devices}


async def until(
    stream: AsyncIterator[health_pb.NodeWatchResourcesResponse],
    device: str,
    health: int,
    timeout: float = 10.0,
) -> None:
    deadline = time.monotonic() + timeout
    while (await next_list(stream, deadline - time.monotonic())).get(device) != health:
        pass


def mig_names(gpu: int) -> list[str]:
    topology = load_topology("small")
    g = topology.gpu(gpu)
    profiles = topology.raw["models"][g.model]["mig"]["profiles"]
    out = []
    for mig in g.mig_devices:
        profile = next(p for p in profiles if p["id"] == mig.profile_id)
        out.append(
            mig_device_name(
                g.minor, profile_name(profile["name"]), mig.profile_id, mig.placement_start
            )
        )
    return out


async def hung_run(plugin: PluginProcess, events: int) -> tuple[float, list[float], float]:
    """(injection -> GPU 0 Unknown s, XID on GPU 1 -> stream ms while hung, SIGTERM -> exit s)."""
    topology = load_topology("small")
    assert plugin.fault_log is not None
    faults = FaultInjector(topology, plugin.fault_log)
    gpu0 = mig_names(0)
    async with DraClient(plugin.dra_socket) as dra:
        stream = dra.watch_health("v1")
        first = await next_list(stream, 10)
        assert all(first[d] == health_pb.HEALTHY for d in first), first
        t0 = time.perf_counter()
        faults.hang(gpu=0, fn="nvmlDeviceGetTemperature")
        while True:
            now = await next_list(stream, 10)
            if all(now[d] == health_pb.UNKNOWN for d in gpu0):
                break
        unknown_s = time.perf_counter() - t0
        assert now["gpu-1"] == health_pb.HEALTHY, now
        latencies = []
        for _ in range(events):
            t0 = time.perf_counter()
            faults.xid(1, 79)
            await until(stream, "gpu-1", health_pb.UNHEALTHY)
            latencies.append((time.perf_counter() - t0) * 1000)
            faults.recover(1)
            await until(stream, "gpu-1", health_pb.HEALTHY)
        await stream.aclose()
    faults.hang(gpu=0)  # now every GPU 0 call, samples included, stays inside NVML
    time.sleep(HUNG_POLL_S + HUNG_DEADLINE_S + 0.5)
    t0 = time.perf_counter()
    plugin.stop(signal.SIGTERM, timeout=GRACE_S + 10)
    exit_s = time.perf_counter() - t0
    faults.release()
    return unknown_s, latencies, exit_s


async def latency_run(plugin: PluginProcess, events: int) -> list[float]:
    topology = load_topology("small")
    assert plugin.fault_log is not None
    faults = FaultInjector(topology, plugin.fault_log)
    gpu0 = topology.gpu(0)
    mig = gpu0.mig_devices[0]
    profiles = topology.raw["models"][gpu0.model]["mig"]["profiles"]
    profile = next(p for p in profiles if p["id"] == mig.profile_id)
    mig_name = mig_device_name(
        gpu0.minor, profile_name(profile["name"]), mig.profile_id, mig.placement_start
    )
    async with DraClient(plugin.dra_socket) as dra:
        stream = dra.watch_health("v1")
        first = await next_list(stream, 10)
        assert mig_name in first and "gpu-1" in first, sorted(first)
        latencies = []
        for i in range(events):
            if i % 2 == 0:
                device, gpu = mig_name, 0
                t0 = time.perf_counter()
                faults.xid(0, 48, gi=mig.gi_id, ci=mig.ci_id)
            else:
                device, gpu = "gpu-1", 1
                t0 = time.perf_counter()
                faults.xid(1, 79)
            await until(stream, device, health_pb.UNHEALTHY)
            latencies.append((time.perf_counter() - t0) * 1000)
            faults.recover(gpu)
            await until(stream, device, health_pb.HEALTHY)
        await stream.aclose()
    return latencies


def poll_costs(topology: str, polls: int) -> list[tuple[str, float, float, float]]:
    """(backend, health_sample us, policy step us, poll_once us), medians."""
    tmp = Path(tempfile.mkdtemp(prefix="dra-bench-poll-", dir="/tmp"))
    node = FakeNode(topology, fault_log=tmp / "faults.jsonl")
    node.reset_faults()
    node.apply_env()
    out = []
    try:
        for name in ("cffi", "nvidia-ml-py"):
            backend = open_backend(library_path(), name)
            try:
                inv = build_inventory(backend.inventory(), backend.name)
                board = HealthBoard(d.name for d in inv.devices)
                monitor = HealthMonitor(backend, inv, board, MonitorConfig(poll_interval=3600))
                sample_us, policy_us = [], []
                for _ in range(polls):
                    t0 = time.perf_counter()
                    samples = backend.health_sample()
                    t1 = time.perf_counter()
                    monitor.policy.on_samples(samples, time.monotonic())
                    t2 = time.perf_counter()
                    sample_us.append((t1 - t0) * 1e6)
                    policy_us.append((t2 - t1) * 1e6)

                async def whole(monitor: HealthMonitor) -> list[float]:
                    times = []
                    for _ in range(polls):
                        t0 = time.perf_counter()
                        await monitor.poll_once()
                        times.append((time.perf_counter() - t0) * 1e6)
                    return times

                poll_us = asyncio.run(whole(monitor))
                out.append(
                    (
                        name,
                        statistics.median(sample_us),
                        statistics.median(policy_us),
                        statistics.median(poll_us),
                    )
                )
            finally:
                monitor.workers.shutdown()
                backend.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--backend", default="auto", choices=["auto", "cffi", "nvidia-ml-py"])
    parser.add_argument("--poll-topology", default="dgx-h100")
    parser.add_argument("--hung-events", type=int, default=20)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="dra-bench-", dir="/tmp"))
    plugin = start_plugin(root, args.backend)
    try:
        latencies = asyncio.run(latency_run(plugin, args.events))
    finally:
        plugin.stop()
        shutil.rmtree(root, ignore_errors=True)

    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(
        f"injected XID -> DeviceHealth on the stream, topology small, backend={args.backend}, "
        f"n={len(latencies)} (MIG-scoped and whole-GPU alternating)"
    )
    print(
        f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms "
        f"(target p99 < {TARGET_P99_MS:.0f} ms: {'met' if p99 < TARGET_P99_MS else 'NOT met'})"
    )

    root = Path(tempfile.mkdtemp(prefix="dra-bench-hung-", dir="/tmp"))
    plugin = start_plugin(
        root,
        args.backend,
        (
            f"--health-nvml-deadline={HUNG_DEADLINE_S}",
            f"--health-poll-interval={HUNG_POLL_S}",
            f"--shutdown-grace={GRACE_S}",
        ),
    )
    try:
        unknown_s, hung_xids, exit_s = asyncio.run(hung_run(plugin, args.hung_events))
    finally:
        plugin.stop(signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
    bound = HUNG_POLL_S + HUNG_DEADLINE_S + 1.0
    print(
        f"hung NVML (nvmlDeviceGetTemperature on GPU 0 blocks; deadline {HUNG_DEADLINE_S:g} s, "
        f"poll {HUNG_POLL_S:g} s):"
    )
    print(
        f"  injection -> GPU 0 devices Unknown on the stream: {unknown_s:.2f} s "
        f"(target < poll + deadline + 1 s = {bound:.1f} s: {verdict(unknown_s < bound)})"
    )
    hp50, hp99 = percentile(hung_xids, 50), percentile(hung_xids, 99)
    print(
        f"  XID on GPU 1 -> stream while GPU 0 hangs, n={len(hung_xids)}: p50 {hp50:.1f} ms, "
        f"p99 {hp99:.1f} ms, max {max(hung_xids):.1f} ms "
        f"(target < {TARGET_HUNG_XID_MS:.0f} ms: {verdict(hp99 < TARGET_HUNG_XID_MS)})"
    )
    print(
        f"  SIGTERM -> exit with every GPU 0 call hung: {exit_s:.2f} s "
        f"(target within the {GRACE_S:g} s grace: {'met' if exit_s < GRACE_S else 'NOT met'})"
    )
    print(f"one health poll, topology {args.poll_topology}, median of {args.polls}:")
    for name, sample_us, policy_us, poll_us in poll_costs(args.poll_topology, args.polls):
        print(
            f"  {name:13s} health_sample {sample_us:8.1f} us   policy {policy_us:6.1f} us   "
            f"poll_once (worker thread, board) {poll_us:8.1f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
