"""NVML record builders: GPUs, MIG devices, profiles and snapshots for tests without NVML.

One place that knows how to make a plausible H100-like GpuRecord / MigRecord,
so a test states only the fields it is about; every other field gets a
default that is valid and unique per GPU / MIG device. Any field can be given
by name to override the default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from ..nvml.types import MIG_DISABLE, MIG_ENABLE, GpuRecord, MigProfile, MigRecord, NvmlSnapshot

GiB = 1024**3
H100_NAME = "NVIDIA H100 80GB HBM3"
BRAND_NVIDIA = 14  # NVML_BRAND_NVIDIA
ARCH_HOPPER = 9  # NVML_DEVICE_ARCH_HOPPER
DRIVER_VERSION = "550.54.15"
CUDA_DRIVER_VERSION = 12040

# H100 80GB GPU-instance profiles by memory slices: (profile id, name).
H100_BY_SIZE: dict[int, tuple[int, str]] = {
    1: (19, "1g.10gb"),
    2: (14, "2g.20gb"),
    4: (9, "3g.40gb"),
    8: (0, "7g.80gb"),
}


def mig_profile(
    profile_id: int, name: str, size: int, placements: Iterable[int], **fields: Any
) -> MigProfile:
    """A GPU-instance profile of `size` memory slices offered at `placements`."""
    profile = MigProfile(
        profile_id=profile_id,
        name=name,
        slice_count=size,
        memory_bytes=size * 10 * GiB,
        multiprocessors=16 * size,
        copy_engines=size,
        decoders=size,
        encoders=0,
        jpeg_engines=size,
        ofa_engines=1 if size == 8 else 0,
        placements=tuple((p, size) for p in placements),
    )
    return profile._replace(**fields) if fields else profile


H100_PROFILES = (
    mig_profile(19, "1g.10gb", 1, range(7)),
    mig_profile(14, "2g.20gb", 2, (0, 2, 4)),
    mig_profile(9, "3g.40gb", 4, (0, 4)),
    mig_profile(0, "7g.80gb", 8, (0,)),
)


def mig_record(
    start: int,
    size: int = 1,
    *,
    gpu: int = 0,
    index: int | None = None,
    gi: int | None = None,
    ci: int = 0,
    uuid: str | None = None,
    **fields: Any,
) -> MigRecord:
    """A MIG device of `size` memory slices at placement `start` on GPU `gpu`.

    Defaults: the H100 profile of that size, GPU instance id start + 1,
    enumeration index start, engines and memory in proportion to the size.
    """
    profile_id, name = H100_BY_SIZE.get(size, (100 + size, f"{size}g.{10 * size}gb"))
    record = MigRecord(
        index=start if index is None else index,
        uuid=uuid or f"MIG-{gpu:04d}{start:04d}-aaaa-bbbb-cccc-dddddddddddd",
        gpu_instance_id=start + 1 if gi is None else gi,
        compute_instance_id=ci,
        gi_profile_id=profile_id,
        profile_name=name,
        placement_start=start,
        placement_size=size,
        multiprocessors=16 * size,
        copy_engines=size,
        decoders=size,
        encoders=0,
        jpeg_engines=size,
        ofa_engines=0,
        memory_bytes=size * 10 * GiB,
    )
    return record._replace(**fields) if fields else record


def migs(gpu: int, layout: Iterable[tuple[int, int]]) -> tuple[MigRecord, ...]:
    """MIG devices of GPU `gpu` from (start, size) pairs."""
    return tuple(mig_record(start, size, gpu=gpu) for start, size in layout)


def gpu_record(
    index: int,
    mig_devices: Iterable[MigRecord] = (),
    *,
    mig: bool | None = None,
    minor: int | None = None,
    uuid: str | None = None,
    bus: str | None = None,
    **fields: Any,
) -> GpuRecord:
    """An H100 80GB at NVML index `index`; in MIG mode when it has MIG devices (or mig=True).

    Defaults: minor = index, a UUID and PCI bus id unique per index, MIG
    mode current = pending. mig_mode_current=None (as a field) makes a GPU
    that is not MIG capable.
    """
    devices = tuple(mig_devices)
    mode = MIG_ENABLE if (bool(devices) if mig is None else mig) else MIG_DISABLE
    record = GpuRecord(
        index=index,
        minor=index if minor is None else minor,
        uuid=uuid or f"GPU-{index:08d}-1111-2222-3333-444444444444",
        name=H100_NAME,
        brand=BRAND_NVIDIA,
        architecture=ARCH_HOPPER,
        cuda_compute_capability=(9, 0),
        memory_total_bytes=80 * GiB,
        pci_bus_id=bus or f"00000000:{0x18 + index:02X}:00.0",
        mig_mode_current=mode,
        mig_mode_pending=mode,
        migs=devices,
    )
    return replace(record, **fields) if fields else record


def snapshot(
    *gpus: GpuRecord,
    driver_version: str = DRIVER_VERSION,
    cuda_driver_version: int = CUDA_DRIVER_VERSION,
    **fields: Any,
) -> NvmlSnapshot:
    """A node's snapshot of these GPUs."""
    return NvmlSnapshot(driver_version, cuda_driver_version, tuple(gpus), **fields)


def node_snapshot(
    gpus: int = 2,
    mig_gpus: Iterable[int] = (),
    layout: Iterable[tuple[int, int]] = ((0, 1), (1, 1), (2, 2)),
    *,
    profiles: tuple[MigProfile, ...] = (),
) -> NvmlSnapshot:
    """`gpus` H100s; those listed in mig_gpus in MIG mode with the (start, size) layout."""
    mig = set(mig_gpus)
    shape = tuple(layout)
    return snapshot(
        *(
            gpu_record(i, migs(i, shape) if i in mig else (), mig_profiles=profiles)
            for i in range(gpus)
        )
    )
