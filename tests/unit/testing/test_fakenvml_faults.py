"""The fake NVML fault channel, health queries and events, read through pynvml.

Faults go in through the Python injector or the CLI in another process; what
comes out is checked only through NVML calls, as a driver would see it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dra_driver.testing import fakenvml

NO_ID = 0xFFFFFFFF
REPO = Path(__file__).resolve().parents[3]


class Node:
    """pynvml bound to the fake plus the fault injector of one private node."""

    def __init__(self, nvml: ModuleType, node: fakenvml.FakeNode) -> None:
        self.nvml = nvml
        self.node = node
        self.faults = node.faults

    def gpu(self, index: int) -> Any:
        return self.nvml.nvmlDeviceGetHandleByIndex(index)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the injector CLI in a separate process against this node."""
        env = {**os.environ, **self.node.env(), "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "dra_driver.testing.fakenvml", "inject", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )


def start(nvml: ModuleType, node: fakenvml.FakeNode, monkeypatch: pytest.MonkeyPatch) -> Node:
    for key, value in node.env().items():
        monkeypatch.setenv(key, value)
    nvml.nvmlInit()
    return Node(nvml, node)


@pytest.fixture
def pynvml_fake() -> Iterator[ModuleType]:
    nvml = fakenvml.load_into_pynvml()
    yield nvml
    while True:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError_Uninitialized:
            break


@pytest.fixture
def small(pynvml_fake: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    return start(pynvml_fake, fakenvml.FakeNode("small", tmp_path / "faults.jsonl"), monkeypatch)


@pytest.fixture
def mixed(pynvml_fake: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    return start(pynvml_fake, fakenvml.FakeNode("mixed", tmp_path / "faults.jsonl"), monkeypatch)


def event_set(n: Node, gpu: int, mask: int) -> Any:
    es = n.nvml.nvmlEventSetCreate()
    n.nvml.nvmlDeviceRegisterEvents(n.gpu(gpu), mask, es)
    return es


def xid_mask(nvml: ModuleType) -> int:
    return int(nvml.nvmlEventTypeXidCriticalError)


def test_gpu_wide_and_mig_scoped_xids(small: Node) -> None:
    nvml = small.nvml
    es = event_set(small, 0, xid_mask(nvml))
    with pytest.raises(nvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait(es, 0)
    small.faults.xid(0, 13)
    mig = small.node.spec.gpu(0).mig_devices[1]
    small.faults.xid(0, 94, gi=mig.gi_id)
    first = nvml.nvmlEventSetWait(es, 1000)
    assert (first.eventType, first.eventData) == (nvml.nvmlEventTypeXidCriticalError, 13)
    assert (first.gpuInstanceId, first.computeInstanceId) == (NO_ID, NO_ID)
    assert nvml.nvmlDeviceGetUUID(first.device) == small.node.spec.gpu(0).uuid
    second = nvml.nvmlEventSetWait(es, 1000)
    assert (second.eventData, second.gpuInstanceId, second.computeInstanceId) == (
        94,
        mig.gi_id,
        mig.ci_id,
    )
    # Delivered once; an XID on an unregistered GPU never shows up here.
    small.faults.xid(1, 31)
    with pytest.raises(nvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait(es, 20)
    nvml.nvmlEventSetFree(es)


def test_events_before_registration_are_not_delivered(small: Node) -> None:
    nvml = small.nvml
    small.faults.xid(0, 43)
    es = event_set(small, 0, xid_mask(nvml))
    with pytest.raises(nvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait(es, 10)
    other = event_set(small, 0, xid_mask(nvml))
    small.faults.xid(0, 48)
    assert nvml.nvmlEventSetWait(es, 1000).eventData == 48
    assert nvml.nvmlEventSetWait(other, 1000).eventData == 48


def test_registration_rules(mixed: Node) -> None:
    nvml = mixed.nvml
    es = nvml.nvmlEventSetCreate()
    gpu0, t4 = mixed.gpu(0), mixed.gpu(2)
    assert not nvml.nvmlDeviceGetSupportedEventTypes(t4) & nvml.nvmlEventTypeGpuUnavailableError
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceRegisterEvents(t4, nvml.nvmlEventTypeGpuUnavailableError, es)
    nvml.nvmlDeviceRegisterEvents(gpu0, nvml.nvmlEventTypeXidCriticalError, es)
    nvml.nvmlEventSetFree(es)
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlEventSetFree(es)


def test_mig_handle_cannot_register(small: Node) -> None:
    nvml = small.nvml
    es = nvml.nvmlEventSetCreate()
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(small.gpu(0), 0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceRegisterEvents(mig, nvml.nvmlEventTypeXidCriticalError, es)


def test_lost_gpu(small: Node) -> None:
    nvml = small.nvml
    mask = int(nvml.nvmlEventTypeXidCriticalError | nvml.nvmlEventTypeGpuUnavailableError)
    es = event_set(small, 0, mask)
    gpu0 = small.gpu(0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu0, 0)
    small.faults.lost(0)
    xid = nvml.nvmlEventSetWait(es, 1000)
    assert (xid.eventType, xid.eventData, xid.gpuInstanceId) == (
        nvml.nvmlEventTypeXidCriticalError,
        79,
        NO_ID,
    )
    assert nvml.nvmlEventSetWait(es, 1000).eventType == nvml.nvmlEventTypeGpuUnavailableError
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlEventSetWait(es, 1000)
    with pytest.raises(nvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait(es, 10)
    calls: tuple[Callable[[], object], ...] = (
        lambda: nvml.nvmlDeviceGetName(gpu0),
        lambda: nvml.nvmlDeviceGetUUID(mig),
        lambda: nvml.nvmlDeviceGetTemperature(gpu0, nvml.NVML_TEMPERATURE_GPU),
        lambda: nvml.nvmlDeviceGetHandleByIndex(0),
        lambda: nvml.nvmlDeviceGetGpuInstanceId(mig),
    )
    for call in calls:
        with pytest.raises(nvml.NVMLError_GpuIsLost):
            call()
    # The other GPU is unaffected, and the count still includes the lost one.
    assert nvml.nvmlDeviceGetName(small.gpu(1)).startswith("NVIDIA H100")
    assert nvml.nvmlDeviceGetCount() == 2
    small.faults.recover(0)
    assert nvml.nvmlDeviceGetUUID(mig).startswith("MIG-")


def test_ecc_counts_and_events(small: Node) -> None:
    nvml = small.nvml
    sbe, dbe = nvml.nvmlEventTypeSingleBitEccError, nvml.nvmlEventTypeDoubleBitEccError
    es = event_set(small, 1, int(sbe | dbe))
    gpu1 = small.gpu(1)
    small.faults.ecc(1, corrected=3, uncorrected=1)
    assert nvml.nvmlEventSetWait(es, 1000).eventType == sbe
    assert nvml.nvmlEventSetWait(es, 1000).eventType == dbe
    corrected, uncorrected = (
        nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    )
    volatile, aggregate = nvml.NVML_VOLATILE_ECC, nvml.NVML_AGGREGATE_ECC
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu1, corrected, volatile) == 3
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu1, uncorrected, volatile) == 1
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu1, uncorrected, aggregate) == 1
    small.faults.recover()
    # A reset clears volatile counters; aggregate ones live in the infoROM.
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu1, uncorrected, volatile) == 0
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu1, uncorrected, aggregate) == 1


def test_throttle_pcie_temperature_and_recover(small: Node) -> None:
    nvml = small.nvml
    gpu0 = small.gpu(0)
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(gpu0) == 0
    small.faults.throttle(0, fakenvml.parse_throttle_reasons("hw_thermal_slowdown,sw_power_cap"))
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(gpu0) == 0x44
    assert nvml.nvmlDeviceGetCurrentClocksThrottleReasons(gpu0) == 0x44
    small.faults.pcie(0, 4)
    assert nvml.nvmlDeviceGetCurrPcieLinkWidth(gpu0) == 4
    assert nvml.nvmlDeviceGetMaxPcieLinkWidth(gpu0) == 16
    small.faults.temperature(0, 91)
    assert nvml.nvmlDeviceGetTemperature(gpu0, nvml.NVML_TEMPERATURE_GPU) == 91
    small.faults.remap(0, pending=True, uncorrected_rows=2)
    assert nvml.nvmlDeviceGetRemappedRows(gpu0) == (0, 2, 1, 0)
    small.faults.remap(0, failure=True)
    assert nvml.nvmlDeviceGetRemappedRows(gpu0) == (0, 2, 1, 1)
    small.faults.recover(0)
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(gpu0) == 0
    assert nvml.nvmlDeviceGetCurrPcieLinkWidth(gpu0) == 16
    assert nvml.nvmlDeviceGetTemperature(gpu0, nvml.NVML_TEMPERATURE_GPU) == 35
    assert nvml.nvmlDeviceGetRemappedRows(gpu0) == (0, 0, 0, 0)
    # Health queries are board-level: a MIG handle answers NOT_SUPPORTED.
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu0, 0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetCurrPcieLinkWidth(mig)


def test_pre_ampere_retired_pages_and_no_row_remapping(mixed: Node) -> None:
    nvml = mixed.nvml
    v100 = mixed.gpu(0)
    assert nvml.nvmlDeviceGetRetiredPagesPendingStatus(v100) == nvml.NVML_FEATURE_DISABLED
    mixed.faults.retired_pages(0)
    assert nvml.nvmlDeviceGetRetiredPagesPendingStatus(v100) == nvml.NVML_FEATURE_ENABLED
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetRemappedRows(v100)
    assert nvml.nvmlDeviceGetCurrPcieLinkWidth(mixed.gpu(2)) == 8  # the T4 trained at x8
    mixed.faults.retired_pages(0, pending=False)
    assert nvml.nvmlDeviceGetRetiredPagesPendingStatus(v100) == nvml.NVML_FEATURE_DISABLED


def test_row_remapping_gpu_has_no_page_retirement(small: Node) -> None:
    with pytest.raises(small.nvml.NVMLError_NotSupported):
        small.nvml.nvmlDeviceGetRetiredPagesPendingStatus(small.gpu(0))


def test_log_written_before_init_applies_and_bad_lines_are_skipped(
    pynvml_fake: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    node = fakenvml.FakeNode("small", tmp_path / "faults.jsonl")
    node.faults.pcie(1, 8)
    with node.fault_log.open("a") as log:  # type: ignore[union-attr]
        log.write('{"kind": "melt", "gpu": "GPU-x"}\nnot json\n')
    node.faults.throttle(1, 0x8)
    n = start(pynvml_fake, node, monkeypatch)
    assert n.nvml.nvmlDeviceGetCurrPcieLinkWidth(n.gpu(1)) == 8
    assert n.nvml.nvmlDeviceGetCurrentClocksEventReasons(n.gpu(1)) == 0x8
    err = capfd.readouterr().err
    assert 'unknown or missing "kind"' in err
    assert "not a JSON object" in err


def test_injected_event_from_another_process_wakes_a_blocked_wait(small: Node) -> None:
    nvml = small.nvml
    es = event_set(small, 0, xid_mask(nvml))
    result: dict[str, Any] = {}

    def wait() -> None:
        try:
            result["event"] = nvml.nvmlEventSetWait(es, 5000)
        except nvml.NVMLError as exc:
            result["error"] = exc
        result["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    # Inventory keeps working from other threads while the wait blocks.
    for _ in range(200):
        assert nvml.nvmlDeviceGetCount() == 2
        nvml.nvmlDeviceGetUUID(small.gpu(1))
    proc = small.cli("xid", "--gpu", "0", "--xid", "119")
    done = time.monotonic()
    waiter.join(10)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in result
    assert result["event"].eventData == 119
    # The wait returned by the time (or moments after) the injector exited,
    # far inside its 5 s timeout.
    assert result["at"] - done < 1.0


def test_wait_timeout_is_honoured(small: Node) -> None:
    es = event_set(small, 0, xid_mask(small.nvml))
    started = time.monotonic()
    with pytest.raises(small.nvml.NVMLError_Timeout):
        small.nvml.nvmlEventSetWait(es, 150)
    assert 0.14 <= time.monotonic() - started < 1.0


def test_cli_injects_every_kind(small: Node) -> None:
    nvml = small.nvml
    gpu0 = small.gpu(0)
    mig = small.node.spec.gpu(0).mig_devices[0]
    es = event_set(small, 0, xid_mask(nvml))
    for args in (
        ("xid", "--gpu", "0", "--xid", "31", "--gi", str(mig.gi_id), "--ci", str(mig.ci_id)),
        ("ecc", "--gpu", "0", "--uncorrected", "2"),
        ("throttle", "--gpu", "0", "--reasons", "hw_slowdown"),
        ("pcie", "--gpu", "0", "--width", "8"),
        ("remap", "--gpu", "0", "--pending", "--failure"),
        ("temperature", "--gpu", "0", "--celsius", "88"),
    ):
        proc = small.cli(*args)
        assert proc.returncode == 0, proc.stderr
    assert nvml.nvmlEventSetWait(es, 1000).gpuInstanceId == mig.gi_id
    uncorrected = nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    assert nvml.nvmlDeviceGetTotalEccErrors(gpu0, uncorrected, nvml.NVML_VOLATILE_ECC) == 2
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(gpu0) == 0x8
    assert nvml.nvmlDeviceGetCurrPcieLinkWidth(gpu0) == 8
    assert nvml.nvmlDeviceGetRemappedRows(gpu0)[2:] == (1, 1)
    assert nvml.nvmlDeviceGetTemperature(gpu0, nvml.NVML_TEMPERATURE_GPU) == 88
    proc = small.cli("lost", "--gpu", "0")
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(nvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetName(gpu0)
    proc = small.cli("recover")
    assert proc.returncode == 0, proc.stderr
    assert nvml.nvmlDeviceGetCurrPcieLinkWidth(gpu0) == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("xid", "--gpu", "0", "--xid", "31", "--gi", "99"), "no GPU instance 99"),
        (("xid", "--gpu", "0", "--xid", "31", "--ci", "0"), "--ci needs --gi"),
        (("pcie", "--gpu", "1", "--width", "32"), "link width must be 1..16"),
        (("lost", "--gpu", "7"), "not 7"),
        (("throttle", "--gpu", "0", "--reasons", "sleepy"), "unknown throttle reason"),
        (("ecc", "--gpu", "0"), "positive"),
    ],
)
def test_cli_rejects_bad_requests_and_logs_nothing(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    node = fakenvml.FakeNode("small", tmp_path / "faults.jsonl")
    env = {**os.environ, **node.env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "dra_driver.testing.fakenvml", "inject", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "faults.jsonl").exists()


def test_concurrent_inventory_waits_and_injection(small: Node) -> None:
    nvml = small.nvml
    es = event_set(small, 0, xid_mask(nvml))
    received: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def inventory() -> None:
        try:
            while not stop.is_set():
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    nvml.nvmlDeviceGetUUID(handle)
                    nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(small.gpu(0), 3)
                nvml.nvmlDeviceGetAttributes(mig)
        except BaseException as exc:
            errors.append(exc)

    def wait() -> None:
        try:
            while len(received) < 30:
                received.append(int(nvml.nvmlEventSetWait(es, 5000).eventData))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=inventory) for _ in range(3)]
    threads.append(threading.Thread(target=wait))
    for t in threads:
        t.start()
    for xid in range(30):
        small.faults.xid(0, 1000 + xid)
        small.faults.throttle(0, xid)
    threads[-1].join(10)
    stop.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert received == [1000 + xid for xid in range(30)]
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(small.gpu(0)) == 29


def test_append_without_the_sidecar_is_noticed(small: Node) -> None:
    """A writer that only appends (no .gen update) is picked up within 100 ms."""
    log = small.node.fault_log
    assert log is not None
    gpu1 = small.gpu(1)
    uuid = small.node.spec.gpu(1).uuid
    with log.open("a") as f:
        f.write(f'{{"kind": "pcie", "gpu": "{uuid}", "value": 2}}\n')
    deadline = time.monotonic() + 1.0
    while small.nvml.nvmlDeviceGetCurrPcieLinkWidth(gpu1) != 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
