"""The kit's NVML record builders: defaults that build a clean inventory, overrides by name."""

from __future__ import annotations

import pytest

from dra_driver.inventory import build_inventory
from dra_driver.nvml.types import MIG_DISABLE, MIG_ENABLE
from dra_driver.testing import records


def test_defaults_are_unique_per_gpu_and_mig_device_and_build_cleanly() -> None:
    snap = records.node_snapshot(4, mig_gpus=(0, 2))
    inv = build_inventory(snap)
    assert not inv.problems
    assert len({g.uuid for g in snap.gpus}) == len({g.pci_bus_id for g in snap.gpus}) == 4
    uuids = [m.uuid for g in snap.gpus for m in g.migs]
    assert len(uuids) == len(set(uuids)) == 6
    assert [d.name for d in inv.devices if d.parent_uuid == snap.gpus[0].uuid] == [
        "gpu-0-mig-1g10gb-19-0",
        "gpu-0-mig-1g10gb-19-1",
        "gpu-0-mig-2g20gb-14-2",
    ]
    assert [g.mig_mode_current for g in snap.gpus] == [MIG_ENABLE, MIG_DISABLE] * 2


def test_a_mig_device_follows_its_size_unless_told_otherwise() -> None:
    m = records.mig_record(4, 4, gpu=1)
    assert (m.gi_profile_id, m.profile_name, m.gpu_instance_id) == (9, "3g.40gb", 5)
    assert m.memory_bytes == 40 * records.GiB and m.placement_size == 4
    told = records.mig_record(4, 4, gi=2, index=0, uuid="MIG-x", multiprocessors=60)
    assert (told.gpu_instance_id, told.index, told.uuid, told.multiprocessors) == (
        2,
        0,
        "MIG-x",
        60,
    )


def test_gpu_fields_override_by_name_and_unknown_ones_fail() -> None:
    g = records.gpu_record(3, minor=7, bus="00000000:2A:00.0", brand=2, mig=True)
    assert (g.minor, g.pci_bus_id, g.brand, g.mig_mode_pending) == (7, "00000000:2A:00.0", 2, 1)
    assert records.gpu_record(0, mig_mode_current=None).mig_mode_current is None
    with pytest.raises(TypeError):
        records.gpu_record(0, no_such_field=1)
    with pytest.raises(ValueError):
        records.mig_record(0, no_such_field=1)


def test_h100_profiles_cover_the_mig_geometry() -> None:
    assert [(p.name, p.slice_count, len(p.placements)) for p in records.H100_PROFILES] == [
        ("1g.10gb", 1, 7),
        ("2g.20gb", 2, 3),
        ("3g.40gb", 4, 2),
        ("7g.80gb", 8, 1),
    ]
