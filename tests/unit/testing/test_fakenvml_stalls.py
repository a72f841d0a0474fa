"""Hang and delay faults of the fake NVML, and its recovery action (field and
event), seen through both NVML backends: a call hung on one GPU stalls that
GPU only, never the others or the event wait."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.nvml import NvmlBackend, open_backend
from dra_driver.nvml.errors import ERROR_NOT_SUPPORTED, SUCCESS
from dra_driver.nvml.types import EVENT_GPU_RECOVERY_ACTION, EVENT_XID_CRITICAL
from dra_driver.testing import fakenvml

TEMPERATURE = "nvmlDeviceGetTemperature"


def topology_with_driver(tmp_path: Path, version: str) -> Path:
    """The small topology as a given driver version reports it."""
    raw = json.loads(fakenvml.topology_path("small").read_text())
    raw["name"] = f"small-{version.split('.')[0]}"
    raw["driver_version"] = version
    path = tmp_path / f"{raw['name']}.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(params=["565.57.01", "550.54.15"])
def node(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_nvml: str,  # skips without the library, fails under CI
) -> fakenvml.FakeNode:
    fake = fakenvml.FakeNode(
        topology_with_driver(tmp_path, request.param), fault_log=tmp_path / "faults.jsonl"
    )
    fake.reset_faults()
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture(params=["cffi", "nvidia-ml-py"])
def backend(request: pytest.FixtureRequest, node: fakenvml.FakeNode) -> Iterator[NvmlBackend]:
    b = open_backend(fakenvml.library_path(), request.param)
    b.inventory()
    yield b
    node.faults.release()
    b.close(timeout=5)


class Call(threading.Thread):
    """One blocking NVML call in a daemon thread, so a test can watch it hang."""

    def __init__(self, fn: object) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: object = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self._fn()  # type: ignore[operator]
        finally:
            self.done.set()


def test_a_hang_stalls_only_that_gpu_and_function_until_released(
    backend: NvmlBackend, node: fakenvml.FakeNode
) -> None:
    node.faults.hang(gpu=0, fn=TEMPERATURE)
    stuck = Call(lambda: backend.health_sample_gpu(0))
    stuck.start()
    assert not stuck.done.wait(0.3)
    started = time.monotonic()
    other = backend.health_sample_gpu(1)  # the other GPU answers at once
    assert time.monotonic() - started < 0.2
    assert other.rc == SUCCESS and other.temperature_c.ok
    node.faults.release(gpu=0)
    assert stuck.done.wait(2)
    sample = stuck.result
    assert getattr(sample, "rc", None) == SUCCESS


def test_an_event_still_arrives_while_another_gpu_hangs(
    backend: NvmlBackend, node: fakenvml.FakeNode
) -> None:
    regs = backend.register_events(EVENT_XID_CRITICAL)
    assert all(r.rc == SUCCESS for r in regs)
    node.faults.hang(gpu=0)  # every call on GPU 0
    stuck = Call(lambda: backend.health_sample_gpu(0))
    stuck.start()
    assert not stuck.done.wait(0.2)
    node.faults.xid(1, 79)
    started = time.monotonic()
    event = backend.wait_event(1000)
    assert event is not None and (event.gpu_index, event.event_data) == (1, 79)
    assert time.monotonic() - started < 0.5
    node.faults.release()
    assert stuck.done.wait(2)


def test_a_delay_slows_each_call_by_its_ms(backend: NvmlBackend, node: fakenvml.FakeNode) -> None:
    node.faults.delay(150, gpu=1, fn=TEMPERATURE)
    started = time.monotonic()
    backend.health_sample_gpu(1)
    assert 0.14 < time.monotonic() - started < 1.0
    started = time.monotonic()
    backend.health_sample_gpu(0)
    assert time.monotonic() - started < 0.1
    node.faults.release(fn=TEMPERATURE)
    started = time.monotonic()
    backend.health_sample_gpu(1)
    assert time.monotonic() - started < 0.1


def test_close_is_bounded_with_a_call_hung_in_nvml(
    backend: NvmlBackend, node: fakenvml.FakeNode
) -> None:
    if backend.name != "cffi":
        pytest.skip("nvidia-ml-py tracks only its event waits; the deadline layer bounds the rest")
    node.faults.hang(gpu=0, fn=TEMPERATURE)
    stuck = Call(lambda: backend.health_sample_gpu(0))
    stuck.start()
    assert not stuck.done.wait(0.2)
    started = time.monotonic()
    assert backend.close(timeout=0.3) is False  # NVML left alone under the live call
    assert time.monotonic() - started < 0.6
    node.faults.release()
    assert stuck.done.wait(2)
    assert backend.close(timeout=1) is True


def test_recovery_action_field_and_event(backend: NvmlBackend, node: fakenvml.FakeNode) -> None:
    new_driver = node.spec.driver_version.startswith("565")
    regs = {r.gpu_index: r for r in backend.register_events()}
    assert bool(regs[1].registered_mask & EVENT_GPU_RECOVERY_ACTION) is new_driver
    before = backend.health_sample_gpu(1).recovery_action
    if not new_driver:  # an old driver does not know the field: "not supported", no failure
        assert before.rc == ERROR_NOT_SUPPORTED
        node.faults.recovery_action(1, 2)
        assert backend.health_sample_gpu(1).recovery_action.rc == ERROR_NOT_SUPPORTED
        return
    assert (before.value, before.rc) == (0, SUCCESS)
    node.faults.xid(1, 79, action=2)  # the driver asks for a node reboot with the XID
    kinds = []
    for _ in range(2):
        e = backend.wait_event(1000)
        assert e is not None
        kinds.append((e.event_type, e.event_data))
    assert kinds == [(EVENT_XID_CRITICAL, 79), (EVENT_GPU_RECOVERY_ACTION, 2)]
    assert backend.health_sample_gpu(1).recovery_action == (2, SUCCESS)
    node.faults.recovery_action(1, 0)
    e = backend.wait_event(1000)
    assert e is not None and (e.event_type, e.event_data) == (EVENT_GPU_RECOVERY_ACTION, 0)
    assert backend.health_sample_gpu(1).recovery_action == (0, SUCCESS)


def test_bad_stall_records_are_refused_by_the_injector(node: fakenvml.FakeNode) -> None:
    with pytest.raises(fakenvml.FakeNvmlError):
        node.faults.hang(fn="not an nvml function")
    with pytest.raises(fakenvml.FakeNvmlError):
        node.faults.delay(0)


def test_the_cli_injects_the_new_fault_kinds(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    log = tmp_path / "cli.faults.jsonl"
    env = {**os.environ, "FAKE_NVML_FAULTS": str(log)}

    def inject(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dra_driver.testing.fakenvml", "inject", "--topology",
             "small", *args],
            env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert inject("hang", "--gpu", "0", "--fn", TEMPERATURE).returncode == 0
    assert inject("delay", "--ms", "20").returncode == 0
    assert inject("recovery-action", "--gpu", "1", "--action", "4").returncode == 0
    assert inject("xid", "--gpu", "1", "--xid", "79", "--action", "2").returncode == 0
    assert inject("release", "--gpu", "0").returncode == 0
    bad = inject("hang", "--fn", "rm -rf")
    assert bad.returncode == 2 and "not an NVML function name" in bad.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["hang", "delay", "recovery_action", "xid", "release"]
    assert records[0]["fn"] == TEMPERATURE and "gpu" not in records[1]
    assert (records[2]["value"], records[3]["action"]) == (4, 2)
