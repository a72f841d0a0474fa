"""Metrics: every series against a fresh registry, the error kinds behind them, the endpoint."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dra_driver import settings as settings_mod
from dra_driver.health.board import DeviceHealth, Health, HealthBoard
from dra_driver.health.monitor import MonitorStats, event_type_name
from dra_driver.hostport import parse_host_port
from dra_driver.inventory import Inventory
from dra_driver.kubelet.dra import ClaimCalls
from dra_driver.kubelet.proto import dra_v1_pb2 as v1
from dra_driver.metrics import REQUEST_BUCKETS, Metrics, MetricsServer
from dra_driver.nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_RECOVERY_ACTION,
    EVENT_GPU_UNAVAILABLE,
    EVENT_SINGLE_BIT_ECC,
    EVENT_XID_CRITICAL,
)
from dra_driver.prepare.options import PreparerConfig
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.types import ClaimRef, ErrorKind, PrepareResult, UnprepareResult
from dra_driver.settings import Settings
from dra_driver.testing import (
    MemoryClaimSource,
    claim_object,
    claim_uid,
    make_inventory,
    populate_host,
)

DRIVER = "gpu.nvidia.com"
NODE = "node-1"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def inv() -> Inventory:
    return make_inventory(2, mig_gpus=(1,))  # gpu-0 whole, gpu-1 split into MIG devices


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(DRIVER, NODE, CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one family, keyed by its sorted labels."""
    out = {}
    for family in m.registry.collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# -- requests (through the kubelet servicers' ClaimCalls) ---------------------------------


class ScriptedPreparer:
    """Answers by claim name: "ok", "config" (kind CONFIG), "bare" (an error without a kind)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def prepare(self, claims: Any) -> dict[str, PrepareResult]:
        await self.gate.wait()
        out = {}
        for c in claims:
            if c.name == "config":
                out[c.uid] = PrepareResult(error="bad config", error_kind=ErrorKind.CONFIG)
            elif c.name == "bare":
                out[c.uid] = PrepareResult(error="something")
            else:
                out[c.uid] = PrepareResult()
        return out

    async def unprepare(self, claims: Any) -> dict[str, UnprepareResult]:
        await self.gate.wait()
        return {c.uid: UnprepareResult() for c in claims}


def claim(name: str, uid: str | None = None) -> v1.Claim:
    return v1.Claim(namespace="default", name=name, uid=uid if uid is not None else f"uid-{name}")


async def test_requests_count_every_claim_by_outcome(metrics: Metrics) -> None:
    calls = ClaimCalls(ScriptedPreparer(), observer=metrics)
    await calls.prepare([claim("ok"), claim("config"), claim("bare"), claim("empty-uid", uid="")])
    await calls.unprepare([claim("ok")])

    def errors(op: str, kind: str) -> float | None:
        return value(metrics, f"nvidia_dra_node_{op}_errors_total", driver=DRIVER, error_type=kind)

    assert value(metrics, "nvidia_dra_requests_total", driver=DRIVER, operation="prepare") == 4
    assert value(metrics, "nvidia_dra_requests_total", driver=DRIVER, operation="unprepare") == 1
    assert errors("prepare", "config") == 1
    assert errors("prepare", "internal") == 1  # an error without a kind
    assert errors("prepare", "invalid_claim") == 1  # refused before the preparer saw it
    assert errors("prepare", "claim_not_found") == 0
    assert errors("unprepare", "internal") == 0
    count = value(
        metrics, "nvidia_dra_request_duration_seconds_count", driver=DRIVER, operation="prepare"
    )
    assert count == 4
    for op in ("prepare", "unprepare"):
        assert value(metrics, "nvidia_dra_requests_inflight", driver=DRIVER, operation=op) == 0


async def test_inflight_counts_claims_until_the_preparer_answers(metrics: Metrics) -> None:
    preparer = ScriptedPreparer()
    preparer.gate.clear()
    calls = ClaimCalls(preparer, observer=metrics)
    call = asyncio.create_task(calls.prepare([claim("a"), claim("b")]))
    await asyncio.sleep(0.05)

    def inflight() -> float | None:
        return value(metrics, "nvidia_dra_requests_inflight", driver=DRIVER, operation="prepare")

    assert inflight() == 2
    # The kubelet giving up does not lose the claims: they finish and are counted.
    call.cancel()
    await asyncio.sleep(0.01)
    assert inflight() == 2
    preparer.gate.set()
    assert await calls.drain(5)
    assert inflight() == 0
    assert value(metrics, "nvidia_dra_requests_total", driver=DRIVER, operation="prepare") == 2


def test_duration_buckets_keep_nvidias_and_add_finer_ones(metrics: Metrics) -> None:
    nvidia = [0.05 * 2**i for i in range(9)]  # ExponentialBuckets(0.05, 2, 9)
    assert all(b in REQUEST_BUCKETS for b in nvidia)
    assert min(REQUEST_BUCKETS) < 0.005 and list(REQUEST_BUCKETS) == sorted(REQUEST_BUCKETS)
    metrics.claims_started("prepare", 1)
    metrics.claims_finished("prepare", 0.003, [None])
    labels = {"driver": DRIVER, "operation": "prepare"}
    bucket = "nvidia_dra_request_duration_seconds_bucket"
    assert metrics.registry.get_sample_value(bucket, {**labels, "le": "0.0025"}) == 0
    assert metrics.registry.get_sample_value(bucket, {**labels, "le": "0.005"}) == 1
    assert metrics.registry.get_sample_value(bucket, {**labels, "le": "12.8"}) == 1


def test_no_created_series(metrics: Metrics) -> None:
    """Go's client has none; dashboards built for NVIDIA's driver do not expect them."""
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert "nvidia_dra_requests_total" in names
    assert not [n for n in names if n.endswith("_created")]


# -- error kinds from the real preparer --------------------------------------------------


@dataclass
class Host:
    settings: PreparerConfig
    inv: Inventory
    board: HealthBoard
    source: MemoryClaimSource = field(default_factory=MemoryClaimSource)

    def put(self, n: int, *results: dict[str, Any], **kw: Any) -> ClaimRef:
        uid = claim_uid(n)
        self.source.put(claim_object(uid, f"claim-{n}", results, pool=NODE, **kw))
        return ClaimRef("default", uid, f"claim-{n}")


@pytest.fixture
async def prepared(tmp_path: Path, inv: Inventory) -> AsyncIterator[tuple[Host, ClaimPreparer]]:
    simhost = populate_host(tmp_path / "host", inv)
    settings = PreparerConfig(
        driver_name=DRIVER,
        pool_name=NODE,
        state_dir=tmp_path / "plugins" / DRIVER,
        cdi_root=tmp_path / "cdi",
        dev_root=simhost.dev_root,
        proc_root=simhost.proc_root,
        driver_root=simhost.driver_root,
    )
    host = Host(settings, inv, HealthBoard(d.name for d in inv.devices))
    preparer = ClaimPreparer(settings, lambda: inv, host.source, host.board, None)
    await preparer.start()
    yield host, preparer
    await preparer.close()


async def test_the_preparer_says_why_a_claim_failed(
    prepared: tuple[Host, ClaimPreparer], inv: Inventory
) -> None:
    host, preparer = prepared
    mig = next(d.name for d in inv.devices if d.type.value == "mig")
    good = host.put(1, {"request": "gpu", "device": "gpu-0"})
    host.board.update([DeviceHealth(mig, Health.UNHEALTHY, "XID 79", "xid-79")])
    cases = {
        ClaimRef("default", claim_uid(2), "gone"): ErrorKind.CLAIM_NOT_FOUND,
        ClaimRef("default", "../x", "x"): ErrorKind.INVALID_CLAIM,
        host.put(3, {"request": "gpu", "device": "gpu-0"}, allocated=False): (
            ErrorKind.NOT_ALLOCATED
        ),
        host.put(4, {"request": "gpu", "device": "gpu-9"}): ErrorKind.DEVICE_UNAVAILABLE,
        host.put(5, {"request": "gpu", "device": mig}): ErrorKind.DEVICE_UNHEALTHY,
        host.put(
            6,
            {"request": "gpu", "device": "gpu-0"},
            configs=({"parameters": {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "X"}},),
        ): ErrorKind.CONFIG,
        # gpu-0 is already prepared for `good` (prepared first, below).
        host.put(7, {"request": "gpu", "device": "gpu-0"}): ErrorKind.DEVICE_UNAVAILABLE,
    }
    assert (await preparer.prepare([good]))[good.uid].error == ""
    results = await preparer.prepare(list(cases))
    for ref, kind in cases.items():
        assert results[ref.uid].error, ref
        assert results[ref.uid].error_kind is kind, (ref, results[ref.uid].error)
    assert (await preparer.unprepare([good]))[good.uid] == UnprepareResult()


async def test_prepared_devices_come_from_the_checkpoint(
    prepared: tuple[Host, ClaimPreparer], inv: Inventory, metrics: Metrics
) -> None:
    host, preparer = prepared
    migs = [d.name for d in inv.devices if d.type.value == "mig"][:2]
    metrics.watch(preparer=preparer)

    def gauge(kind: str) -> float | None:
        return value(
            metrics, "nvidia_dra_prepared_devices", node=NODE, driver=DRIVER, device_type=kind
        )

    assert (gauge("gpu"), gauge("mig")) == (0, 0)
    whole = host.put(1, {"request": "gpu", "device": "gpu-0"})
    split = host.put(2, {"request": "a", "device": migs[0]}, {"request": "b", "device": migs[1]})
    await preparer.prepare([whole, split])
    assert (gauge("gpu"), gauge("mig")) == (1, 2)
    await preparer.unprepare([split])
    assert (gauge("gpu"), gauge("mig")) == (1, 0)


# -- health ------------------------------------------------------------------------------


def test_device_health_is_one_series_per_state(metrics: Metrics, inv: Inventory) -> None:
    board = HealthBoard(d.name for d in inv.devices)
    metrics.watch(inventory=inv, board=board)

    def state(device: str) -> dict[str, float | None]:
        return {
            s: value(
                metrics, "dra_gpu_device_health", driver=DRIVER, pool=NODE, device=device, state=s
            )
            for s in ("unknown", "healthy", "degraded", "unhealthy")
        }

    assert state("gpu-0") == {"unknown": 0, "healthy": 1, "degraded": 0, "unhealthy": 0}
    assert samples(metrics, "dra_gpu_device_health_reason") == {}
    board.update(
        [
            DeviceHealth("gpu-0", Health.UNHEALTHY, "XID 79 (fell off the bus)", "xid-79"),
            DeviceHealth(inv.devices[-1].name, Health.DEGRADED, "HW slowdown", "hw-slowdown"),
        ]
    )
    assert state("gpu-0") == {"unknown": 0, "healthy": 0, "degraded": 0, "unhealthy": 1}
    assert state(inv.devices[-1].name)["degraded"] == 1
    base = (("driver", DRIVER), ("pool", NODE))
    assert samples(metrics, "dra_gpu_device_health_reason") == {
        (("device", "gpu-0"), *base, ("reason", "xid-79")): 1,
        (("device", inv.devices[-1].name), *base, ("reason", "hw-slowdown")): 1,
    }
    # Recovered: the reason series goes away rather than staying at 0 forever.
    board.update([DeviceHealth("gpu-0", Health.HEALTHY)])
    assert state("gpu-0")["healthy"] == 1
    assert len(samples(metrics, "dra_gpu_device_health_reason")) == 1


@dataclass
class FakeMonitor:
    stats: MonitorStats

    def counters(self) -> MonitorStats:
        return self.stats


def test_nvml_events_and_xids_per_gpu(metrics: Metrics, inv: Inventory) -> None:
    stats = MonitorStats(
        polls=7, poll_errors=2, wait_errors=1, unmonitored_gpus=1, deadline_misses=3, late_answers=2
    )
    stats.events_by_gpu.update({("gpu-1", "xid"): 3, ("gpu-1", "lost"): 1, ("unknown", "sbe"): 1})
    stats.xids_by_gpu.update({("gpu-1", 79): 2, ("gpu-1", 48): 1, ("gpu-0", 10**6): 4})
    metrics.watch(inventory=inv, monitor=FakeMonitor(stats))

    def events(gpu: str, kind: str) -> float | None:
        return value(metrics, "dra_gpu_nvml_events_total", gpu=gpu, type=kind)

    assert events("gpu-1", "xid") == 3 and events("gpu-1", "lost") == 1
    assert events("unknown", "sbe") == 1
    # Watched types exist at 0 for every GPU, so the first event is a visible increase.
    assert events("gpu-0", "xid") == 0 and events("gpu-0", "recovery_action") == 0
    assert samples(metrics, "dra_gpu_xid_errors_total") == {
        (("gpu", "gpu-1"), ("xid", "48")): 1,
        (("gpu", "gpu-1"), ("xid", "79")): 2,
        (("gpu", "gpu-0"), ("xid", "other")): 4,  # bounded: no series per bogus number
    }
    assert value(metrics, "dra_gpu_health_polls_total") == 7
    assert value(metrics, "dra_gpu_health_poll_errors_total") == 2
    assert value(metrics, "dra_gpu_nvml_event_wait_errors_total") == 1
    assert value(metrics, "dra_gpu_health_unmonitored_gpus") == 1
    assert value(metrics, "dra_gpu_nvml_deadline_misses_total") == 3
    assert value(metrics, "dra_gpu_nvml_late_answers_total") == 2


def test_event_type_names_follow_the_policys_precedence() -> None:
    assert event_type_name(EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC) == "xid"
    assert event_type_name(EVENT_DOUBLE_BIT_ECC) == "dbe"
    assert event_type_name(EVENT_GPU_UNAVAILABLE) == "lost"
    assert event_type_name(EVENT_GPU_RECOVERY_ACTION) == "recovery_action"
    assert event_type_name(EVENT_SINGLE_BIT_ECC) == "sbe"
    assert event_type_name(0x10) == "other"


# -- publisher, process, failures --------------------------------------------------------


@dataclass
class FakePublisherStats:
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    conflicts: int = 0
    rejected: int = 0
    errors: int = 0


@dataclass
class FakePublisher:
    stats: FakePublisherStats
    converged: bool = False


def test_publisher_stats_are_read_at_scrape_time(metrics: Metrics) -> None:
    publisher = FakePublisher(FakePublisherStats(creates=1, updates=4, conflicts=2, errors=3))
    metrics.watch(publisher=publisher)
    assert value(metrics, "dra_resourceslice_writes_total", verb="update") == 4
    assert value(metrics, "dra_resourceslice_converged") == 0
    publisher.stats.deletes, publisher.stats.rejected, publisher.converged = 1, 1, True
    assert samples(metrics, "dra_resourceslice_writes_total") == {
        (("verb", "create"),): 1,
        (("verb", "update"),): 4,
        (("verb", "delete"),): 1,
    }
    assert value(metrics, "dra_resourceslice_api_errors_total") == 3
    assert value(metrics, "dra_resourceslice_conflicts_total") == 2
    assert value(metrics, "dra_resourceslice_rejected_total") == 1
    assert value(metrics, "dra_resourceslice_converged") == 1


def test_driver_info_and_devices(metrics: Metrics, inv: Inventory) -> None:
    assert value(metrics, "dra_driver_devices", type="gpu") is None  # nothing before NVML
    metrics.watch(inventory=inv)
    (labels,) = samples(metrics, "dra_driver_info")
    info = dict(labels)
    assert info["driver_version"] == inv.driver_version
    assert info["cuda_driver_version"] == inv.cuda_driver_version
    assert info["nvml_backend"] == inv.backend and info["version"]
    mig = sum(1 for d in inv.devices if d.type.value == "mig")
    assert value(metrics, "dra_driver_devices", type="gpu") == 1
    assert value(metrics, "dra_driver_devices", type="mig") == mig


class BrokenPreparer:
    def prepared_devices(self) -> Mapping[str, int]:
        raise RuntimeError("checkpoint unreadable")


def test_a_failing_source_is_left_out_and_logged_once(
    metrics: Metrics, inv: Inventory, caplog: pytest.LogCaptureFixture
) -> None:
    metrics.watch(inventory=inv, preparer=BrokenPreparer())
    for _ in range(2):
        assert value(metrics, "dra_driver_devices", type="gpu") == 1
        assert value(metrics, "nvidia_dra_prepared_devices", node=NODE, driver=DRIVER) is None
    assert caplog.text.count("reading the checkpoint failed") == 1


# -- the endpoint and the flag -----------------------------------------------------------


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    s = MetricsServer(metrics.registry, "127.0.0.1:0")
    s.start()
    yield s
    s.stop()


def test_endpoint_serves_metrics_only_at_its_path(server: MetricsServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/metrics")
    with urllib.request.urlopen(server.url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert b'nvidia_dra_requests_total{driver="gpu.nvidia.com",operation="prepare"} 0.0' in (
            resp.read()
        )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url.removesuffix("metrics") + "other", timeout=5)
    assert e.value.code == 404


def test_a_port_in_use_is_refused(server: MetricsServer, metrics: Metrics) -> None:
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    with pytest.raises(OSError, match="in use"):
        MetricsServer(CollectorRegistry(), f"127.0.0.1:{port}")


def test_stop_closes_the_port(metrics: Metrics) -> None:
    s = MetricsServer(metrics.registry, "127.0.0.1:0")
    s.start()
    port = int(s.url.rsplit(":", 1)[1].split("/")[0])
    s.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":8080", ("", 8080)),
        ("[::1]:9400", ("::1", 9400)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["8080", "host:", "host:http", "::1:80", "[]:80", "h:70000"])
def test_bad_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def parse(args: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    return settings_mod.from_args(parser.parse_args(args))


def test_flag_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICS_ADDRESS", raising=False)
    assert parse([]).metrics_address == ""
    assert parse(["--metrics-address=:8080"]).metrics_address == ":8080"
    monkeypatch.setenv("METRICS_ADDRESS", "127.0.0.1:9400")
    assert parse([]).metrics_address == "127.0.0.1:9400"
    assert parse(["--metrics-address="]).metrics_address == ""  # the flag turns it off again
    monkeypatch.setenv("METRICS_ADDRESS", "nonsense")
    with pytest.raises(SystemExit):
        parse([])
    assert "METRICS_ADDRESS" not in settings_mod.hermetic_environ({"METRICS_ADDRESS": "x"})


def test_prometheus_client_is_not_imported_without_the_flag() -> None:
    """Its import costs startup time; only a process serving metrics pays it."""
    code = (
        "import sys, dra_driver.app, dra_driver.commands.run, dra_driver.kubelet.plugin, "
        "dra_driver.prepare.preparer, dra_driver.health.monitor; "
        "sys.exit('prometheus_client' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
