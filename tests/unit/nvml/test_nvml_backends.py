"""The cffi fast path against nvidia-ml-py on the fake NVML, and NVML failure handling.

Both backends load the same fake library, so every record they return must be
equal field by field; the fault channel then checks that each degradation
signal and event reaches the driver, and that NVML failures become typed
errors (or per-device DeviceErrors), never a crash.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dra_driver.inventory import DeviceType, build_inventory, mig_device_name
from dra_driver.nvml import (
    HEALTH_EVENT_MASK,
    INSTANCE_ID_ALL,
    NvmlBackend,
    NvmlError,
    NvmlGpuLostError,
    NvmlLibraryNotFoundError,
    NvmlSnapshot,
    open_backend,
)
from dra_driver.nvml._common import GI_PROFILE_INDEX_COUNT, profile_name
from dra_driver.nvml.errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_GPU_IS_LOST,
    ERROR_NOT_SUPPORTED,
    ERROR_UNKNOWN,
    SUCCESS,
)
from dra_driver.nvml.types import (
    EVENT_DOUBLE_BIT_ECC,
    EVENT_GPU_UNAVAILABLE,
    EVENT_SINGLE_BIT_ECC,
    EVENT_XID_CRITICAL,
    MIG_ENABLE,
    HealthSample,
    Reading,
)
from dra_driver.testing import fakenvml

MiB = 1024 * 1024
BACKENDS = ("cffi", "nvidia-ml-py")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def library(fake_nvml: str) -> str:
    return fake_nvml


Opener = Callable[..., fakenvml.FakeNode]


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Opener:
    """Point the fake at a topology with a private fault log (before any nvmlInit)."""

    def make(topology: str = "dgx-h100") -> fakenvml.FakeNode:
        fake = fakenvml.FakeNode(topology, fault_log=tmp_path / f"{topology}.faults.jsonl")
        fake.reset_faults()
        for key, value in fake.env().items():
            monkeypatch.setenv(key, value)
        return fake

    return make


@pytest.fixture
def backends(library: str) -> Iterator[Callable[[], dict[str, NvmlBackend]]]:
    """Open both backends on the fake (after the node fixture set its env); close them after."""
    opened: list[NvmlBackend] = []

    def open_both() -> dict[str, NvmlBackend]:
        out = {}
        for name in BACKENDS:
            backend = open_backend(library, name)
            opened.append(backend)
            out[name] = backend
        return out

    yield open_both
    for backend in opened:
        backend.close()


def both_inventories(pair: dict[str, NvmlBackend]) -> NvmlSnapshot:
    fast, reference = pair["cffi"].inventory(), pair["nvidia-ml-py"].inventory()
    for a, b in zip(fast.gpus, reference.gpus, strict=True):
        assert a == b, f"gpu {a.index} differs"
    assert fast == reference
    return fast


def both_samples(pair: dict[str, NvmlBackend]) -> list[HealthSample]:
    fast, reference = pair["cffi"].health_sample(), pair["nvidia-ml-py"].health_sample()
    assert fast == reference
    return fast


# -- inventory equality ----------------------------------------------------


@pytest.mark.parametrize("topology", fakenvml.topology_names())
def test_backends_agree_on_every_shipped_topology(
    topology: str, node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    spec = node(topology).spec
    pair = backends()
    snap = both_inventories(pair)
    both_samples(pair)
    assert snap.errors == ()
    assert snap.driver_version == spec.driver_version
    assert snap.cuda_driver_version == spec.cuda_driver_version
    assert [g.uuid for g in snap.gpus] == [g.uuid for g in spec.gpus]
    assert [g.minor for g in snap.gpus] == [g.minor for g in spec.gpus]
    for gpu, want in zip(snap.gpus, spec.gpus, strict=True):
        assert gpu.name == want.name
        raw = spec.raw["gpus"][want.index]
        assert gpu.pci_bus_id == raw["pci_bus_id"]
        assert sorted(m.uuid for m in gpu.migs) == sorted(m.uuid for m in want.mig_devices)
        model = spec.raw["models"][want.model]
        if "mig" in model:
            offered = sorted(p["id"] for p in model["mig"]["profiles"])
            assert sorted(p.profile_id for p in gpu.mig_profiles) == offered
        else:
            assert gpu.mig_mode_current is None
            assert gpu.mig_profiles == ()


def test_mig_records_match_the_topology(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    spec = node("dgx-h100").spec
    snap = both_inventories(backends())
    model = spec.raw["models"]["H100-SXM5-80GB"]["mig"]
    profiles = {p["id"]: p for p in model["profiles"]}
    gpu = snap.gpus[5]
    assert gpu.mig_mode_current == MIG_ENABLE
    assert len(gpu.migs) == len(spec.gpus[5].mig_devices) == 6
    for mig, want in zip(
        sorted(gpu.migs, key=lambda m: m.gpu_instance_id),
        sorted(spec.gpus[5].mig_devices, key=lambda m: m.gi_id),
        strict=True,
    ):
        p = profiles[want.profile_id]
        assert (mig.uuid, mig.gpu_instance_id, mig.compute_instance_id) == (
            want.uuid,
            want.gi_id,
            want.ci_id,
        )
        assert mig.gi_profile_id == want.profile_id
        assert mig.profile_name == profile_name(p["name"])
        assert not mig.profile_name.startswith("MIG")
        assert (mig.placement_start, mig.placement_size) == (
            want.placement_start,
            p["placement_size"],
        )
        assert mig.multiprocessors == p["multiprocessors"]
        assert mig.memory_bytes == p["memory_mib"] * MiB
    one_g = next(p for p in gpu.mig_profiles if p.name == "1g.10gb")
    assert one_g.placements == tuple((s, 1) for s in profiles[one_g.profile_id]["placements"])


def test_profile_index_count_matches_the_compiled_header() -> None:
    """Both backends probe GI_PROFILE_INDEX_COUNT indices: it must be nvml.h's count."""
    fastpath = pytest.importorskip("dra_driver.nvml._fastpath")
    assert fastpath.lib.fp_header_profile_count() == GI_PROFILE_INDEX_COUNT


def test_build_inventory_names_and_attributes(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    spec = node("dgx-h100").spec
    snap = both_inventories(backends())
    inv = build_inventory(snap, backend="cffi")
    names = {d.name for d in inv.devices}
    model = spec.raw["models"]["H100-SXM5-80GB"]
    profiles = {p["id"]: p for p in model["mig"]["profiles"]}
    expected = set()
    for g in spec.gpus:
        if spec.raw["gpus"][g.index].get("mig", {}).get("current") == MIG_ENABLE:
            for m in g.mig_devices:
                prof = profile_name(profiles[m.profile_id]["name"])
                expected.add(mig_device_name(g.minor, prof, m.profile_id, m.placement_start))
        else:
            expected.add(f"gpu-{g.minor}")
    assert names == expected
    gpu0 = inv.device("gpu-0")
    assert gpu0 is not None and gpu0.type is DeviceType.GPU
    assert gpu0.attributes["productName"] == "NVIDIA H100 80GB HBM3"
    assert gpu0.attributes["architecture"] == "Hopper"
    assert str(gpu0.attributes["cudaComputeCapability"]) == "9.0.0"
    assert str(gpu0.attributes["driverVersion"]) == "550.54.15"
    assert str(gpu0.attributes["cudaDriverVersion"]) == "12.4.0"
    assert gpu0.capacities["memory"] == model["memory_mib"] * MiB
    migs = [
        d for d in inv.devices if d.type is DeviceType.MIG and d.parent_uuid == spec.gpus[5].uuid
    ]
    assert migs and all(d.name.startswith(f"gpu-{spec.gpus[5].minor}-mig-") for d in migs)
    one = next(d for d in migs if d.attributes["profile"] == "1g.10gb")
    assert one.capacities["memory"] == profiles[19]["memory_mib"] * MiB
    assert sum(1 for k in one.capacities if k.startswith("memorySlice")) == 1
    assert f"gpu-{spec.gpus[5].minor}" not in names  # MIG-enabled GPUs offer only their slices


# -- faults through health samples and events -----------------------------


def test_every_degradation_fault_shows_in_health_samples(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("dgx-h100")
    pair = backends()
    both_inventories(pair)
    before = both_samples(pair)
    assert all(s.rc == SUCCESS for s in before)
    assert before[1].retired_pages_pending.rc == ERROR_NOT_SUPPORTED  # H100: no page retirement
    fake.faults.ecc(1, corrected=3, uncorrected=2)
    fake.faults.throttle(2, fakenvml.THROTTLE_REASONS["hw_thermal_slowdown"])
    fake.faults.pcie(3, 8)
    fake.faults.remap(4, pending=True, failure=True, corrected_rows=5, uncorrected_rows=1)
    fake.faults.temperature(6, 91)
    after = both_samples(pair)
    assert after[1].ecc_corrected_volatile.value == before[1].ecc_corrected_volatile.value + 3
    assert after[1].ecc_uncorrected_volatile.value == before[1].ecc_uncorrected_volatile.value + 2
    assert after[2].clocks_event_reasons.value & 0x40
    assert after[3].pcie_link_width_current.value == 8
    assert after[3].pcie_link_width_max.value == 16
    assert after[4].remapped_rows_pending.value == 1
    assert after[4].remapped_rows_failure.value == 1
    assert after[4].remapped_rows_corrected.value == before[4].remapped_rows_corrected.value + 5
    assert after[4].remapped_rows_uncorrected.value == before[4].remapped_rows_uncorrected.value + 1
    assert after[6].temperature_c.value == 91
    assert after[0] == before[0]
    fake.faults.recover()
    assert both_samples(pair)[3].pcie_link_width_current.value == 16


def test_retired_pages_on_a_gpu_that_retires_pages(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("mixed")
    pair = backends()
    both_inventories(pair)
    assert both_samples(pair)[0].retired_pages_pending == Reading(0, SUCCESS)
    fake.faults.retired_pages(0)
    sample = both_samples(pair)[0]
    assert sample.retired_pages_pending.value == 1 and sample.retired_pages_pending.ok
    assert sample.remapped_rows_pending.rc == ERROR_NOT_SUPPORTED  # pre-Ampere


def wait_for(backend: NvmlBackend, event_type: int, deadline_s: float = 5.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        event = backend.wait_event(200)
        if event is not None and event.event_type == event_type:
            return event
    raise AssertionError(f"no event {event_type:#x} within {deadline_s}s")


def test_events_reach_both_backends(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("dgx-h100")
    pair = backends()
    both_inventories(pair)
    mask = HEALTH_EVENT_MASK | EVENT_SINGLE_BIT_ECC
    regs = {name: b.register_events(mask) for name, b in pair.items()}
    assert regs["cffi"] == regs["nvidia-ml-py"]
    assert all(r.rc == SUCCESS and r.registered_mask & EVENT_XID_CRITICAL for r in regs["cffi"])
    assert all(r.registered_mask == r.registered_mask & mask for r in regs["cffi"])
    spec = fake.spec
    fake.faults.xid(1, 48)
    mig = spec.gpus[5].mig_devices[0]
    fake.faults.xid(5, 94, gi=mig.gi_id, ci=mig.ci_id)
    fake.faults.ecc(3, corrected=1)
    for backend in pair.values():
        first = wait_for(backend, EVENT_XID_CRITICAL)
        assert (first.gpu_index, first.uuid, first.event_data) == (1, spec.gpus[1].uuid, 48)
        assert (first.gpu_instance_id, first.compute_instance_id) == (
            INSTANCE_ID_ALL,
            INSTANCE_ID_ALL,
        )
        second = wait_for(backend, EVENT_XID_CRITICAL)
        assert (second.gpu_index, second.event_data) == (5, 94)
        assert (second.gpu_instance_id, second.compute_instance_id) == (mig.gi_id, mig.ci_id)
        ecc = wait_for(backend, EVENT_SINGLE_BIT_ECC)
        assert ecc.gpu_index == 3
        assert backend.wait_event(0) is None


def test_double_bit_ecc_and_gpu_lost_events(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("small")
    pair = backends()
    both_inventories(pair)
    for backend in pair.values():
        backend.register_events(HEALTH_EVENT_MASK)
    fake.faults.ecc(1, uncorrected=1)
    for backend in pair.values():
        assert wait_for(backend, EVENT_DOUBLE_BIT_ECC).gpu_index == 1
    fake.faults.lost(0)
    for backend in pair.values():
        xid = wait_for(backend, EVENT_XID_CRITICAL)
        assert (xid.gpu_index, xid.event_data) == (0, 79)
        assert wait_for(backend, EVENT_GPU_UNAVAILABLE).gpu_index == 0
        with pytest.raises(NvmlGpuLostError):
            for _ in range(10):
                backend.wait_event(200)
    samples = both_samples(pair)
    assert samples[0].rc == ERROR_GPU_IS_LOST
    assert samples[0].temperature_c.rc == ERROR_GPU_IS_LOST
    assert samples[1].rc == SUCCESS


def python_progress_during(block: Callable[[], object]) -> int:
    """Samples a spinning Python thread took strictly inside block's run.

    A call that holds the GIL allows none: the spinner cannot run until it
    returns (checked against ctypes.PyDLL in test_progress_probe_detects_a_held_gil).
    """
    stamps: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 256 == 0:
                stamps.append(time.monotonic())

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.02)
    t0 = time.monotonic()
    block()
    t1 = time.monotonic()
    stop.set()
    spinner.join()
    return sum(1 for t in stamps if t0 + 0.05 < t < t1 - 0.05)


def test_progress_probe_detects_a_held_gil() -> None:
    libc_holding_gil = ctypes.PyDLL(None)
    assert python_progress_during(lambda: libc_holding_gil.usleep(300_000)) == 0


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_wait_event_releases_the_gil(node: Opener, library: str, backend_name: str) -> None:
    node("small")
    backend = open_backend(library, backend_name)
    try:
        backend.register_events()
        results: list[object] = []
        progressed = python_progress_during(lambda: results.append(backend.wait_event(400)))
        assert results == [None]
        assert progressed > 0, "a Python thread stalled while wait_event blocked"
    finally:
        backend.close()


def test_wait_in_one_thread_does_not_block_inventory_or_health(node: Opener, library: str) -> None:
    node("small")
    backend = open_backend(library, "cffi")
    try:
        backend.register_events()
        waiter = threading.Thread(target=backend.wait_event, args=(1500,))
        waiter.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        backend.inventory()
        backend.health_sample()
        assert time.monotonic() - t0 < 1.0
        assert waiter.is_alive()
        waiter.join()
    finally:
        backend.close()


# -- NVML failures ---------------------------------------------------------


@pytest.mark.parametrize("backend_name", (*BACKENDS, "auto"))
def test_missing_library_is_a_typed_error(tmp_path: Path, backend_name: str) -> None:
    with pytest.raises(NvmlLibraryNotFoundError) as info:
        open_backend(str(tmp_path / "libnvidia-ml.so.1"), backend_name)
    assert "libnvidia-ml.so.1" in str(info.value)


def test_unknown_backend_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown NVML backend"):
        open_backend(None, "ctypes")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_init_failure_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str, backend_name: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "gpus": "not a list"}')
    monkeypatch.setenv(fakenvml.ENV_TOPOLOGY, str(bad))
    monkeypatch.setenv(fakenvml.ENV_FAULTS, str(tmp_path / "faults.jsonl"))
    with pytest.raises(NvmlError) as info:
        open_backend(library, backend_name)
    assert info.value.code == ERROR_UNKNOWN
    assert info.value.call == "nvmlInit_v2"


def test_lost_gpu_keeps_the_rest_of_the_inventory(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("dgx-h100")
    pair = backends()
    full = both_inventories(pair)
    fake.faults.lost(3)
    snap = both_inventories(pair)
    assert [g.index for g in snap.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert snap.gpus == tuple(g for g in full.gpus if g.index != 3)
    (error,) = snap.errors
    assert (error.gpu_index, error.code, error.mig_index) == (3, ERROR_GPU_IS_LOST, None)
    assert error.call.startswith("nvml") and error.message
    inv = build_inventory(snap)
    assert inv.device(f"gpu-{fake.spec.gpus[3].minor}") is None
    assert any("gpu 3" in p for p in inv.problems)


def test_lost_mig_parent_drops_all_its_mig_devices(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    fake = node("dgx-h100")
    pair = backends()
    both_inventories(pair)
    fake.faults.lost(5)
    snap = both_inventories(pair)
    assert 5 not in [g.index for g in snap.gpus]
    assert [(e.gpu_index, e.code) for e in snap.errors] == [(5, ERROR_GPU_IS_LOST)]
    inv = build_inventory(snap)
    parent = fake.spec.gpus[5]
    assert not [d for d in inv.devices if d.parent_uuid == parent.uuid]
    assert [d for d in inv.devices if d.parent_uuid == fake.spec.gpus[2].uuid]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_reinitialises_once_after_nvml_was_shut_down_underneath(
    node: Opener, library: str, backend_name: str
) -> None:
    node("small")
    backend = open_backend(library, backend_name)
    try:
        first = backend.inventory()
        # Another client's extra shutdown drops the fake's refcount to 0, as a
        # driver reload would: every call now answers UNINITIALIZED.
        assert ctypes.CDLL(library).nvmlShutdown() == SUCCESS
        assert backend.inventory() == first
    finally:
        backend.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_closed_backend_refuses_calls_and_close_is_idempotent(
    node: Opener, library: str, backend_name: str
) -> None:
    node("small")
    backend = open_backend(library, backend_name)
    backend.inventory()
    backend.close()
    backend.close()
    with pytest.raises(NvmlError):
        backend.inventory()


def test_wait_before_registration_is_a_clear_error(
    node: Opener, backends: Callable[[], dict[str, NvmlBackend]]
) -> None:
    node("small")
    for backend in backends().values():
        with pytest.raises(NvmlError, match="register_events"):
            backend.wait_event(10)


def test_set_compute_mode(node: Opener, backends: Callable[[], dict[str, NvmlBackend]]) -> None:
    fake = node("small")
    uuid = fake.spec.gpus[1].uuid

    def compute_mode() -> int:
        """Read back through pynvml, an independent client of the same library state."""
        nvml = fakenvml.load_into_pynvml()
        nvml.nvmlInit()
        try:
            mode: int = nvml.nvmlDeviceGetComputeMode(nvml.nvmlDeviceGetHandleByUUID(uuid))
            return mode
        finally:
            nvml.nvmlShutdown()

    pair = backends()
    # EXCLUSIVE_PROCESS, then PROHIBITED: each backend's own write is what reads back.
    for backend, mode in zip(pair.values(), (3, 2), strict=True):
        backend.set_compute_mode(uuid, mode)
        assert compute_mode() == mode, backend.name
        with pytest.raises(NvmlError) as info:
            backend.set_compute_mode("GPU-00000000-0000-0000-0000-000000000000", 0)
        assert info.value.call == "nvmlDeviceGetHandleByUUID"
        assert compute_mode() == mode


def test_backend_info(node: Opener, library: str) -> None:
    node("small")
    fast = open_backend(library)
    try:
        assert fast.info.name == "cffi" == fast.name
        assert fast.info.library == library
        assert fast.info.fallback_reason == ""
        assert fast.info.missing_symbols == []
    finally:
        fast.close()


def test_auto_falls_back_to_nvidia_ml_py_without_the_extension(node: Opener, library: str) -> None:
    fake = node("small")
    code = (
        "import sys; sys.modules['dra_driver.nvml._fastpath'] = None\n"
        "from dra_driver.nvml import open_backend\n"
        f"b = open_backend({library!r})\n"
        "print(b.name, '|', b.info.fallback_reason, '|', len(b.inventory().gpus))\n"
        "b.close()\n"
    )
    env = {**os.environ, **fake.env(), "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    name, reason, count = (part.strip() for part in out.stdout.split("|"))
    assert name == "nvidia-ml-py"
    assert "cffi fast path unavailable" in reason
    assert int(count) == len(fake.spec.gpus)
    assert "using nvidia-ml-py" in out.stderr


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_close_waits_for_an_event_wait_in_flight(
    node: Opener, library: str, backend_name: str
) -> None:
    node("small")
    backend = open_backend(library, backend_name)
    backend.register_events()
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(backend.wait_event(300)))
    waiter.start()
    time.sleep(0.05)
    backend.close()  # must not free the event set under the waiter
    waiter.join()
    assert results == [None]


# A pre-MIG driver that exports only the calls nothing works without, plus
# the legacy CUDA version call: every other feature must read as unsupported.
OLD_DRIVER_C = r"""
#include <string.h>
static int inited;
static int dev;
int nvmlInit_v2(void) { inited = 1; return 0; }
int nvmlShutdown(void) { inited = 0; return 0; }
const char *nvmlErrorString(int rc) { return rc == 13 ? "Function Not Found" : "Old Error"; }
int nvmlDeviceGetCount_v2(unsigned *n) { if (!inited) return 1; *n = 1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) {
    if (i) return 2; *h = &dev; return 0;
}
int nvmlDeviceGetMinorNumber(void *h, unsigned *m) { *m = 4; return 0; }
int nvmlDeviceGetUUID(void *h, char *buf, unsigned len) {
    strncpy(buf, "GPU-0ld", len); return 0;
}
int nvmlSystemGetDriverVersion(char *buf, unsigned len) {
    strncpy(buf, "418.40.04", len); return 0;
}
int nvmlSystemGetCudaDriverVersion(int *v) { *v = 10010; return 0; }
"""


@pytest.fixture
def old_driver(tmp_path: Path) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the old-driver stub")
    src = tmp_path / "old.c"
    src.write_text(OLD_DRIVER_C)
    lib = tmp_path / "libnvidia-ml-old.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, timeout=60)
    return str(lib)


def test_missing_symbols_read_as_unsupported_not_a_failed_start(old_driver: str) -> None:
    opened = [open_backend(old_driver, name) for name in BACKENDS]
    try:
        fast, reference = opened
        assert "nvmlDeviceGetMigMode" in fast.info.missing_symbols
        assert "nvmlInit_v2" not in fast.info.missing_symbols
        snap = fast.inventory()
        assert snap == reference.inventory()
        assert snap.errors == ()
        assert (snap.driver_version, snap.cuda_driver_version) == ("418.40.04", 10010)
        (gpu,) = snap.gpus
        assert (gpu.minor, gpu.uuid, gpu.name, gpu.pci_bus_id) == (4, "GPU-0ld", "", "")
        assert gpu.brand is gpu.architecture is gpu.memory_total_bytes is None
        assert gpu.mig_mode_current is None and gpu.mig_profiles == () and gpu.migs == ()
        samples = fast.health_sample()
        assert samples == reference.health_sample()
        assert samples[0].rc == SUCCESS
        assert not samples[0].temperature_c.ok
        # No nvmlDeviceGetFieldValues (pre-565 recovery action): "not supported", per GPU too.
        assert "nvmlDeviceGetFieldValues" in fast.info.missing_symbols
        assert samples[0].recovery_action.rc == ERROR_FUNCTION_NOT_FOUND
        assert fast.health_sample_gpu(0) == reference.health_sample_gpu(0) == samples[0]
        for backend in opened:
            with pytest.raises(NvmlError) as info:
                backend.register_events()
            assert info.value.call == "nvmlEventSetCreate"
    finally:
        for backend in opened:
            backend.close()
