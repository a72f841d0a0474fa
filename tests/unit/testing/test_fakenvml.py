"""The fake NVML library read through nvidia-ml-py, an independent client.

Covers inventory and MIG data for every shipped topology, the MIG handle rules,
and the return-code contract (versions, buffer sizes, init reference counting,
bad handles, invalid topologies).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dra_driver.testing import fakenvml

NO_ID = 0xFFFFFFFF


@pytest.fixture
def nvml_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """pynvml bound to the fake, with a private fault log; shut down afterwards."""
    monkeypatch.setenv(fakenvml.ENV_FAULTS, str(tmp_path / "faults.jsonl"))
    monkeypatch.delenv(fakenvml.ENV_TOPOLOGY, raising=False)
    nvml = fakenvml.load_into_pynvml()
    yield nvml
    while True:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError_Uninitialized:
            break


def is_mig(nvml: ModuleType, handle: Any) -> int:
    """nvmlDeviceIsMigDeviceHandle; pynvml hands back the raw c_uint."""
    value = nvml.nvmlDeviceIsMigDeviceHandle(handle)
    return int(getattr(value, "value", value))


def init(nvml: ModuleType, monkeypatch: pytest.MonkeyPatch, topology: str) -> None:
    monkeypatch.setenv(fakenvml.ENV_TOPOLOGY, topology)
    nvml.nvmlInit()


def profiles_by_id(model: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(p["id"]): p for p in model.get("mig", {}).get("profiles", [])}


@pytest.mark.parametrize("name", fakenvml.topology_names())
def test_shipped_topology_reads_back_through_pynvml(
    nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    nvml = nvml_env
    topo = fakenvml.load_topology(name)
    raw = topo.raw
    init(nvml, monkeypatch, name)

    assert nvml.nvmlSystemGetDriverVersion() == raw["driver_version"]
    assert nvml.nvmlSystemGetCudaDriverVersion() == raw["cuda_driver_version"]
    assert nvml.nvmlSystemGetCudaDriverVersion_v2() == raw["cuda_driver_version"]
    assert nvml.nvmlSystemGetNVMLVersion().endswith(raw["driver_version"])
    assert nvml.nvmlDeviceGetCount() == len(raw["gpus"])

    for index, gpu in enumerate(raw["gpus"]):
        model = raw["models"][gpu["model"]]
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        assert nvml.nvmlDeviceGetIndex(handle) == index
        assert nvml.nvmlDeviceGetMinorNumber(handle) == gpu["minor"]
        assert nvml.nvmlDeviceGetUUID(handle) == gpu["uuid"]
        assert nvml.nvmlDeviceGetName(handle) == model["name"]
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        assert f"{major}.{minor}" == model["cuda_compute_capability"]
        assert nvml.nvmlDeviceGetMemoryInfo(handle).total == model["memory_mib"] << 20
        mem2 = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
        assert mem2.total == model["memory_mib"] << 20
        assert mem2.reserved == model.get("memory_reserved_mib", 0) << 20
        pci = nvml.nvmlDeviceGetPciInfo(handle)
        assert pci.busId == gpu["pci_bus_id"]
        assert pci.pciDeviceId == int(model["pci_device_id"], 16)
        assert is_mig(nvml, handle) == 0
        assert nvml.nvmlDeviceGetMaxPcieLinkWidth(handle) == model["pcie_max_link_width"]
        for by in (nvml.nvmlDeviceGetHandleByUUID, nvml.nvmlDeviceGetHandleByPciBusId):
            key = gpu["uuid"] if by is nvml.nvmlDeviceGetHandleByUUID else gpu["pci_bus_id"]
            assert nvml.nvmlDeviceGetUUID(by(key)) == gpu["uuid"]

        if "mig" not in model:
            with pytest.raises(nvml.NVMLError_NotSupported):
                nvml.nvmlDeviceGetMigMode(handle)
            assert nvml.nvmlDeviceGetMaxMigDeviceCount(handle) == 0
            continue
        check_profiles(nvml, handle, model)
        mig = gpu.get("mig", {"current": 0, "pending": 0, "devices": []})
        assert nvml.nvmlDeviceGetMigMode(handle) == [mig["current"], mig["pending"]]
        check_mig_devices(nvml, handle, gpu, model, mig.get("devices", []))


def check_profiles(nvml: ModuleType, handle: Any, model: dict[str, Any]) -> None:
    expected = {int(p["index"]): p for p in model["mig"]["profiles"]}
    seen = {}
    for index in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            seen[index] = nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, index)
        except nvml.NVMLError_NotSupported:
            continue
    assert sorted(seen) == sorted(expected)
    for index, info in seen.items():
        p = expected[index]
        assert (info.id, info.name, info.sliceCount, info.instanceCount) == (
            p["id"],
            p["name"],
            p["slices"],
            p["instances"],
        )
        assert (info.multiprocessorCount, info.memorySizeMB) == (
            p["multiprocessors"],
            p["memory_mib"],
        )
        assert (info.copyEngineCount, info.decoderCount, info.jpegCount, info.ofaCount) == (
            p["copy_engines"],
            p["decoders"],
            p["jpeg"],
            p["ofa"],
        )
        count = ctypes.c_uint(0)
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(handle, info.id, None, ctypes.byref(count))
        placements = (nvml.c_nvmlGpuInstancePlacement_t * count.value)()
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(
            handle, info.id, placements, ctypes.byref(count)
        )
        assert [(pl.start, pl.size) for pl in placements] == [
            (s, p["placement_size"]) for s in p["placements"]
        ]
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, nvml.NVML_GPU_INSTANCE_PROFILE_COUNT)


def check_mig_devices(
    nvml: ModuleType,
    handle: Any,
    gpu: dict[str, Any],
    model: dict[str, Any],
    devices: list[dict[str, Any]],
) -> None:
    profiles = profiles_by_id(model)
    enabled = gpu["mig"]["current"] == 1
    max_count = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    assert max_count == (model["mig"]["max_devices"] if enabled else 0)
    for slot, dev in enumerate(devices):
        mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        p = profiles[dev["profile_id"]]
        assert is_mig(nvml, mig) == 1
        assert nvml.nvmlDeviceGetUUID(mig) == dev["uuid"]
        assert nvml.nvmlDeviceGetName(mig) == f"{model['name']} {p['name']}"
        assert nvml.nvmlDeviceGetGpuInstanceId(mig) == dev["gi_id"]
        assert nvml.nvmlDeviceGetComputeInstanceId(mig) == dev.get("ci_id", 0)
        parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
        assert nvml.nvmlDeviceGetUUID(parent) == gpu["uuid"]
        assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByUUID(dev["uuid"])) == dev["uuid"]
        assert nvml.nvmlDeviceGetMemoryInfo(mig).total == p["memory_mib"] << 20
        attrs = nvml.nvmlDeviceGetAttributes(mig)
        assert (attrs.multiprocessorCount, attrs.gpuInstanceSliceCount) == (
            p["multiprocessors"],
            p["slices"],
        )
        assert (attrs.sharedCopyEngineCount, attrs.sharedDecoderCount) == (
            p["copy_engines"],
            p["decoders"],
        )
        assert attrs.memorySizeMB == p["memory_mib"]
        gi = nvml.nvmlDeviceGetGpuInstanceById(handle, dev["gi_id"])
        gi_info = nvml.nvmlGpuInstanceGetInfo(gi)
        assert (gi_info.id, gi_info.profileId) == (dev["gi_id"], dev["profile_id"])
        assert (gi_info.placement.start, gi_info.placement.size) == (
            dev["placement_start"],
            p["placement_size"],
        )
        ci = nvml.nvmlGpuInstanceGetComputeInstanceById(gi, dev.get("ci_id", 0))
        ci_info = nvml.nvmlComputeInstanceGetInfo(ci)
        assert ci_info.id == dev.get("ci_id", 0)
        assert nvml.nvmlDeviceGetUUID(ci_info.device) == gpu["uuid"]
        assert ci_info.placement.size == p["slices"]
    if enabled:
        # Empty slot below the maximum: NOT_FOUND; at or past it: INVALID_ARGUMENT.
        if len(devices) < max_count:
            with pytest.raises(nvml.NVMLError_NotFound):
                nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, len(devices))
        with pytest.raises(nvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, max_count)
        for pid in profiles:
            instances = (nvml.c_nvmlGpuInstance_t * profiles[pid]["instances"])()
            count = ctypes.c_uint(0)
            nvml.nvmlDeviceGetGpuInstances(handle, pid, instances, ctypes.byref(count))
            assert count.value == sum(d["profile_id"] == pid for d in devices)
    else:
        with pytest.raises(nvml.NVMLError_NotSupported):
            nvml.nvmlDeviceGetGpuInstanceById(handle, 1)


def test_mig_handle_rules(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "small")
    gpu0, gpu1 = (nvml.nvmlDeviceGetHandleByIndex(i) for i in range(2))
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu0, 0)
    # GetHandleByIndex enumerates physical GPUs only.
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(2)
    # GI/CI ids and the parent lookup need a MIG handle.
    for call in (
        nvml.nvmlDeviceGetGpuInstanceId,
        nvml.nvmlDeviceGetComputeInstanceId,
        nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
    ):
        with pytest.raises(nvml.NVMLError_InvalidArgument):
            call(gpu0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetAttributes(gpu0)
    # GPU-level calls on a MIG handle.
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(mig, 0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigMode(mig)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMinorNumber(mig)
    # MIG-capable GPU with MIG disabled: no MIG devices, but profiles are listed.
    assert nvml.nvmlDeviceGetMigMode(gpu1) == [0, 0]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu1) == 0
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu1, 0)
    assert nvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu1, 0).id == 19
    # UUID prefixes.
    assert nvml.nvmlDeviceGetUUID(gpu0).startswith("GPU-")
    assert nvml.nvmlDeviceGetUUID(mig).startswith("MIG-")
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")


def test_non_mig_gpu_mig_queries(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "mixed")
    v100 = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigMode(v100)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(v100, 0)
    with pytest.raises(nvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceProfileInfo(v100, 0)
    assert nvml.nvmlSystemGetDriverVersion() == "470.256.02"


def test_leading_zero_driver_version_is_kept(
    nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    init(nvml_env, monkeypatch, "a100")
    assert nvml_env.nvmlSystemGetDriverVersion() == "535.104.05"


def test_struct_version_checks(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "small")
    gpu0 = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nvml.NVMLError_ArgumentVersionMismatch):
        nvml.nvmlDeviceGetMemoryInfo(gpu0, version=0x01000028)

    lib = nvml.nvmlLib
    info = nvml.c_nvmlGpuInstanceProfileInfo_v2_t()
    info.version = 0x05000098
    rc = lib.nvmlDeviceGetGpuInstanceProfileInfoV(gpu0, 0, ctypes.byref(info))
    assert rc == nvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH

    class ProfileInfoV3(ctypes.Structure):
        _fields_ = [
            ("version", ctypes.c_uint),
            ("id", ctypes.c_uint),
            ("sliceCount", ctypes.c_uint),
            ("instanceCount", ctypes.c_uint),
            ("multiprocessorCount", ctypes.c_uint),
            ("copyEngineCount", ctypes.c_uint),
            ("decoderCount", ctypes.c_uint),
            ("encoderCount", ctypes.c_uint),
            ("jpegCount", ctypes.c_uint),
            ("ofaCount", ctypes.c_uint),
            ("memorySizeMB", ctypes.c_ulonglong),
            ("name", ctypes.c_char * 96),
            ("capabilities", ctypes.c_uint),
        ]

    v3 = ProfileInfoV3(version=ctypes.sizeof(ProfileInfoV3) | (3 << 24))
    rc = lib.nvmlDeviceGetGpuInstanceProfileInfoV(gpu0, 2, ctypes.byref(v3))
    assert rc == nvml.NVML_SUCCESS
    assert (v3.id, v3.name, v3.sliceCount, v3.memorySizeMB) == (9, b"MIG 3g.40gb", 3, 40448)


def test_short_buffers(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "small")
    lib = nvml.nvmlLib
    gpu0 = nvml.nvmlDeviceGetHandleByIndex(0)
    uuid = nvml.nvmlDeviceGetUUID(gpu0)
    exact = ctypes.create_string_buffer(len(uuid) + 1)
    assert lib.nvmlDeviceGetUUID(gpu0, exact, ctypes.c_uint(len(uuid) + 1)) == 0
    assert exact.value.decode() == uuid
    short = ctypes.create_string_buffer(len(uuid))
    rc = lib.nvmlDeviceGetUUID(gpu0, short, ctypes.c_uint(len(uuid)))
    assert rc == nvml.NVML_ERROR_INSUFFICIENT_SIZE
    rc = lib.nvmlSystemGetDriverVersion(short, ctypes.c_uint(4))
    assert rc == nvml.NVML_ERROR_INSUFFICIENT_SIZE

    count = ctypes.c_uint(2)
    placements = (nvml.c_nvmlGpuInstancePlacement_t * 2)()
    rc = lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2(
        gpu0, 19, placements, ctypes.byref(count)
    )
    assert rc == nvml.NVML_ERROR_INSUFFICIENT_SIZE
    assert count.value == 7


def test_init_is_reference_counted(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    init(nvml, monkeypatch, "small")
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 2
    nvml.nvmlShutdown()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetName(handle)
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()
    # The v1 entry point and a re-init with another topology.
    monkeypatch.setenv(fakenvml.ENV_TOPOLOGY, "dgx-h100")
    assert nvml.nvmlLib.nvmlInit() == nvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetCount() == 8
    assert nvml.nvmlLib.nvmlShutdown() == nvml.NVML_SUCCESS


def test_bad_handles_and_null_outputs(
    nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "small")
    lib = nvml.nvmlLib
    bogus = nvml.c_nvmlDevice_t(ctypes.cast(ctypes.c_void_p(0x1000), type(nvml.c_nvmlDevice_t())))
    count = ctypes.c_uint()
    assert lib.nvmlDeviceGetIndex(None, ctypes.byref(count)) == nvml.NVML_ERROR_INVALID_ARGUMENT
    assert lib.nvmlDeviceGetIndex(bogus, ctypes.byref(count)) == nvml.NVML_ERROR_INVALID_ARGUMENT
    assert lib.nvmlDeviceGetCount_v2(None) == nvml.NVML_ERROR_INVALID_ARGUMENT
    gpu0 = nvml.nvmlDeviceGetHandleByIndex(0)
    assert lib.nvmlDeviceGetMinorNumber(gpu0, None) == nvml.NVML_ERROR_INVALID_ARGUMENT
    assert nvml.nvmlErrorString(nvml.NVML_ERROR_GPU_IS_LOST) == "GPU is lost"


def test_compute_mode_round_trip(nvml_env: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = nvml_env
    init(nvml, monkeypatch, "small")
    gpu1 = nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetComputeMode(gpu1) == nvml.NVML_COMPUTEMODE_DEFAULT
    nvml.nvmlDeviceSetComputeMode(gpu1, nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
    assert nvml.nvmlDeviceGetComputeMode(gpu1) == nvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS
    with pytest.raises(nvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceSetComputeMode(gpu1, 7)


def bad_topology(tmp_path: Path, mutate: Any) -> Path:
    doc = json.loads(fakenvml.topology_path("small").read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda d: d["gpus"][0]["mig"]["devices"][1].update(placement_start=0),
            "overlaps",
        ),
        (lambda d: d["gpus"][0]["mig"]["devices"][0].update(profile_id=42), "unknown GPU instance"),
        (lambda d: d["gpus"][1].update(uuid=d["gpus"][0]["uuid"]), "already used"),
        (lambda d: d["gpus"][1].update(model="B200"), "unknown model"),
        (lambda d: d["gpus"][0].update(colour="green"), "unknown field"),
        (lambda d: d["gpus"][0]["mig"].update(current=0), "MIG mode is disabled"),
    ],
)
def test_invalid_topology_fails_init_with_reason_once(
    nvml_env: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    mutate: Any,
    reason: str,
) -> None:
    nvml = nvml_env
    path = bad_topology(tmp_path, mutate)
    monkeypatch.setenv(fakenvml.ENV_TOPOLOGY, str(path))
    with pytest.raises(nvml.NVMLError_Unknown):
        nvml.nvmlInit()
    with pytest.raises(nvml.NVMLError_Unknown):
        nvml.nvmlInit()
    err = capfd.readouterr().err
    assert reason in err
    assert err.count("nvmlInit failed") == 1
    with pytest.raises(nvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()


def test_json_syntax_error_names_the_spot_the_same_every_run(tmp_path: Path) -> None:
    """The message is built from the parser's error pointer before the text is freed."""
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n  "gpus": [1, 2,,]\n}\n')
    code = (
        "from dra_driver.testing import fakenvml\n"
        "nvml = fakenvml.load_into_pynvml()\n"
        "try:\n"
        "    nvml.nvmlInit()\n"
        "except nvml.NVMLError_Unknown:\n"
        "    pass\n"
    )
    env = {**os.environ, fakenvml.ENV_TOPOLOGY: str(path)}
    env[fakenvml.ENV_FAULTS] = str(tmp_path / "faults.jsonl")
    errs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        ).stderr
        for _ in range(3)
    ]
    expected = (
        f"fakenvml: nvmlInit failed: topology {path} is not valid JSON at line 2, "
        "column 17 (near: ,] } )\n"
    )
    assert errs == [expected] * 3
    path.write_text('{"name": "x"')
    err = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    ).stderr
    assert "at line 1, column 13 (near: end of file)" in err, err


def test_library_is_found_in_an_installed_copy_that_a_source_tree_shadows(
    tmp_path: Path,
) -> None:
    """`python -m ...fakenvml library` in a checkout (not built) after `pip install .`."""
    import shutil

    package = Path(fakenvml.__file__).resolve().parents[1]
    source = tmp_path / "checkout"
    shutil.copytree(package, source / "dra_driver", ignore=shutil.ignore_patterns("*.so"))
    site = tmp_path / "site-packages" / "dra_driver" / "testing"
    site.mkdir(parents=True)
    built = site / Path(fakenvml.library_path()).name
    shutil.copy(fakenvml.library_path(), built)

    def library(pythonpath: str) -> subprocess.CompletedProcess[str]:
        # -S: no site-packages, so no editable install of this checkout either.
        return subprocess.run(
            [sys.executable, "-S", "-m", "dra_driver.testing.fakenvml", "library"],
            cwd=source,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": pythonpath},
            capture_output=True,
            text=True,
            timeout=60,
        )

    found = library(str(tmp_path / "site-packages"))
    assert (found.returncode, found.stdout.strip()) == (0, str(built)), found.stderr
    missing = library("")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "the fake NVML library is not built" in missing.stderr


def test_python_helpers() -> None:
    assert fakenvml.library_path().endswith(".so")
    assert {"small", "dgx-h100", "a100"} <= set(fakenvml.topology_names())
    with pytest.raises(fakenvml.FakeNvmlError, match="unknown topology"):
        fakenvml.topology_path("nope")
    assert fakenvml.parse_throttle_reasons("0x48") == 0x48
    assert fakenvml.parse_throttle_reasons("hw_slowdown,sw_power_cap") == 0xC
    with pytest.raises(fakenvml.FakeNvmlError, match="unknown throttle reason"):
        fakenvml.parse_throttle_reasons("lazy")
    small = fakenvml.load_topology("small")
    assert small.gpu(0).mig_devices[0].profile_id == 14
    with pytest.raises(fakenvml.FakeNvmlError, match="not 5"):
        small.gpu(5)
    env = {fakenvml.ENV_STATE_DIR: "/run/x"}
    assert fakenvml.default_fault_log("small", env) == Path("/run/x/small.faults.jsonl")
