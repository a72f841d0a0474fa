"""NvmlBackend on nvidia-ml-py (pynvml): the fallback and the reference.

It makes the same NVML calls, in the same order, under the same rules
(_common) as the cffi fast path, one Python-to-C crossing per NVML call, so
the two can be compared record for record and the fast path timed against it.

pynvml keeps one library per process in its module global nvmlLib. To load a
given path this backend installs ctypes.CDLL(path) there before nvmlInit; two
backends open at once must therefore use the same path.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from ._common import (
    CALL_ARCHITECTURE,
    CALL_ATTRIBUTES,
    CALL_BRAND,
    CALL_COMPUTE_CAPABILITY,
    CALL_COMPUTE_INSTANCE_ID,
    CALL_COUNT,
    CALL_EVENT_SET_CREATE,
    CALL_EVENT_WAIT,
    CALL_GPU_INSTANCE_BY_ID,
    CALL_GPU_INSTANCE_ID,
    CALL_GPU_INSTANCE_INFO,
    CALL_HANDLE_BY_INDEX,
    CALL_HANDLE_BY_UUID,
    CALL_INIT,
    CALL_MAX_MIG_COUNT,
    CALL_MEMORY,
    CALL_MIG_HANDLE,
    CALL_MIG_MODE,
    CALL_MINOR,
    CALL_NAME,
    CALL_PCI,
    CALL_PLACEMENTS,
    CALL_PROFILE_INFO,
    CALL_REGISTER_EVENTS,
    CALL_SET_COMPUTE_MODE,
    CALL_SUPPORTED_EVENTS,
    CALL_UUID,
    DEFAULT_LIBRARY,
    EMPTY_MIG_SLOT_CODES,
    GI_PROFILE_INDEX_COUNT,
    GPU_FATAL_CODES,
    MiB,
    ReinitNeeded,
    decode,
    fallback_message,
    profile_by_id,
    profile_name,
    sample_rc,
    unknown_profile_error,
)
from .errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_IN_USE,
    ERROR_INVALID_ARGUMENT,
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
    ERROR_TIMEOUT,
    ERROR_UNINITIALIZED,
    SUCCESS,
    NvmlError,
    error_for,
    is_unsupported,
)
from .types import (
    HEALTH_EVENT_MASK,
    MIG_ENABLE,
    BackendInfo,
    DeviceError,
    EventRegistration,
    GpuRecord,
    HealthSample,
    MigProfile,
    MigRecord,
    NvmlEvent,
    NvmlSnapshot,
    Reading,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_PLACEMENTS = 16  # same bound as the fast path; a GPU has at most 8 slices
_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU
_ECC_CORRECTED = 0  # NVML_MEMORY_ERROR_TYPE_CORRECTED
_ECC_UNCORRECTED = 1  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED
_ECC_VOLATILE = 0  # NVML_VOLATILE_ECC
_FI_RECOVERY_ACTION = 230  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (drivers 565+)


class _Library:
    """Which library pynvml's process-wide nvmlLib holds, and how many backends use it."""

    lock = threading.Lock()
    path: str | None = None
    users = 0

    @classmethod
    def acquire(cls, path: str) -> None:
        with cls.lock:
            if cls.users and cls.path != path:
                raise NvmlError(
                    ERROR_IN_USE,
                    f"nvidia-ml-py already serves {cls.path} in this process; cannot load {path}",
                    "nvmlInit",
                )
            if cls.path != path or pynvml.nvmlLib is None:
                try:
                    handle = ctypes.CDLL(path)
                except OSError as e:
                    raise error_for(
                        ERROR_LIBRARY_NOT_FOUND, f"cannot load {path}: {e}", "dlopen"
                    ) from e
                with pynvml.libLoadLock:
                    pynvml.nvmlLib = handle
                    # Function pointers resolved from a previous library are stale.
                    pynvml._nvmlGetFunctionPointer_cache.clear()
                cls.path = path
            cls.users += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users = max(0, cls.users - 1)


class _GpuStop(Exception):
    """Internal: reading this GPU ends here (required field failed, or GPU lost)."""

    def __init__(self, call: str, rc: int) -> None:
        super().__init__(call, rc)
        self.call = call
        self.rc = rc


def _address(handle: Any) -> int:
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


class PynvmlBackend:
    """NvmlBackend over nvidia-ml-py, one ctypes call per NVML call."""

    name = "nvidia-ml-py"

    def __init__(self, library: str | None = None, fallback_reason: str = "") -> None:
        path = library or DEFAULT_LIBRARY
        _Library.acquire(path)
        self._messages: dict[int, str] = {}
        self.nvml_calls = 0
        try:
            rc, _ = self._try(pynvml.nvmlInitWithFlags, 0)
            if rc == ERROR_FUNCTION_NOT_FOUND:
                rc, _ = self._try(lambda: pynvml._nvmlCheckReturn(_symbol(CALL_INIT)()))
            if rc != SUCCESS:
                raise error_for(rc, self._message(rc), CALL_INIT)
        except BaseException:
            _Library.release()
            raise
        self.info = BackendInfo(
            name=self.name, library=path, fallback_reason=fallback_reason, missing_symbols=[]
        )
        self._lock = threading.Lock()
        self._closed = False
        self._snapshot: NvmlSnapshot | None = None
        self._handles: dict[int, Any] = {}
        self._index_by_address: dict[int, int] = {}
        self._uuids: dict[int, str] = {}
        self._event_set: Any = None
        self._waits = 0  # event waits in flight; close() frees the set only after them
        self._idle = threading.Condition(self._lock)
        self.last_inventory_nvml_calls = 0

    # -- helpers ---------------------------------------------------------

    def _try(self, fn: Callable[..., T], *args: Any) -> tuple[int, T | None]:
        """Call one pynvml wrapper; (rc, value) instead of an exception."""
        self.nvml_calls += 1
        try:
            return SUCCESS, fn(*args)
        except pynvml.NVMLError as e:
            return int(e.value), None

    def _message(self, rc: int) -> str:
        text = self._messages.get(rc)
        if text is None:
            try:
                text = str(pynvml.nvmlErrorString(rc))
            except pynvml.NVMLError:
                text = fallback_message(rc)
            self._messages[rc] = text
        return text

    def _check_open(self) -> None:
        if self._closed:
            raise error_for(ERROR_UNINITIALIZED, "backend is closed", self.name)

    # -- inventory -------------------------------------------------------

    def inventory(self) -> NvmlSnapshot:
        self._check_open()
        with self._lock:
            calls = self.nvml_calls
            try:
                snapshot = self._read()
            except ReinitNeeded:
                log.warning("NVML answered UNINITIALIZED (driver reload?): re-initialising once")
                rc, _ = self._try(pynvml.nvmlInitWithFlags, 0)
                if rc != SUCCESS:
                    raise error_for(rc, self._message(rc), CALL_INIT) from None
                try:
                    snapshot = self._read()
                except ReinitNeeded:
                    raise error_for(
                        ERROR_UNINITIALIZED, self._message(ERROR_UNINITIALIZED), self.name
                    ) from None
            self._snapshot = snapshot
            self._uuids = {g.index: g.uuid for g in snapshot.gpus}
            self.last_inventory_nvml_calls = self.nvml_calls - calls
            return snapshot

    def _read(self) -> NvmlSnapshot:
        rc, count = self._try(pynvml.nvmlDeviceGetCount)
        if rc == ERROR_UNINITIALIZED:
            raise ReinitNeeded
        if rc != SUCCESS or count is None:
            raise error_for(rc, self._message(rc), CALL_COUNT)
        rc, driver = self._try(pynvml.nvmlSystemGetDriverVersion)
        if rc != SUCCESS:
            log.warning("nvmlSystemGetDriverVersion: %s (rc=%d)", self._message(rc), rc)
        crc, cuda = self._try(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        if crc == ERROR_FUNCTION_NOT_FOUND:
            crc, cuda = self._try(pynvml.nvmlSystemGetCudaDriverVersion)
        self._handles = {}
        gpus: list[GpuRecord] = []
        errors: list[DeviceError] = []
        for i in range(count):
            gpu_errors: list[DeviceError] = []
            try:
                gpus.append(self._read_gpu(i, gpu_errors))
            except _GpuStop as stop:
                if stop.rc == ERROR_UNINITIALIZED:
                    raise ReinitNeeded from None
                gpu_errors = [DeviceError(i, stop.rc, self._message(stop.rc), stop.call)]
            errors.extend(gpu_errors)
        self._index_by_address = {_address(h): i for i, h in self._handles.items()}
        return NvmlSnapshot(
            driver_version=_text(driver) if rc == SUCCESS else "",
            cuda_driver_version=int(cuda or 0) if crc == SUCCESS else 0,
            gpus=tuple(gpus),
            errors=tuple(errors),
        )

    def _required(self, call: str, fn: Callable[..., T], *args: Any) -> T:
        rc, value = self._try(fn, *args)
        if rc != SUCCESS:
            raise _GpuStop(call, rc)
        return value  # type: ignore[return-value]

    def _optional(
        self, i: int, errors: list[DeviceError], call: str, fn: Callable[..., T], *args: Any
    ) -> T | None:
        rc, value = self._try(fn, *args)
        if rc in GPU_FATAL_CODES:
            raise _GpuStop(call, rc)
        if rc == SUCCESS:
            return value
        if not is_unsupported(rc):
            errors.append(DeviceError(i, rc, self._message(rc), call))
        return None

    def _read_gpu(self, i: int, errors: list[DeviceError]) -> GpuRecord:
        h = self._required(CALL_HANDLE_BY_INDEX, pynvml.nvmlDeviceGetHandleByIndex, i)
        self._handles[i] = h
        minor = self._required(CALL_MINOR, pynvml.nvmlDeviceGetMinorNumber, h)
        uuid = self._required(CALL_UUID, pynvml.nvmlDeviceGetUUID, h)
        name = self._optional(i, errors, CALL_NAME, pynvml.nvmlDeviceGetName, h)
        brand = self._optional(i, errors, CALL_BRAND, pynvml.nvmlDeviceGetBrand, h)
        arch = self._optional(i, errors, CALL_ARCHITECTURE, pynvml.nvmlDeviceGetArchitecture, h)
        cc = self._optional(
            i, errors, CALL_COMPUTE_CAPABILITY, pynvml.nvmlDeviceGetCudaComputeCapability, h
        )
        memory = self._optional(i, errors, CALL_MEMORY, pynvml.nvmlDeviceGetMemoryInfo, h)
        pci = self._optional(i, errors, CALL_PCI, pynvml.nvmlDeviceGetPciInfo_v3, h)
        mode = self._optional(i, errors, CALL_MIG_MODE, pynvml.nvmlDeviceGetMigMode, h)
        profiles: tuple[MigProfile, ...] = ()
        migs: tuple[MigRecord, ...] = ()
        if mode is not None:
            profiles = self._profiles(h)
            if mode[0] == MIG_ENABLE:
                migs = self._migs(i, h, profiles, errors)
        return GpuRecord(
            index=i,
            minor=int(minor),
            uuid=_text(uuid),
            name=_text(name) if name is not None else "",
            brand=int(brand) if brand is not None else None,
            architecture=int(arch) if arch is not None else None,
            cuda_compute_capability=(int(cc[0]), int(cc[1])) if cc is not None else None,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            pci_bus_id=_text(pci.busId) if pci is not None else "",
            mig_mode_current=int(mode[0]) if mode is not None else None,
            mig_mode_pending=int(mode[1]) if mode is not None else None,
            migs=migs,
            mig_profiles=profiles,
        )

    def _profiles(self, h: Any) -> tuple[MigProfile, ...]:
        out = []
        for index in range(GI_PROFILE_INDEX_COUNT):
            rc, info = self._try(pynvml.nvmlDeviceGetGpuInstanceProfileInfo, h, index, 2)
            if rc in GPU_FATAL_CODES:
                raise _GpuStop(CALL_PROFILE_INFO, rc)
            if rc != SUCCESS or info is None:
                continue  # this GPU does not offer profile index `index`
            array = (pynvml.c_nvmlGpuInstancePlacement_t * _MAX_PLACEMENTS)()
            count = ctypes.c_uint(_MAX_PLACEMENTS)
            prc, _ = self._try(
                pynvml.nvmlDeviceGetGpuInstancePossiblePlacements,
                h,
                info.id,
                array,
                ctypes.byref(count),
            )
            if prc in GPU_FATAL_CODES:
                raise _GpuStop(CALL_PLACEMENTS, prc)
            placements: tuple[tuple[int, int], ...] = ()
            if prc == SUCCESS:
                n = min(count.value, _MAX_PLACEMENTS)
                placements = tuple((int(array[k].start), int(array[k].size)) for k in range(n))
            out.append(
                MigProfile(
                    profile_id=int(info.id),
                    name=profile_name(_text(info.name)),
                    slice_count=int(info.sliceCount),
                    memory_bytes=int(info.memorySizeMB) * MiB,
                    multiprocessors=int(info.multiprocessorCount),
                    copy_engines=int(info.copyEngineCount),
                    decoders=int(info.decoderCount),
                    encoders=int(info.encoderCount),
                    jpeg_engines=int(info.jpegCount),
                    ofa_engines=int(info.ofaCount),
                    placements=placements,
                )
            )
        return tuple(out)

    def _migs(
        self, i: int, h: Any, profiles: tuple[MigProfile, ...], errors: list[DeviceError]
    ) -> tuple[MigRecord, ...]:
        rc, slots = self._try(pynvml.nvmlDeviceGetMaxMigDeviceCount, h)
        if rc in GPU_FATAL_CODES:
            raise _GpuStop(CALL_MAX_MIG_COUNT, rc)
        if rc != SUCCESS or slots is None:
            if not is_unsupported(rc):
                errors.append(DeviceError(i, rc, self._message(rc), CALL_MAX_MIG_COUNT))
            return ()
        out = []
        for slot in range(int(slots)):
            rc, mig = self._try(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, h, slot)
            if rc in EMPTY_MIG_SLOT_CODES:
                continue
            try:
                if rc != SUCCESS:
                    raise _GpuStop(CALL_MIG_HANDLE, rc)
                uuid, gi_id, ci_id, info, attrs = self._mig(h, mig)
            except _GpuStop as stop:
                if stop.rc in GPU_FATAL_CODES:
                    raise
                errors.append(
                    DeviceError(i, stop.rc, self._message(stop.rc), stop.call, mig_index=slot)
                )
                continue
            profile = profile_by_id(profiles, int(info.profileId))
            if profile is None:
                errors.append(unknown_profile_error(i, slot, int(info.profileId)))
                continue
            out.append(
                MigRecord(
                    index=slot,
                    uuid=uuid,
                    gpu_instance_id=gi_id,
                    compute_instance_id=ci_id,
                    gi_profile_id=int(info.profileId),
                    profile_name=profile.name,
                    placement_start=int(info.placement.start),
                    placement_size=int(info.placement.size),
                    multiprocessors=int(attrs.multiprocessorCount),
                    copy_engines=int(attrs.sharedCopyEngineCount),
                    decoders=int(attrs.sharedDecoderCount),
                    encoders=int(attrs.sharedEncoderCount),
                    jpeg_engines=int(attrs.sharedJpegCount),
                    ofa_engines=int(attrs.sharedOfaCount),
                    memory_bytes=int(attrs.memorySizeMB) * MiB,
                )
            )
        return tuple(out)

    def _mig(self, parent: Any, mig: Any) -> tuple[str, int, int, Any, Any]:
        """One MIG device's identity, GPU-instance info and attributes, in the C order."""
        uuid = self._required(CALL_UUID, pynvml.nvmlDeviceGetUUID, mig)
        gi_id = self._required(CALL_GPU_INSTANCE_ID, pynvml.nvmlDeviceGetGpuInstanceId, mig)
        ci_id = self._required(CALL_COMPUTE_INSTANCE_ID, pynvml.nvmlDeviceGetComputeInstanceId, mig)
        gi = self._required(
            CALL_GPU_INSTANCE_BY_ID, pynvml.nvmlDeviceGetGpuInstanceById, parent, gi_id
        )
        info = self._required(CALL_GPU_INSTANCE_INFO, pynvml.nvmlGpuInstanceGetInfo, gi)
        attrs = self._required(CALL_ATTRIBUTES, pynvml.nvmlDeviceGetAttributes_v2, mig)
        return _text(uuid), int(gi_id), int(ci_id), info, attrs

    # -- health ----------------------------------------------------------

    def _known_gpus(self) -> NvmlSnapshot:
        snapshot = self._snapshot
        return snapshot if snapshot is not None else self.inventory()

    def _reading(self, fn: Callable[..., Any], *args: Any) -> Reading:
        rc, value = self._try(fn, *args)
        return Reading(int(value) if rc == SUCCESS and value is not None else 0, rc)

    def health_sample(self) -> list[HealthSample]:
        self._check_open()
        snapshot = self._known_gpus()
        return [self._sample(gpu.index, gpu.uuid) for gpu in snapshot.gpus]

    def health_sample_gpu(self, index: int) -> HealthSample:
        self._check_open()
        gpu = next((g for g in self._known_gpus().gpus if g.index == index), None)
        if gpu is None:
            raise error_for(ERROR_INVALID_ARGUMENT, f"no GPU with NVML index {index}", self.name)
        return self._sample(gpu.index, gpu.uuid)

    def _recovery_action(self, h: Any) -> Reading:
        """The field as the fast path reads it: an unknown field id means "not supported"."""
        rc, values = self._try(pynvml.nvmlDeviceGetFieldValues, h, [_FI_RECOVERY_ACTION])
        if rc != SUCCESS or values is None:
            return Reading(0, rc)
        fv = values[0]
        rc = int(fv.nvmlReturn)
        if rc == ERROR_INVALID_ARGUMENT:
            rc = ERROR_NOT_SUPPORTED
        return Reading(int(fv.value.uiVal) if rc == SUCCESS else 0, rc)

    def _sample(self, index: int, uuid: str) -> HealthSample:
        # The lock covers only the handle lookup (an inventory in another thread
        # rebuilds the map), never the NVML calls: a GPU that hangs holds up
        # only the thread sampling it.
        with self._lock:
            h = self._handles.get(index)
        if h is None:
            missing = Reading(0, ERROR_INVALID_ARGUMENT)
            return HealthSample(index, uuid, ERROR_INVALID_ARGUMENT, *([missing] * 12))
        reasons = self._reading(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h)
        if reasons.rc == ERROR_FUNCTION_NOT_FOUND:
            reasons = self._reading(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, h)
        temperature = self._reading(pynvml.nvmlDeviceGetTemperature, h, _TEMPERATURE_GPU)
        ecc_c = self._reading(pynvml.nvmlDeviceGetTotalEccErrors, h, _ECC_CORRECTED, _ECC_VOLATILE)
        ecc_u = self._reading(
            pynvml.nvmlDeviceGetTotalEccErrors, h, _ECC_UNCORRECTED, _ECC_VOLATILE
        )
        retired = self._reading(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, h)
        remap_rc, remap = self._try(pynvml.nvmlDeviceGetRemappedRows, h)
        rows = remap if remap_rc == SUCCESS and remap is not None else (0, 0, 0, 0)
        link = self._reading(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h)
        link_max = self._reading(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h)
        return HealthSample(
            gpu_index=index,
            uuid=uuid,
            rc=sample_rc(
                reasons.rc,
                temperature.rc,
                ecc_c.rc,
                ecc_u.rc,
                retired.rc,
                remap_rc,
                link.rc,
                link_max.rc,
            ),
            clocks_event_reasons=reasons,
            temperature_c=temperature,
            ecc_corrected_volatile=ecc_c,
            ecc_uncorrected_volatile=ecc_u,
            retired_pages_pending=retired,
            remapped_rows_corrected=Reading(int(rows[0]), remap_rc),
            remapped_rows_uncorrected=Reading(int(rows[1]), remap_rc),
            remapped_rows_pending=Reading(int(rows[2]), remap_rc),
            remapped_rows_failure=Reading(int(rows[3]), remap_rc),
            pcie_link_width_current=link,
            pcie_link_width_max=link_max,
            recovery_action=self._recovery_action(h),
        )

    # -- events ----------------------------------------------------------

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        self._check_open()
        snapshot = self._known_gpus()
        with self._lock:
            if self._event_set is None:
                rc, event_set = self._try(pynvml.nvmlEventSetCreate)
                if rc != SUCCESS:
                    raise error_for(rc, self._message(rc), CALL_EVENT_SET_CREATE)
                self._event_set = event_set
            regs = []
            for gpu in snapshot.gpus:
                rc, call, registered = self._register(gpu.index, mask)
                if rc != SUCCESS:
                    log.warning(
                        "gpu %d unmonitored: %s: %s (rc=%d)",
                        gpu.index,
                        call,
                        self._message(rc),
                        rc,
                    )
                regs.append(EventRegistration(gpu.index, gpu.uuid, registered, rc))
            return regs

    def _register(self, index: int, mask: int) -> tuple[int, str, int]:
        h = self._handles.get(index)
        if h is None:
            return ERROR_INVALID_ARGUMENT, CALL_HANDLE_BY_INDEX, 0
        rc, supported = self._try(pynvml.nvmlDeviceGetSupportedEventTypes, h)
        if rc != SUCCESS or supported is None:
            return rc, CALL_SUPPORTED_EVENTS, 0
        want = mask & int(supported)
        if not want:
            return ERROR_NOT_SUPPORTED, CALL_SUPPORTED_EVENTS, 0
        rc, _ = self._try(pynvml.nvmlDeviceRegisterEvents, h, want, self._event_set)
        if rc != SUCCESS:
            return rc, CALL_REGISTER_EVENTS, 0
        return SUCCESS, "", want

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        """Block in nvmlEventSetWait_v2; ctypes releases the GIL for the call."""
        with self._lock:
            self._check_open()
            event_set = self._event_set
            if event_set is None:
                raise NvmlError(
                    ERROR_INVALID_ARGUMENT,
                    "no event set: call register_events() first",
                    CALL_EVENT_WAIT,
                )
            self._waits += 1
        try:
            rc, data = self._try(pynvml.nvmlEventSetWait_v2, event_set, max(0, timeout_ms))
        finally:
            with self._lock:
                self._waits -= 1
                self._idle.notify_all()
        if rc == ERROR_TIMEOUT:
            return None
        if rc != SUCCESS or data is None:
            raise error_for(rc, self._message(rc), CALL_EVENT_WAIT)
        index = self._index_by_address.get(_address(data.device), -1)
        if index < 0 and data.device:
            irc, found = self._try(pynvml.nvmlDeviceGetIndex, data.device)
            if irc == SUCCESS and found is not None:
                index = int(found)
        return NvmlEvent(
            gpu_index=index,
            uuid=self._uuids.get(index, ""),
            event_type=int(data.eventType),
            event_data=int(data.eventData),
            gpu_instance_id=int(data.gpuInstanceId),
            compute_instance_id=int(data.computeInstanceId),
        )

    # -- configuration and teardown --------------------------------------

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        self._check_open()
        rc, h = self._try(pynvml.nvmlDeviceGetHandleByUUID, gpu_uuid)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), CALL_HANDLE_BY_UUID)
        rc, _ = self._try(pynvml.nvmlDeviceSetComputeMode, h, mode)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), CALL_SET_COMPUTE_MODE)

    def close(self, timeout: float | None = None) -> bool:
        """Free the event set and shut NVML down, waiting at most timeout s. Idempotent.

        Only event waits are tracked here (a sample or compute-mode call in
        another thread is the caller's to bound); one still blocked after
        timeout leaves NVML initialised and returns False.
        """
        if self._closed:
            return True
        with self._lock:
            self._closed = True
            if not self._idle.wait_for(lambda: not self._waits, timeout):
                log.warning("NVML left initialised: an event wait is still inside NVML")
                return False
            if self._event_set is not None:
                self._try(pynvml.nvmlEventSetFree, self._event_set)
                self._event_set = None
            rc, _ = self._try(pynvml.nvmlShutdown)
            if rc != SUCCESS:
                log.warning("nvmlShutdown: %s (rc=%d)", self._message(rc), rc)
            self._handles = {}
        _Library.release()
        return True


def _symbol(name: str) -> Any:
    return pynvml._nvmlGetFunctionPointer(name)


def _text(value: Any) -> str:
    return decode(value) if isinstance(value, bytes) else str(value)
