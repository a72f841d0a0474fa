"""MIG create/destroy by the fast path and nvidia-ml-py on the fake: same answers, typed errors."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.nvml import migops, open_backend
from dra_driver.nvml.errors import (
    NvmlFunctionNotFoundError,
    NvmlInsufficientResourcesError,
    NvmlInUseError,
    NvmlNoPermissionError,
    NvmlNotSupportedError,
    is_unsupported,
)
from dra_driver.testing import fakenvml

MANAGERS = {"cffi": migops.CffiMigManager, "nvidia-ml-py": migops.PynvmlMigManager}


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fakenvml.FakeNode:
    fake = fakenvml.FakeNode("a100-dynamic", tmp_path / "a100-dynamic.faults.jsonl")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture(params=sorted(MANAGERS))
def manager(request: pytest.FixtureRequest, node: fakenvml.FakeNode) -> Iterator[migops.MigManager]:
    made = MANAGERS[request.param](fakenvml.library_path())
    yield made
    made.close()


def _gpu(node: fakenvml.FakeNode, index: int) -> str:
    return node.spec.gpu(index).uuid


def test_create_makes_a_mig_device_the_inventory_sees_and_destroy_removes_it(
    node: fakenvml.FakeNode, manager: migops.MigManager
) -> None:
    made = manager.create(_gpu(node, 0), 14, 4)  # 2g.10gb at slices 4-5
    assert (made.placement_start, made.placement_size, made.compute_instance_id) == (4, 2, 0)
    assert made.uuid.startswith("MIG-")
    backend = open_backend(fakenvml.library_path(), "cffi")
    try:
        (mig,) = backend.inventory().gpus[0].migs
        assert (mig.uuid, mig.gpu_instance_id, mig.gi_profile_id, mig.placement_start) == (
            made.uuid,
            made.gpu_instance_id,
            14,
            4,
        )
        assert manager.destroy(made.parent_uuid, made.gpu_instance_id, 0) is True
        assert backend.inventory().gpus[0].migs == ()
    finally:
        backend.close()
    assert manager.destroy(made.parent_uuid, made.gpu_instance_id, 0) is False  # already gone


def test_both_backends_create_the_same_instance(node: fakenvml.FakeNode) -> None:
    results = []
    for name in sorted(MANAGERS):
        node.reset_faults()
        m = MANAGERS[name](fakenvml.library_path())
        try:
            results.append(m.create(_gpu(node, 1), 9, 4))
            m.destroy(_gpu(node, 1), results[-1].gpu_instance_id, 0)
        finally:
            m.close()
    assert results[0] == results[1]


def test_every_failure_is_typed(node: fakenvml.FakeNode, manager: migops.MigManager) -> None:
    gpu0 = _gpu(node, 0)
    manager.create(gpu0, 9, 0)
    with pytest.raises(NvmlInsufficientResourcesError) as exc:
        manager.create(gpu0, 19, 2)  # inside the 3g.20gb
    assert exc.value.call == "nvmlDeviceCreateGpuInstanceWithPlacement"
    with pytest.raises(NvmlNotSupportedError):
        manager.create(_gpu(node, 2), 19, 0)  # MIG off
    node.faults.fail("nvmlDeviceCreateGpuInstanceWithPlacement", 4, gpu=0, count=1)
    with pytest.raises(NvmlNoPermissionError):
        manager.create(gpu0, 19, 5)
    made = manager.create(gpu0, 19, 5)
    node.faults.mig_busy(0, made.gpu_instance_id)
    with pytest.raises(NvmlInUseError) as busy:
        manager.destroy(gpu0, made.gpu_instance_id, 0)
    assert busy.value.call == "nvmlComputeInstanceDestroy"
    node.faults.mig_busy(0, made.gpu_instance_id, busy=False)
    assert manager.destroy(gpu0, made.gpu_instance_id, 0)


def test_a_failed_compute_instance_rolls_the_gpu_instance_back(
    node: fakenvml.FakeNode, manager: migops.MigManager
) -> None:
    node.faults.fail("nvmlGpuInstanceCreateComputeInstance", 23, count=1)
    with pytest.raises(NvmlInsufficientResourcesError) as exc:
        manager.create(_gpu(node, 0), 19, 0)
    assert exc.value.call == "nvmlGpuInstanceCreateComputeInstance"
    assert fakenvml.current_migs(node.spec, node.fault_log)[0] == ()
    # the GI is gone too: the placement is free again
    assert manager.create(_gpu(node, 0), 19, 0).placement_start == 0


OLD_DRIVER_C = r"""
static int dev;
int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetHandleByUUID(const char *uuid, void **h) { *h = &dev; return 0; }
"""


def test_a_driver_without_the_mig_calls_reads_as_not_supported(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the old-driver stub")
    src, lib = tmp_path / "old.c", tmp_path / "libnvidia-ml-old.so"
    src.write_text(OLD_DRIVER_C)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, timeout=60)
    manager = migops.CffiMigManager(str(lib))  # opens: each symbol is resolved on its own
    try:
        assert "nvmlDeviceCreateGpuInstanceWithPlacement" in manager.missing_symbols
        with pytest.raises(NvmlFunctionNotFoundError) as exc:
            manager.create("GPU-0ld", 19, 0)
        assert is_unsupported(exc.value.code)
        with pytest.raises(NvmlFunctionNotFoundError):
            manager.destroy("GPU-0ld", 1, 0)
    finally:
        manager.close()


def test_destroy_at_removes_a_half_made_instance_whatever_its_ids(
    node: fakenvml.FakeNode, manager: migops.MigManager
) -> None:
    gpu0 = _gpu(node, 0)
    node.faults.fail("nvmlGpuInstanceCreateComputeInstance", 23, count=1)
    node.faults.fail("nvmlGpuInstanceDestroy", 4, count=1)  # the rollback fails too
    with pytest.raises(NvmlInsufficientResourcesError, match="rolling back"):
        manager.create(gpu0, 14, 2)
    with pytest.raises(NvmlInsufficientResourcesError):  # the GI without a CI still holds 2-3
        manager.create(gpu0, 19, 2)
    assert manager.destroy_at(gpu0, 14, 2) is True
    assert manager.destroy_at(gpu0, 14, 2) is False
    whole = manager.create(gpu0, 14, 2)
    assert manager.destroy_at(gpu0, 14, 2) is True
    assert manager.destroy(gpu0, whole.gpu_instance_id, 0) is False
