"""record_factory: the fast constructor must be indistinguishable from the class's own."""

from __future__ import annotations

import dataclasses

import pytest

from dra_driver.nvml._common import record_factory
from dra_driver.nvml.types import DeviceError, GpuRecord, HealthSample, NvmlSnapshot, Reading


def _gpu_values() -> tuple[object, ...]:
    return (0, 3, "GPU-x", "H100", 2, 9, (9, 0), 80 << 30, "00000000:17:00.0", 1, 1, (), ())


def test_same_as_the_dataclass_constructor() -> None:
    fast = record_factory(GpuRecord)(*_gpu_values())
    slow = GpuRecord(*_gpu_values())  # type: ignore[arg-type]
    assert type(fast) is GpuRecord
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.replace(fast, minor=4) == dataclasses.replace(slow, minor=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.minor = 5  # type: ignore[misc]


def test_every_record_class_it_serves_round_trips() -> None:
    r = Reading(1)
    sample = (0, "GPU-x", 0, r, r, r, r, r, r, r, r, r, r, r, r)
    assert record_factory(HealthSample)(*sample) == HealthSample(*sample)
    snap = ("550.54.15", 12040, (), (DeviceError(0, 15, "lost"),))
    assert record_factory(NvmlSnapshot)(*snap) == NvmlSnapshot(*snap)


def test_refuses_classes_whose_init_does_more() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithPostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class WithNonInitField:
        a: int
        b: int = dataclasses.field(default=0, init=False)

    for cls in (WithPostInit, WithNonInitField, int):
        with pytest.raises(TypeError):
            record_factory(cls)
