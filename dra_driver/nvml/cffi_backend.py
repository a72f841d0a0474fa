"""The NVML fast path: the cffi extension built from native/fastpath.

One native call per job (inventory, health sample, event wait); this module
only turns the filled C structs into the shared records, applying the rules
in _common (the C side already applied the per-call ones). Importing it
raises ImportError when the extension is not built; open_backend() then
falls back to nvidia-ml-py.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Any

from ._common import (
    CALL_COUNT,
    CALL_EVENT_SET_CREATE,
    CALL_EVENT_WAIT,
    CALL_INIT,
    CALL_MAX_MIG_COUNT,
    DEFAULT_LIBRARY,
    GI_PROFILE_INDEX_COUNT,
    MiB,
    decode,
    fallback_message,
    profile_by_id,
    profile_name,
    sample_rc,
    unknown_profile_error,
)
from ._fastpath import ffi, lib
from .errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_INSUFFICIENT_SIZE,
    ERROR_INVALID_ARGUMENT,
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_MEMORY,
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

_ERR_LEN = 1024
_CALL_NAMES = tuple(
    decode(ffi.string(lib.fp_call_name(i))) for i in range(lib.FP_CALL_COUNT_OF_CALLS)
)

# Layout of the native inventory, for slicing one GPU's meaningful bytes.
_GPUS_OFF = ffi.offsetof("fp_inventory_t", "gpus")
_GPU_SIZE = ffi.sizeof("fp_gpu_t")
_PROFILES_OFF = ffi.offsetof("fp_gpu_t", "profiles")
_PROFILE_SIZE = ffi.sizeof("fp_profile_t")
_MIG_HEADER_OFF = ffi.offsetof("fp_gpu_t", "max_mig_rc")
_MIGS_OFF = ffi.offsetof("fp_gpu_t", "migs")
_MIG_SIZE = ffi.sizeof("fp_mig_t")


def _layout(ctype: str, expected: tuple[str, ...]) -> struct.Struct:
    """A struct.Struct reading one C struct in one go (much cheaper than per-field cdata).

    Built from cffi's own view of the layout; the field order is checked so a
    header edit cannot silently shift values into the wrong record fields.
    """
    fields = ffi.typeof(ctype).fields
    if tuple(name for name, _ in fields) != expected:
        raise ImportError(f"{ctype} layout changed: rebuild the fast path and update the reader")
    fmt, pos = "=", 0
    for _, f in fields:
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        if f.type.kind == "array":
            fmt += f"{f.type.length}s"
        else:
            fmt += _FORMATS[f.type.cname]
        pos = f.offset + ffi.sizeof(f.type)
    size = ffi.sizeof(ctype)
    if size > pos:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt)


_FORMATS = {"int": "i", "unsigned int": "I", "unsigned long long": "Q"}
_MIG_LAYOUT = _layout(
    "fp_mig_t",
    (
        "slot",
        "handle_rc",
        "stop_rc",
        "stop_call",
        "uuid",
        "gpu_instance_id",
        "compute_instance_id",
        "gi_profile_id",
        "placement_start",
        "placement_size",
        "multiprocessors",
        "copy_engines",
        "decoders",
        "encoders",
        "jpeg_engines",
        "ofa_engines",
        "memory_mb",
    ),
)
_HEALTH_SIZE = ffi.sizeof("fp_health_t")
_HEALTH_LAYOUT = _layout(
    "fp_health_t",
    (
        "index",
        "handle_rc",
        "reasons_rc",
        "reasons",
        "temperature_rc",
        "temperature",
        "ecc_corrected_rc",
        "ecc_corrected",
        "ecc_uncorrected_rc",
        "ecc_uncorrected",
        "retired_pending_rc",
        "retired_pending",
        "remapped_rc",
        "remapped_corrected",
        "remapped_uncorrected",
        "remapped_pending",
        "remapped_failure",
        "link_width_rc",
        "link_width",
        "max_link_width_rc",
        "max_link_width",
    ),
)

if GI_PROFILE_INDEX_COUNT > lib.FP_MAX_PROFILES:
    raise ImportError("fast path built with too few profile slots for GI_PROFILE_INDEX_COUNT")


class CffiBackend:
    """NvmlBackend over the dlopen()ed library, one native crossing per job."""

    name = "cffi"

    def __init__(self, library: str | None = None) -> None:
        path = library or DEFAULT_LIBRARY
        err = ffi.new("char[]", _ERR_LEN)
        why = ffi.new("int *")
        ctx = lib.fp_open(path.encode(), err, _ERR_LEN, why)
        if ctx == ffi.NULL:
            text = decode(ffi.string(err))
            if why[0] == lib.FP_OPEN_NO_SYMBOL:
                raise error_for(ERROR_FUNCTION_NOT_FOUND, text, "dlsym")
            if why[0] == lib.FP_OPEN_NO_MEMORY:
                raise error_for(ERROR_MEMORY, text, "fp_open")
            raise error_for(ERROR_LIBRARY_NOT_FOUND, f"cannot load {path}: {text}", "dlopen")
        # Freed (after an implicit close) only when nothing references it any
        # more, so a thread still inside a call can never see freed memory.
        self._ctx: Any = ffi.gc(ctx, lib.fp_free)
        buf = ffi.new("char[]", lib.FP_MISSING_LEN)
        lib.fp_missing_symbols(self._ctx, buf, lib.FP_MISSING_LEN)
        missing = [s for s in decode(ffi.string(buf)).split(",") if s]
        self._messages: dict[int, str] = {}
        rc = lib.fp_init(self._ctx)
        if rc != SUCCESS:
            lib.fp_close(self._ctx)
            raise error_for(rc, self._message(rc), CALL_INIT)
        self.info = BackendInfo(name=self.name, library=path, missing_symbols=missing)
        if missing:
            log.info("NVML %s lacks %s: those features read as unsupported", path, missing)
        self._lock = threading.Lock()  # guards the reused buffers and the snapshot
        self._closed = False
        self._registered = False  # the event set exists
        self._inv = ffi.new("fp_inventory_t *")
        self._snapshot: NvmlSnapshot | None = None
        self._gpu_memo: dict[bytes, tuple[GpuRecord | None, tuple[DeviceError, ...]]] = {}
        self._profile_memo: dict[bytes, MigProfile] = {}
        self._uuids: dict[int, str] = {}
        self._last_inventory_calls = 0
        self._health_out = ffi.new("fp_health_t[]", lib.FP_MAX_GPUS)
        self._health_buf = ffi.buffer(self._health_out)
        self._health_indices: Any = ffi.NULL
        self._health_gpus: tuple[GpuRecord, ...] | None = None
        self._health_memo: dict[bytes, HealthSample] = {}

    # -- helpers ---------------------------------------------------------

    def _message(self, rc: int) -> str:
        text = self._messages.get(rc)
        if text is None:
            ptr = lib.fp_error_string(self._ctx, rc)
            text = decode(ffi.string(ptr)) if ptr != ffi.NULL else fallback_message(rc)
            self._messages[rc] = text
        return text

    def _check_open(self) -> None:
        if self._closed:
            raise error_for(ERROR_UNINITIALIZED, "backend is closed", self.name)

    @property
    def nvml_calls(self) -> int:
        """NVML calls made natively so far (the benchmark's crossing count)."""
        return int(lib.fp_nvml_calls(self._ctx))

    @property
    def last_inventory_nvml_calls(self) -> int:
        return self._last_inventory_calls

    def clear_record_cache(self) -> None:
        """Forget the records kept for unchanged GPUs and samples (the benchmark's cold path)."""
        with self._lock:
            self._gpu_memo = {}
            self._profile_memo = {}
            self._health_memo = {}

    # -- inventory -------------------------------------------------------

    def inventory(self) -> NvmlSnapshot:
        self._check_open()
        with self._lock:
            rc = lib.fp_inventory(self._ctx, GI_PROFILE_INDEX_COUNT, self._inv)
            if rc == ERROR_UNINITIALIZED and not self._closed:
                log.warning("NVML answered UNINITIALIZED (driver reload?): re-initialising once")
                init_rc = lib.fp_init(self._ctx)
                if init_rc != SUCCESS:
                    raise error_for(init_rc, self._message(init_rc), CALL_INIT)
                rc = lib.fp_inventory(self._ctx, GI_PROFILE_INDEX_COUNT, self._inv)
            if rc != SUCCESS:
                call = CALL_COUNT if self._inv.count_rc == rc else self.name
                raise error_for(rc, self._message(rc), call)
            snapshot = self._convert(self._inv)
            self._snapshot = snapshot
            self._uuids = {g.index: g.uuid for g in snapshot.gpus}
            self._last_inventory_calls = int(self._inv.nvml_calls)
            return snapshot

    def _convert(self, inv: Any) -> NvmlSnapshot:
        """Records from the filled struct, reusing those whose native bytes are unchanged.

        A GPU's record (and its errors) is a pure function of its fp_gpu_t's
        meaningful bytes, so a GPU whose bytes equal the previous inventory's
        gets the previous (immutable) objects back; identical MIG profile
        entries, common across GPUs of one model, share one MigProfile. The
        memos keep only what the latest inventory used, so they never grow.
        """
        buf = ffi.buffer(inv)
        errors: list[DeviceError] = []
        gpus: list[GpuRecord] = []
        memo: dict[bytes, tuple[GpuRecord | None, tuple[DeviceError, ...]]] = {}
        profile_memo: dict[bytes, MigProfile] = {}
        for i in range(inv.gpu_count):
            g = inv.gpus[i]
            base = _GPUS_OFF + i * _GPU_SIZE
            key = (
                buf[base : base + _PROFILES_OFF + g.profile_count * _PROFILE_SIZE]
                + buf[base + _MIG_HEADER_OFF : base + _MIGS_OFF + g.mig_count * _MIG_SIZE]
            )
            hit = self._gpu_memo.get(key) or memo.get(key)
            if hit is None:
                hit = self._convert_gpu(g, buf, base, profile_memo)
            memo[key] = hit
            record, gpu_errors = hit
            if record is not None:
                gpus.append(record)
            errors.extend(gpu_errors)
        self._gpu_memo = memo
        self._profile_memo = profile_memo
        for i in range(inv.gpu_count, inv.device_count):
            errors.append(
                DeviceError(
                    i,
                    ERROR_INSUFFICIENT_SIZE,
                    f"not read: the fast path holds at most {lib.FP_MAX_GPUS} GPUs",
                    CALL_COUNT,
                )
            )
        if inv.driver_version_rc != SUCCESS:
            log.warning(
                "nvmlSystemGetDriverVersion: %s (rc=%d)",
                self._message(inv.driver_version_rc),
                inv.driver_version_rc,
            )
        return NvmlSnapshot(
            driver_version=decode(ffi.string(inv.driver_version)),
            cuda_driver_version=inv.cuda_version if inv.cuda_version_rc == SUCCESS else 0,
            gpus=tuple(gpus),
            errors=tuple(errors),
        )

    def _convert_gpu(
        self, g: Any, buf: Any, base: int, profile_memo: dict[bytes, MigProfile]
    ) -> tuple[GpuRecord | None, tuple[DeviceError, ...]]:
        message = self._message
        if g.stop_rc != SUCCESS:
            stop = DeviceError(g.index, g.stop_rc, message(g.stop_rc), _CALL_NAMES[g.stop_call])
            return None, (stop,)
        errors: list[DeviceError] = []

        def ok(rc: int, call: int) -> bool:
            """SUCCESS; else the field is None, and an error unless NOT_SUPPORTED."""
            if rc == SUCCESS:
                return True
            if not is_unsupported(rc):
                errors.append(DeviceError(g.index, rc, message(rc), _CALL_NAMES[call]))
            return False

        name = decode(ffi.string(g.name)) if ok(g.name_rc, lib.FP_CALL_NAME) else ""
        brand = g.brand if ok(g.brand_rc, lib.FP_CALL_BRAND) else None
        arch = g.architecture if ok(g.arch_rc, lib.FP_CALL_ARCHITECTURE) else None
        cc = (g.cc_major, g.cc_minor) if ok(g.cc_rc, lib.FP_CALL_COMPUTE_CAPABILITY) else None
        memory = g.memory_total if ok(g.memory_rc, lib.FP_CALL_MEMORY) else None
        bus_id = decode(ffi.string(g.bus_id)) if ok(g.pci_rc, lib.FP_CALL_PCI) else ""
        mig_current: int | None = None
        mig_pending: int | None = None
        profiles: tuple[MigProfile, ...] = ()
        migs: tuple[MigRecord, ...] = ()
        if ok(g.mig_mode_rc, lib.FP_CALL_MIG_MODE):
            mig_current, mig_pending = g.mig_current, g.mig_pending
            profiles = self._profiles(g, buf, base + _PROFILES_OFF, profile_memo)
            if mig_current == MIG_ENABLE:
                migs = self._migs(g, buf, base + _MIGS_OFF, profiles, errors)
        record = GpuRecord(
            index=g.index,
            minor=g.minor,
            uuid=decode(ffi.string(g.uuid)),
            name=name,
            brand=brand,
            architecture=arch,
            cuda_compute_capability=cc,
            memory_total_bytes=memory,
            pci_bus_id=bus_id,
            mig_mode_current=mig_current,
            mig_mode_pending=mig_pending,
            migs=migs,
            mig_profiles=profiles,
        )
        return record, tuple(errors)

    def _profiles(
        self, g: Any, buf: Any, offset: int, memo: dict[bytes, MigProfile]
    ) -> tuple[MigProfile, ...]:
        out = []
        for k in range(g.profile_count):
            start = offset + k * _PROFILE_SIZE
            key = buf[start : start + _PROFILE_SIZE]
            profile = memo.get(key) or self._profile_memo.get(key)
            if profile is None:
                profile = _profile(g.profiles[k])
            memo[key] = profile
            out.append(profile)
        return tuple(out)

    def _migs(
        self,
        g: Any,
        buf: Any,
        offset: int,
        profiles: tuple[MigProfile, ...],
        errors: list[DeviceError],
    ) -> tuple[MigRecord, ...]:
        if g.max_mig_rc != SUCCESS:
            if not is_unsupported(g.max_mig_rc):
                errors.append(
                    DeviceError(
                        g.index, g.max_mig_rc, self._message(g.max_mig_rc), CALL_MAX_MIG_COUNT
                    )
                )
            return ()
        out = []
        for k in range(g.mig_count):
            (
                slot,
                _handle_rc,
                stop_rc,
                stop_call,
                uuid,
                gi_id,
                ci_id,
                profile_id,
                start,
                size,
                sms,
                copy_engines,
                decoders,
                encoders,
                jpegs,
                ofas,
                memory_mb,
            ) = _MIG_LAYOUT.unpack_from(buf, offset + k * _MIG_SIZE)
            if stop_rc != SUCCESS:  # empty slots were already skipped natively
                errors.append(
                    DeviceError(
                        g.index,
                        stop_rc,
                        self._message(stop_rc),
                        _CALL_NAMES[stop_call],
                        mig_index=slot,
                    )
                )
                continue
            profile = profile_by_id(profiles, profile_id)
            if profile is None:
                errors.append(unknown_profile_error(g.index, slot, profile_id))
                continue
            out.append(
                MigRecord(
                    slot,
                    decode(uuid.split(b"\0", 1)[0]),
                    gi_id,
                    ci_id,
                    profile_id,
                    profile.name,
                    start,
                    size,
                    sms,
                    copy_engines,
                    decoders,
                    encoders,
                    jpegs,
                    ofas,
                    memory_mb * MiB,
                )
            )
        if g.max_mig_count > lib.FP_MAX_MIGS:
            errors.append(
                DeviceError(
                    g.index,
                    ERROR_INSUFFICIENT_SIZE,
                    f"MIG slots from {lib.FP_MAX_MIGS} on not read "
                    f"(NVML reports {g.max_mig_count})",
                    CALL_MAX_MIG_COUNT,
                )
            )
        return tuple(out)

    # -- health ----------------------------------------------------------

    def _known_gpus(self) -> NvmlSnapshot:
        snapshot = self._snapshot
        return snapshot if snapshot is not None else self.inventory()

    def health_sample(self) -> list[HealthSample]:
        """One native call samples every GPU; unchanged GPUs get their previous sample back."""
        self._check_open()
        gpus = self._known_gpus().gpus
        if not gpus:
            return []
        with self._lock:
            if self._health_gpus is not gpus:
                self._health_indices = ffi.new("unsigned int[]", [g.index for g in gpus])
                self._health_gpus = gpus
            rc = lib.fp_health(self._ctx, self._health_indices, len(gpus), self._health_out)
            if rc != SUCCESS:
                raise error_for(rc, self._message(rc), "health_sample")
            buf = self._health_buf
            memo: dict[bytes, HealthSample] = {}
            samples = []
            for k, gpu in enumerate(gpus):
                raw = buf[k * _HEALTH_SIZE : (k + 1) * _HEALTH_SIZE]
                sample = self._health_memo.get(raw)
                if sample is None or sample.uuid != gpu.uuid:
                    sample = _health_record(gpu.index, gpu.uuid, _HEALTH_LAYOUT.unpack(raw))
                memo[raw] = sample
                samples.append(sample)
            self._health_memo = memo
            return samples

    # -- events ----------------------------------------------------------

    def register_events(self, mask: int = HEALTH_EVENT_MASK) -> list[EventRegistration]:
        self._check_open()
        snapshot = self._known_gpus()
        n = len(snapshot.gpus)
        indices = ffi.new("unsigned int[]", [g.index for g in snapshot.gpus] or [0])
        out = ffi.new("fp_registration_t[]", max(n, 1))
        rc = lib.fp_register_events(self._ctx, mask, indices, n, out)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), CALL_EVENT_SET_CREATE)
        self._registered = True
        regs = []
        for k, gpu in enumerate(snapshot.gpus):
            r = out[k]
            if r.rc != SUCCESS:
                log.warning(
                    "gpu %d unmonitored: %s: %s (rc=%d)",
                    gpu.index,
                    _CALL_NAMES[r.call],
                    self._message(r.rc),
                    r.rc,
                )
            regs.append(EventRegistration(gpu.index, gpu.uuid, int(r.registered), r.rc))
        return regs

    def wait_event(self, timeout_ms: int) -> NvmlEvent | None:
        """Block in nvmlEventSetWait_v2 with the GIL released (cffi API mode)."""
        self._check_open()
        if not self._registered:
            raise NvmlError(
                ERROR_INVALID_ARGUMENT,
                "no event set: call register_events() first",
                CALL_EVENT_WAIT,
            )
        out = ffi.new("fp_event_t *")
        rc = lib.fp_wait_event(self._ctx, max(0, timeout_ms), out)
        if rc == ERROR_TIMEOUT:
            return None
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), CALL_EVENT_WAIT)
        index = out.gpu_index
        return NvmlEvent(
            gpu_index=index,
            uuid=self._uuids.get(index, ""),
            event_type=out.event_type,
            event_data=out.event_data,
            gpu_instance_id=out.gpu_instance_id,
            compute_instance_id=out.compute_instance_id,
        )

    # -- configuration and teardown --------------------------------------

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        self._check_open()
        failed = ffi.new("int *")
        rc = lib.fp_set_compute_mode(self._ctx, gpu_uuid.encode(), mode, failed)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), _CALL_NAMES[failed[0]])

    def close(self) -> None:
        """Shut NVML down (waiting for an in-flight event wait to return). Idempotent."""
        if self._closed:
            return
        self._closed = True
        rc = lib.fp_close(self._ctx)
        if rc not in (SUCCESS, ERROR_UNINITIALIZED):
            log.warning("nvmlShutdown: %s (rc=%d)", self._message(rc), rc)


def _profile(p: Any) -> MigProfile:
    placements: tuple[tuple[int, int], ...] = ()
    if p.placements_rc == SUCCESS:
        n = p.placement_count
        placements = tuple(
            zip(ffi.unpack(p.placement_start, n), ffi.unpack(p.placement_size, n), strict=True)
        )
    return MigProfile(
        profile_id=p.id,
        name=profile_name(decode(ffi.string(p.name))),
        slice_count=p.slice_count,
        memory_bytes=p.memory_mb * MiB,
        multiprocessors=p.multiprocessors,
        copy_engines=p.copy_engines,
        decoders=p.decoders,
        encoders=p.encoders,
        jpeg_engines=p.jpeg_engines,
        ofa_engines=p.ofa_engines,
        placements=placements,
    )


def _health_record(index: int, uuid: str, fields: tuple[Any, ...]) -> HealthSample:
    (
        _index,
        handle_rc,
        reasons_rc,
        reasons,
        temperature_rc,
        temperature,
        ecc_c_rc,
        ecc_c,
        ecc_u_rc,
        ecc_u,
        retired_rc,
        retired,
        remap_rc,
        remap_c,
        remap_u,
        remap_pending,
        remap_failure,
        link_rc,
        link,
        link_max_rc,
        link_max,
    ) = fields
    if handle_rc != lib.FP_NOT_CALLED:  # no cached handle: nothing was sampled
        missing = Reading(0, handle_rc)
        return HealthSample(index, uuid, handle_rc, *([missing] * 11))
    if remap_rc != SUCCESS:
        remap_c = remap_u = remap_pending = remap_failure = 0
    return HealthSample(
        gpu_index=index,
        uuid=uuid,
        rc=sample_rc(
            reasons_rc,
            temperature_rc,
            ecc_c_rc,
            ecc_u_rc,
            retired_rc,
            remap_rc,
            link_rc,
            link_max_rc,
        ),
        clocks_event_reasons=_reading(reasons, reasons_rc),
        temperature_c=_reading(temperature, temperature_rc),
        ecc_corrected_volatile=_reading(ecc_c, ecc_c_rc),
        ecc_uncorrected_volatile=_reading(ecc_u, ecc_u_rc),
        retired_pages_pending=_reading(retired, retired_rc),
        remapped_rows_corrected=Reading(remap_c, remap_rc),
        remapped_rows_uncorrected=Reading(remap_u, remap_rc),
        remapped_rows_pending=Reading(remap_pending, remap_rc),
        remapped_rows_failure=Reading(remap_failure, remap_rc),
        pcie_link_width_current=_reading(link, link_rc),
        pcie_link_width_max=_reading(link_max, link_max_rc),
    )


def _reading(value: int, rc: int) -> Reading:
    return Reading(value if rc == SUCCESS else 0, rc)
