"""Plain records that every NVML backend returns, and the backend interface.

Both backends (the cffi fast path and nvidia-ml-py) fill exactly these
records, so the rest of the driver never knows which one served it and tests
can compare the two field by field. Enumerations stay as NVML's integers
here; turning them into published strings is the inventory's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .errors import ERROR_NOT_SUPPORTED, SUCCESS

# nvmlEventType* bits (nvml.h) the health monitor listens for.
EVENT_SINGLE_BIT_ECC = 0x0000000000000001
EVENT_DOUBLE_BIT_ECC = 0x0000000000000002
EVENT_XID_CRITICAL = 0x0000000000000008
EVENT_GPU_UNAVAILABLE = 0x0000000000004000
EVENT_GPU_RECOVERY_ACTION = 0x0000000000008000
HEALTH_EVENT_MASK = (
    EVENT_XID_CRITICAL | EVENT_DOUBLE_BIT_ECC | EVENT_GPU_UNAVAILABLE | EVENT_GPU_RECOVERY_ACTION
)

# GI/CI ids NVML reports for an event that concerns the whole GPU.
INSTANCE_ID_ALL = 0xFFFFFFFF

# nvmlDeviceGetMigMode values.
MIG_DISABLE = 0
MIG_ENABLE = 1


class MigProfile(NamedTuple):
    """One GPU-instance profile a MIG-capable GPU offers (for partitionable devices).

    MigProfile and MigRecord are NamedTuples, not frozen dataclasses like the
    other records: an inventory builds one per MIG device and profile (over 60
    on an 8-GPU node), and a tuple is built several times faster than a frozen
    dataclass. They stay immutable and hashable and compare field by field;
    _replace() stands in for dataclasses.replace().
    """

    profile_id: int  # GI profile id (nvmlGpuInstanceProfileInfo_v2.id)
    name: str  # e.g. "1g.10gb", "1g.10gb+me"
    slice_count: int
    memory_bytes: int  # memorySizeMB * MiB
    multiprocessors: int
    copy_engines: int
    decoders: int
    encoders: int
    jpeg_engines: int
    ofa_engines: int
    # Possible placements as (start, size), from nvmlDeviceGetGpuInstancePossiblePlacements_v2.
    placements: tuple[tuple[int, int], ...] = ()


class MigRecord(NamedTuple):
    """One existing MIG device (GPU instance + compute instance) of a parent GPU.

    A NamedTuple, as MigProfile (which says why).
    """

    # Position for nvmlDeviceGetMigDeviceHandleByIndex. The field hides tuple.index().
    index: int  # type: ignore[assignment]
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    gi_profile_id: int
    profile_name: str  # GI profile name, e.g. "1g.10gb"
    placement_start: int
    placement_size: int
    multiprocessors: int  # nvmlDeviceGetAttributes_v2 figures
    copy_engines: int
    decoders: int
    encoders: int
    jpeg_engines: int
    ofa_engines: int
    memory_bytes: int  # attributes.memorySizeMB * MiB


@dataclass(frozen=True)
class GpuRecord:
    """One physical GPU. Optional fields are None where NVML says NOT_SUPPORTED."""

    index: int
    minor: int
    uuid: str
    name: str
    brand: int | None  # nvmlBrandType_t
    architecture: int | None  # nvmlDeviceArchitecture_t
    cuda_compute_capability: tuple[int, int] | None
    memory_total_bytes: int | None
    pci_bus_id: str  # nvmlPciInfo_t.busId, e.g. "00000000:17:00.0"
    mig_mode_current: int | None  # MIG_ENABLE / MIG_DISABLE, None = not MIG capable
    mig_mode_pending: int | None
    migs: tuple[MigRecord, ...] = ()
    mig_profiles: tuple[MigProfile, ...] = ()


@dataclass(frozen=True)
class DeviceError:
    """A device (or one MIG device of it) that could not be read; the rest still is."""

    gpu_index: int
    code: int
    message: str
    call: str = ""
    mig_index: int | None = None


@dataclass(frozen=True)
class NvmlSnapshot:
    """A complete inventory of one node, as read in one pass."""

    driver_version: str  # e.g. "550.54.15"
    cuda_driver_version: int  # nvmlSystemGetCudaDriverVersion_v2, e.g. 12040
    gpus: tuple[GpuRecord, ...]
    errors: tuple[DeviceError, ...] = ()


class Reading(NamedTuple):
    """One sampled value with the NVML return code it came with.

    A NamedTuple (see MigProfile for why): a health sample holds eleven.
    """

    value: int
    rc: int = SUCCESS

    @property
    def ok(self) -> bool:
        return self.rc == SUCCESS


# A reading the driver cannot make (the default of fields older records lack).
_NOT_SUPPORTED = Reading(0, ERROR_NOT_SUPPORTED)


@dataclass(frozen=True)
class HealthSample:
    """Degradation signals of one GPU at one instant."""

    gpu_index: int
    uuid: str
    rc: int  # handle-level status: SUCCESS, or e.g. GPU_IS_LOST for the whole device
    clocks_event_reasons: Reading
    temperature_c: Reading
    ecc_corrected_volatile: Reading
    ecc_uncorrected_volatile: Reading
    retired_pages_pending: Reading  # 1 when pages are pending retirement
    remapped_rows_corrected: Reading
    remapped_rows_uncorrected: Reading
    remapped_rows_pending: Reading
    remapped_rows_failure: Reading
    pcie_link_width_current: Reading
    pcie_link_width_max: Reading
    # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (nvmlDeviceGpuRecoveryAction_t), drivers 565+;
    # NOT_SUPPORTED where the driver does not know the field.
    recovery_action: Reading = _NOT_SUPPORTED


@dataclass(frozen=True)
class EventRegistration:
    """What the event set could be registered for on one GPU."""

    gpu_index: int
    uuid: str
    registered_mask: int
    rc: int = SUCCESS  # non-zero: this GPU is unmonitored (and why)


@dataclass(frozen=True)
class NvmlEvent:
    """One event out of nvmlEventSetWait."""

    gpu_index: int
    uuid: str
    event_type: int
    event_data: int  # the XID for XID events
    gpu_instance_id: int = INSTANCE_ID_ALL
    compute_instance_id: int = INSTANCE_ID_ALL


class NvmlBackend(Protocol):
    """The one interface to NVML. All calls block; callers run them off the event loop."""

    name: str  # "cffi" or "nvidia-ml-py"
    info: BackendInfo  # how it was loaded: library path, fallback reason, missing symbols

    def inventory(self) -> NvmlSnapshot:
        """Read every GPU and MIG device. Per-device failures land in errors."""
        ...

    def health_sample(self) -> list[HealthSample]:
        """Sample degradation signals of every GPU seen by the last inventory."""
        ...

    def health_sample_gpu(self, index: int) -> HealthSample:
        """Sample one GPU (by NVML index) without holding up calls on other GPUs.

        Safe to call for different GPUs from different threads at once: a
        call that hangs on one GPU blocks only its own thread.
        """
        ...

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        """Create the event set (once) and register every GPU for mask & supported."""
        ...

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        """Block (GIL released) for the next event; None on timeout."""
        ...

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        """nvmlDeviceSetComputeMode on one GPU (claim configuration)."""
        ...

    def close(self, timeout: float | None = None) -> bool:
        """Free the event set and shut NVML down. Idempotent.

        Waits at most timeout seconds (None: as long as it takes) for calls
        still inside NVML; when one does not return in time, NVML is left
        initialised (never shut down under a live call) and this returns False.
        """
        ...


@dataclass
class BackendInfo:
    """How a backend was loaded, for logs and `dra-driver inventory`."""

    name: str
    library: str
    fallback_reason: str = ""
    missing_symbols: list[str] = field(default_factory=list)
