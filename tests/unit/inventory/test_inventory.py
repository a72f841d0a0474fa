"""Inventory model: names, attributes and capacities as NVIDIA's driver publishes them."""

from __future__ import annotations

import dataclasses

import pytest

from dra_driver.inventory import (
    PCI_BUS_ID_ATTR,
    PCIE_ROOT_ATTR,
    DeviceType,
    Version,
    build_inventory,
    cuda_version_text,
    mig_device_name,
    mig_profile_token,
    normalize_pci_bus_id,
    to_semver,
)
from dra_driver.nvml.types import MIG_ENABLE, DeviceError, NvmlSnapshot
from dra_driver.testing.records import GiB, gpu_record, mig_record

BRAND_TESLA = 2  # NVML_BRAND_TESLA


def _snapshot(**kw: object) -> NvmlSnapshot:
    base = NvmlSnapshot(
        driver_version="535.104.05",
        cuda_driver_version=12020,
        gpus=(
            gpu_record(1, minor=5, bus="00000000:2A:00.0", brand=BRAND_TESLA),
            gpu_record(
                0,
                # Out of index order: the inventory orders them itself.
                (mig_record(4, 2, index=1, gi=2), mig_record(0, 1, index=0, gi=1)),
                minor=3,
                bus="00000000:18:00.0",
                brand=BRAND_TESLA,
            ),
        ),
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_version_normalisation_is_strict_semver() -> None:
    assert to_semver("535.104.05") == Version("535.104.5")
    assert to_semver("12.4") == Version("12.4.0")
    assert to_semver("9") == Version("9.0.0")
    assert to_semver("garbage") is None
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"


def test_pci_bus_id_matches_nvidia_format() -> None:
    assert normalize_pci_bus_id("00000000:2A:00.0") == "0000:2a:00.0"
    assert normalize_pci_bus_id("00000001:01:00.1") == "0001:01:00.1"


def test_mig_names_follow_nvidia_convention() -> None:
    assert mig_device_name(1, "2g.47gb", 14, 0) == "gpu-1-mig-2g47gb-14-0"
    assert mig_device_name(0, "1g.20gb", 15, 6) == "gpu-0-mig-1g20gb-15-6"
    assert mig_profile_token("1g.10gb+me") == "1g10gb-me"


def test_mig_gpu_publishes_its_mig_devices_not_itself() -> None:
    inv = build_inventory(_snapshot(), backend="test")
    names = [d.name for d in inv.devices]
    # Sorted by PCI bus id: the MIG GPU (bus 18) before the full GPU (bus 2a),
    # MIG devices by placement start.
    assert names == ["gpu-3-mig-1g10gb-19-0", "gpu-3-mig-2g20gb-14-4", "gpu-5"]
    assert inv.gpus[0].mig_enabled and not inv.gpus[1].mig_enabled
    assert inv.device("gpu-3") is None
    assert inv.backend == "test"


def test_full_gpu_attributes_and_capacity() -> None:
    inv = build_inventory(_snapshot(), pcie_root_of=lambda bus: "pci0000:16")
    gpu = inv.device("gpu-5")
    assert gpu is not None and gpu.type is DeviceType.GPU
    assert gpu.attributes == {
        "type": "gpu",
        "uuid": "GPU-00000001-1111-2222-3333-444444444444",
        "productName": "NVIDIA H100 80GB HBM3",
        "brand": "Tesla",
        "architecture": "Hopper",
        "cudaComputeCapability": Version("9.0.0"),
        "driverVersion": Version("535.104.5"),
        "cudaDriverVersion": Version("12.2.0"),
        PCI_BUS_ID_ATTR: "0000:2a:00.0",
        PCIE_ROOT_ATTR: "pci0000:16",
    }
    assert gpu.capacities == {"memory": 80 * GiB}


def test_mig_attributes_and_capacities() -> None:
    inv = build_inventory(_snapshot())
    mig = inv.device("gpu-3-mig-2g20gb-14-4")
    assert mig is not None and mig.type is DeviceType.MIG
    assert mig.attributes["type"] == "mig"
    assert mig.attributes["profile"] == "2g.20gb"
    assert mig.attributes["parentUUID"] == "GPU-00000000-1111-2222-3333-444444444444"
    assert mig.parent_uuid == mig.attributes["parentUUID"]
    assert mig.capacities["multiprocessors"] == 32
    assert mig.capacities["memory"] == 20 * GiB
    assert mig.capacities["memorySlice4"] == 1 and mig.capacities["memorySlice5"] == 1
    assert "memorySlice3" not in mig.capacities
    assert mig.mig is not None and (mig.mig.gpu_instance_id, mig.mig.start) == (2, 4)
    assert PCIE_ROOT_ATTR not in mig.attributes  # no resolver given: attribute omitted


def test_unsupported_fields_degrade_the_attribute_not_the_device() -> None:
    snap = _snapshot()
    odd = dataclasses.replace(
        snap.gpus[0], brand=None, architecture=None, cuda_compute_capability=None
    )
    inv = build_inventory(dataclasses.replace(snap, gpus=(odd,), driver_version="weird"))
    dev = inv.device("gpu-5")
    assert dev is not None
    for missing in ("brand", "architecture", "cudaComputeCapability", "driverVersion"):
        assert missing not in dev.attributes
    assert any("driver version" in p for p in inv.problems)


def test_device_errors_become_problems_and_other_gpus_survive() -> None:
    snap = _snapshot(errors=(DeviceError(gpu_index=2, code=15, message="GPU is lost"),))
    inv = build_inventory(snap)
    assert len(inv.devices) == 3
    assert inv.problems == ("gpu 2: GPU is lost (nvml rc=15)",)


def test_mig_enabled_without_devices_is_reported() -> None:
    snap = _snapshot()
    empty = dataclasses.replace(snap.gpus[1], migs=())
    inv = build_inventory(dataclasses.replace(snap, gpus=(snap.gpus[0], empty)))
    assert [d.name for d in inv.devices] == ["gpu-5"]
    assert any("stranded" in p for p in inv.problems)
    # Under dynamic MIG the empty GPU's capacity is what prepare carves: not a problem.
    dyn = build_inventory(dataclasses.replace(snap, gpus=(snap.gpus[0], empty)), dynamic_mig=True)
    assert [d.name for d in dyn.devices] == ["gpu-5"]
    assert not any("stranded" in p for p in dyn.problems)


def test_pending_mig_mode_change_is_reported() -> None:
    snap = _snapshot()
    pending = dataclasses.replace(snap.gpus[0], mig_mode_pending=MIG_ENABLE)
    inv = build_inventory(dataclasses.replace(snap, gpus=(pending,)))
    assert inv.gpus[0].mig_pending is True
    assert any("pending" in p for p in inv.problems)


def test_duplicate_names_are_dropped_loudly() -> None:
    snap = _snapshot()
    twin = dataclasses.replace(
        snap.gpus[0], index=7, uuid="GPU-twin", pci_bus_id="00000000:99:00.0"
    )
    inv = build_inventory(dataclasses.replace(snap, gpus=(snap.gpus[0], twin)))
    assert inv.devices == ()
    assert any("duplicate" in p for p in inv.problems)


@pytest.mark.parametrize("order", [0, 1])
def test_order_is_deterministic(order: int) -> None:
    snap = _snapshot()
    gpus = snap.gpus if order == 0 else tuple(reversed(snap.gpus))
    inv = build_inventory(dataclasses.replace(snap, gpus=gpus))
    assert [d.name for d in inv.devices] == [
        "gpu-3-mig-1g10gb-19-0",
        "gpu-3-mig-2g20gb-14-4",
        "gpu-5",
    ]
