"""The node's devices as the driver publishes them: names, attributes, capacities.

Pure data and pure functions: an NvmlSnapshot goes in, an Inventory comes out.
Names, attribute names and value types follow NVIDIA's gpu.nvidia.com driver
so ResourceClaims and DeviceClasses written for it select the same devices.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .nvml.types import MIG_ENABLE, GpuRecord, MigProfile, MigRecord, NvmlSnapshot

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# Attribute names outside the driver's own domain (KEP-4381 standard attributes).
PCI_BUS_ID_ATTR = "resource.kubernetes.io/pciBusID"
PCIE_ROOT_ATTR = "resource.kubernetes.io/pcieRoot"

# nvmlBrandType_t -> go-nvlib GetBrandAsString().
BRANDS: Mapping[int, str] = {
    0: "Unknown",
    1: "Quadro",
    2: "Tesla",
    3: "NVS",
    4: "Grid",
    5: "GeForce",
    6: "Titan",
    7: "NvidiaVApps",
    8: "NvidiaVPC",
    9: "NvidiaVCS",
    10: "NvidiaVWS",
    11: "NvidiaCloudGaming",
    12: "QuadroRTX",
    13: "NvidiaRTX",
    14: "Nvidia",
    15: "GeForceRTX",
    16: "TitanRTX",
}

# nvmlDeviceArchitecture_t -> go-nvlib GetArchitectureAsString().
ARCHITECTURES: Mapping[int, str] = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
    0xFFFFFFFF: "Unknown",
}


class DeviceType(StrEnum):
    GPU = "gpu"
    MIG = "mig"


@dataclass(frozen=True, order=True)
class Version:
    """A semantic-version attribute value (published as `version`)."""

    text: str

    def __str__(self) -> str:
        return self.text


AttributeValue = str | int | bool | Version

_SEMVER_CORE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def to_semver(raw: str) -> Version | None:
    """Normalise an NVML version string ("535.104.05", "12.4", "9.0") to strict semver.

    The API server validates version attributes as SemVer 2.0, which forbids
    leading zeros and needs three components; NVML gives neither guarantee.
    """
    m = _SEMVER_CORE.match(raw or "")
    if not m:
        return None
    parts = [int(p) if p is not None else 0 for p in m.groups()]
    return Version(f"{parts[0]}.{parts[1]}.{parts[2]}")


def cuda_version_text(cuda_driver_version: int) -> str:
    """nvmlSystemGetCudaDriverVersion's integer (12040) as "12.4", like NVIDIA's driver."""
    return f"{cuda_driver_version // 1000}.{(cuda_driver_version % 1000) // 10}"


def normalize_pci_bus_id(bus_id: str) -> str:
    """NVML's "00000000:17:00.0" as the standard attribute's "0000:17:00.0"."""
    text = bus_id.strip().lower()
    if text.startswith("0000") and len(text) > 12:
        text = text[4:]
    return text


def mig_profile_token(profile_name: str) -> str:
    """The profile part of a MIG device name: dots dropped, RFC 1123 label characters."""
    token = re.sub(r"[^a-z0-9-]", "", profile_name.lower().replace("+", "-"))
    return token.strip("-")


def gpu_device_name(minor: int) -> str:
    return f"gpu-{minor}"


def mig_capacities(engines: MigProfile | MigRecord, start: int, size: int) -> dict[str, int]:
    """A MIG device's capacities: its engines and memory, and the memory slices it covers.

    The same for a device that exists (MigRecord) and one a profile would make
    at that placement (MigProfile), so both publish and consume alike.
    """
    caps = {
        "multiprocessors": engines.multiprocessors,
        "copyEngines": engines.copy_engines,
        "decoders": engines.decoders,
        "encoders": engines.encoders,
        "jpegEngines": engines.jpeg_engines,
        "ofaEngines": engines.ofa_engines,
        "memory": engines.memory_bytes,
    }
    for i in range(start, start + size):
        caps[f"memorySlice{i}"] = 1
    return caps


def mig_device_name(parent_minor: int, profile_name: str, gi_profile_id: int, start: int) -> str:
    return f"gpu-{parent_minor}-mig-{mig_profile_token(profile_name)}-{gi_profile_id}-{start}"


@dataclass(frozen=True)
class MigPlacement:
    """Where a MIG device sits on its parent; enough to find it again after a restart."""

    gpu_instance_id: int
    compute_instance_id: int
    gi_profile_id: int
    profile: str
    start: int
    size: int


@dataclass(frozen=True)
class Device:
    """One allocatable device: a whole GPU or a MIG device."""

    name: str
    type: DeviceType
    uuid: str
    gpu_index: int
    minor: int  # the GPU's minor (the parent's, for MIG)
    pci_bus_id: str  # normalised, the parent's for MIG
    attributes: Mapping[str, AttributeValue]
    capacities: Mapping[str, int]
    parent_uuid: str | None = None
    mig: MigPlacement | None = None


@dataclass(frozen=True)
class Gpu:
    """A physical GPU with everything the publisher and preparer need about it."""

    index: int
    minor: int
    uuid: str
    name: str  # its full-GPU device name, published or not
    pci_bus_id: str
    mig_enabled: bool
    mig_pending: bool | None
    memory_bytes: int | None
    common_attributes: Mapping[str, AttributeValue]
    mig_devices: tuple[Device, ...] = ()
    mig_profiles: tuple[MigProfile, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """Everything this node can offer, in a deterministic order."""

    driver_version: str
    cuda_driver_version: str
    gpus: tuple[Gpu, ...]
    devices: tuple[Device, ...]  # the publishable ones: non-MIG GPUs and MIG devices
    problems: tuple[str, ...] = ()
    backend: str = ""
    _by_name: dict[str, Device] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({d.name: d for d in self.devices})

    def device(self, name: str) -> Device | None:
        return self._by_name.get(name)

    def gpu_of(self, device: Device) -> Gpu | None:
        for gpu in self.gpus:
            if gpu.index == device.gpu_index:
                return gpu
        return None


PcieRootResolver = Callable[[str], str | None]


def _no_pcie_root(_bus_id: str) -> str | None:
    return None


def _common_attributes(
    gpu: GpuRecord,
    snapshot: NvmlSnapshot,
    pcie_root_of: PcieRootResolver,
    problems: list[str],
) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {"productName": gpu.name}
    if gpu.brand is not None:
        attrs["brand"] = BRANDS.get(gpu.brand, "Unknown")
    if gpu.architecture is not None:
        attrs["architecture"] = ARCHITECTURES.get(gpu.architecture, "Unknown")
    if gpu.cuda_compute_capability is not None:
        major, minor = gpu.cuda_compute_capability
        cc = to_semver(f"{major}.{minor}")
        if cc is not None:
            attrs["cudaComputeCapability"] = cc
    driver = to_semver(snapshot.driver_version)
    if driver is not None:
        attrs["driverVersion"] = driver
    else:
        problems.append(f"driver version {snapshot.driver_version!r} is not a version")
    if snapshot.cuda_driver_version > 0:
        cuda = to_semver(cuda_version_text(snapshot.cuda_driver_version))
        if cuda is not None:
            attrs["cudaDriverVersion"] = cuda
    bus_id = normalize_pci_bus_id(gpu.pci_bus_id)
    if bus_id:
        attrs[PCI_BUS_ID_ATTR] = bus_id
        root = pcie_root_of(bus_id)
        if root:
            attrs[PCIE_ROOT_ATTR] = root
    return attrs


def _mig_device(gpu: GpuRecord, mig: MigRecord, common: Mapping[str, AttributeValue]) -> Device:
    attrs: dict[str, AttributeValue] = {
        "type": DeviceType.MIG.value,
        "uuid": mig.uuid,
        "parentUUID": gpu.uuid,
        "profile": mig.profile_name,
    }
    attrs.update(common)
    caps = mig_capacities(mig, mig.placement_start, mig.placement_size)
    return Device(
        name=mig_device_name(gpu.minor, mig.profile_name, mig.gi_profile_id, mig.placement_start),
        type=DeviceType.MIG,
        uuid=mig.uuid,
        gpu_index=gpu.index,
        minor=gpu.minor,
        pci_bus_id=normalize_pci_bus_id(gpu.pci_bus_id),
        attributes=attrs,
        capacities=caps,
        parent_uuid=gpu.uuid,
        mig=MigPlacement(
            gpu_instance_id=mig.gpu_instance_id,
            compute_instance_id=mig.compute_instance_id,
            gi_profile_id=mig.gi_profile_id,
            profile=mig.profile_name,
            start=mig.placement_start,
            size=mig.placement_size,
        ),
    )


def build_inventory(
    snapshot: NvmlSnapshot,
    backend: str = "",
    pcie_root_of: PcieRootResolver = _no_pcie_root,
    log_problems: bool = True,  # False for re-reads: the caller reports what changed
    dynamic_mig: bool = False,
) -> Inventory:
    """Turn one NVML snapshot into the devices this node publishes.

    A GPU in MIG mode offers its MIG devices and not itself (static MIG). With
    dynamic_mig a MIG-mode GPU without MIG devices is not stranded: its capacity
    is published as the devices prepare will create.
    Devices are ordered by PCI bus id, then name, so that a restart with the
    same hardware produces byte-identical slices.
    """
    problems = [
        f"gpu {e.gpu_index}"
        + (f" mig {e.mig_index}" if e.mig_index is not None else "")
        + f": {e.call + ': ' if e.call else ''}{e.message} (nvml rc={e.code})"
        for e in snapshot.errors
    ]
    gpus: list[Gpu] = []
    devices: list[Device] = []
    for rec in sorted(snapshot.gpus, key=lambda g: (normalize_pci_bus_id(g.pci_bus_id), g.minor)):
        common = _common_attributes(rec, snapshot, pcie_root_of, problems)
        mig_enabled = rec.mig_mode_current == MIG_ENABLE
        migs = tuple(
            sorted(
                (_mig_device(rec, m, common) for m in rec.migs),
                key=lambda d: (d.mig.start if d.mig else 0, d.name),
            )
        )
        full_name = gpu_device_name(rec.minor)
        caps: dict[str, int] = {}
        if rec.memory_total_bytes is not None:
            caps["memory"] = rec.memory_total_bytes
        full = Device(
            name=full_name,
            type=DeviceType.GPU,
            uuid=rec.uuid,
            gpu_index=rec.index,
            minor=rec.minor,
            pci_bus_id=normalize_pci_bus_id(rec.pci_bus_id),
            attributes={"type": DeviceType.GPU.value, "uuid": rec.uuid, **common},
            capacities=caps,
        )
        if mig_enabled:
            if not migs and not dynamic_mig:
                problems.append(
                    f"{full_name}: MIG is enabled but no MIG devices exist (stranded capacity)"
                )
            devices.extend(migs)
        else:
            devices.append(full)
        if rec.mig_mode_pending is not None and rec.mig_mode_pending != rec.mig_mode_current:
            problems.append(f"{full_name}: MIG mode change pending a GPU reset")
        gpus.append(
            Gpu(
                index=rec.index,
                minor=rec.minor,
                uuid=rec.uuid,
                name=full_name,
                pci_bus_id=full.pci_bus_id,
                mig_enabled=mig_enabled,
                mig_pending=None
                if rec.mig_mode_pending is None
                else rec.mig_mode_pending == MIG_ENABLE,
                memory_bytes=rec.memory_total_bytes,
                common_attributes=common,
                mig_devices=migs,
                mig_profiles=rec.mig_profiles,
            )
        )
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate device names dropped: {', '.join(dupes)}")
        devices = [d for d in devices if d.name not in dupes]
    for p in problems if log_problems else ():
        log.warning("inventory: %s", p)
    return Inventory(
        driver_version=snapshot.driver_version,
        cuda_driver_version=cuda_version_text(snapshot.cuda_driver_version)
        if snapshot.cuda_driver_version > 0
        else "",
        gpus=tuple(gpus),
        devices=tuple(devices),
        problems=tuple(problems),
        backend=backend,
    )
