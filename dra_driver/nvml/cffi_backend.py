"""The NVML fast path: the cffi extension built from native/fastpath.

One native call per job (inventory, health sample, event wait); this module
only turns the filled C structs into the shared records, applying the rules
in _common (the C side already applied the per-call ones). Importing it
raises ImportError when the extension is not built; open_backend() then
falls back to nvidia-ml-py.
"""

from __future__ import annotations

import dataclasses
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
    DEVICE_LEVEL_CODES,
    GI_PROFILE_INDEX_COUNT,
    MiB,
    decode,
    fallback_message,
    profile_name,
    record_factory,
    sample_rc,
    unknown_profile_error,
)
from ._fastpath import ffi, lib
from ._records import HEAD_BIT as _HEAD_BIT
from ._records import INVENTORY_SIZE as _INVENTORY_SIZE
from ._records import configure as _configure_records
from ._records import diff as _native_diff
from ._records import gpu as _native_gpu
from ._records import same as _native_same
from .errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_IN_USE,
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
_PROFILE_COUNT_OFF = ffi.offsetof("fp_gpu_t", "profile_count")
_MIG_COUNT_OFF = ffi.offsetof("fp_gpu_t", "mig_count")
# profile_count and mig_count of one fp_gpu_t in one unpack.
_COUNTS = struct.Struct(f"=I{_MIG_COUNT_OFF - _PROFILE_COUNT_OFF - 4}xI")
_MIGS_IN_TAIL = _MIGS_OFF - _MIG_HEADER_OFF
_HEALTH_SIZE = ffi.sizeof("fp_health_t")

_FORMATS = {"char": "p", "int": "i", "unsigned int": "I", "unsigned long long": "Q"}


def _layout(ctype: str, expected: tuple[str, ...], *, whole: bool = True) -> struct.Struct:
    """A struct.Struct reading C fields in one go (much cheaper than per-field cdata).

    Built from cffi's own view of the layout; the field order is checked so a
    header edit cannot silently shift values into the wrong record fields.
    whole=False reads just the run of fields named, from the first one's
    offset. A char array (a length-prefixed string, see fastpath.h) unpacks
    as the bytes of its text, an array of structs as its raw bytes, any other
    array as one value per element.
    """
    fields = ffi.typeof(ctype).fields
    names = tuple(name for name, _ in fields)
    first = names.index(expected[0]) if expected[0] in names else -1
    run = fields[first : first + len(expected)]
    if first < 0 or tuple(name for name, _ in run) != expected or (whole and run != fields):
        raise ImportError(f"{ctype} layout changed: rebuild the fast path and update the reader")
    fmt, pos = "=", run[0][1].offset
    for _, f in run:
        if f.offset > pos:
            fmt += f"{f.offset - pos}x"
        if f.type.kind == "array" and f.type.item.kind == "struct":
            fmt += f"{ffi.sizeof(f.type)}s"
        elif f.type.kind == "array":
            fmt += f"{f.type.length}{_FORMATS[f.type.item.cname]}"
        else:
            fmt += _FORMATS[f.type.cname]
        pos = f.offset + ffi.sizeof(f.type)
    size = ffi.sizeof(ctype)
    if whole and size > pos:
        fmt += f"{size - pos}x"
    return struct.Struct(fmt)


_INVENTORY_HEAD = _layout(
    "fp_inventory_t",
    (
        "driver_version_rc",
        "driver_version",
        "cuda_version_rc",
        "cuda_version",
        "count_rc",
        "device_count",
        "gpu_count",
    ),
    whole=False,
)
_GPU_HEAD = _layout(
    "fp_gpu_t",
    (
        "index",
        "stop_rc",
        "stop_call",
        "minor_rc",
        "minor",
        "uuid_rc",
        "uuid",
        "name_rc",
        "name",
        "brand_rc",
        "brand",
        "arch_rc",
        "architecture",
        "cc_rc",
        "cc_major",
        "cc_minor",
        "memory_rc",
        "memory_total",
        "pci_rc",
        "bus_id",
        "mig_mode_rc",
        "mig_current",
        "mig_pending",
        "profile_count",
    ),
    whole=False,
)
_MIG_HEAD = _layout(
    "fp_gpu_t", ("max_mig_rc", "max_mig_count", "mig_count", "mig_failed"), whole=False
)
_PROFILE_LAYOUT = _layout(
    "fp_profile_t",
    (
        "profile_index",
        "rc",
        "id",
        "slice_count",
        "multiprocessors",
        "copy_engines",
        "decoders",
        "encoders",
        "jpeg_engines",
        "ofa_engines",
        "memory_mb",
        "name",
        "placements_rc",
        "placement_count",
        "placements",
    ),
)
_PLACEMENT_LAYOUT = _layout("fp_placement_t", ("start", "size"))
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
        "recovery_action_rc",
        "recovery_action",
    ),
)

# Record constructors that skip the frozen dataclasses' per-field __setattr__,
# and tuple.__new__, which builds a NamedTuple record without its Python __new__.
_new_snapshot = record_factory(NvmlSnapshot)
_new_gpu = record_factory(GpuRecord)
_new_sample = record_factory(HealthSample)
_new_tuple = tuple.__new__

_DEVICE_LEVEL_CODES = frozenset(DEVICE_LEVEL_CODES)  # a sample needs sample_rc() only then
# The optional GPU fields all read, in the order both backends report errors.
_OPTIONAL_CALLS = tuple(
    _CALL_NAMES[call]
    for call in (
        lib.FP_CALL_NAME,
        lib.FP_CALL_BRAND,
        lib.FP_CALL_ARCHITECTURE,
        lib.FP_CALL_COMPUTE_CAPABILITY,
        lib.FP_CALL_MEMORY,
        lib.FP_CALL_PCI,
        lib.FP_CALL_MIG_MODE,
    )
)
_ALL_READ = (SUCCESS,) * len(_OPTIONAL_CALLS)

# A GPU's meaningful native bytes: up to its profiles[], the profiles[] entries
# filled, and from max_mig_rc to the last migs[] entry filled.
_GpuKey = tuple[bytes, bytes, bytes]
# A GPU's MIG profiles, and the first profile name for each profile id.
_Profiles = tuple[tuple[MigProfile, ...], dict[int, str]]
_NO_PROFILES: _Profiles = ((), {})
# What one GPU's bytes turned into: its record (None if abandoned), its errors
# and its profiles, kept with the bytes to recognise them in the next inventory.
_GpuResult = tuple[GpuRecord | None, tuple[DeviceError, ...], _Profiles]
_GpuMemo = list[tuple[_GpuKey, _GpuResult]]
_NO_KEY: _GpuKey = (b"", b"", b"")  # a natively built GPU's (its bytes live in _previous)

if GI_PROFILE_INDEX_COUNT > lib.FP_MAX_PROFILES:
    raise ImportError("fast path built with too few profile slots for GI_PROFILE_INDEX_COUNT")
if ffi.sizeof("fp_inventory_t") != _INVENTORY_SIZE or _HEAD_BIT != lib.FP_MAX_GPUS:
    raise ImportError("_records and _fastpath were built from different headers: rebuild")
_configure_records(
    GpuRecord, MigRecord, MigProfile, tuple(f.name for f in dataclasses.fields(GpuRecord))
)
_HEAD_CHANGED = 1 << _HEAD_BIT


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
        self._inv_buf = ffi.buffer(self._inv)
        self._snapshot: NvmlSnapshot | None = None
        self._gpu_memo: _GpuMemo = []  # by position in gpus[]
        # The last converted inventory's bytes, which _native_diff compares with.
        self._previous = bytearray(_INVENTORY_SIZE)
        self._last_inventory_calls = 0
        self._health_out = ffi.new("fp_health_t[]", lib.FP_MAX_GPUS)
        self._health_buf = ffi.buffer(self._health_out)
        self._health_indices: Any = ffi.NULL
        self._health_gpus: tuple[GpuRecord, ...] | None = None
        self._health_memo: list[tuple[bytes, HealthSample]] = []  # by position
        self._health_prev = bytearray(_HEALTH_SIZE * lib.FP_MAX_GPUS)  # last sample's bytes

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
            self._gpu_memo = []
            self._health_memo = []

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
            snapshot = self._convert()
            self._snapshot = snapshot
            self._last_inventory_calls = int(self._inv.nvml_calls)
            return snapshot

    def _convert(self) -> NvmlSnapshot:
        """Records from the filled struct, reusing those whose native bytes are unchanged.

        A GPU's record (and its errors) is a pure function of its fp_gpu_t's
        meaningful bytes (the C side zeroes what it does not write), so a GPU
        whose bytes equal those at its position in the previous inventory gets
        the previous (immutable) objects back, and an inventory equal to the
        previous one in every byte gets the previous snapshot back. The
        comparison (_records.diff) and the records of GPUs that read cleanly
        (_records.gpu) are native; GPUs with errors go through _convert_gpu.
        Identical MIG profile lists, common across GPUs of one model, share
        one tuple of MigProfiles. The memo keeps only what the latest
        inventory used, so it never grows.
        """
        buf = self._inv_buf
        old_memo = self._gpu_memo
        old_snapshot = self._snapshot
        try:  # leaves _previous equal to this inventory; without a memo, nothing is reused
            changed = _native_diff(buf, self._previous)
        except Exception:
            self._gpu_memo = []
            raise
        if not changed and old_snapshot is not None and old_memo:
            return old_snapshot
        # From here on the memo must match _previous again, whatever happens.
        self._gpu_memo = []
        (
            driver_version_rc,
            driver_version,
            cuda_version_rc,
            cuda_version,
            _count_rc,
            device_count,
            gpu_count,
        ) = _INVENTORY_HEAD.unpack_from(buf, 0)
        errors: list[DeviceError] = []
        gpus: list[GpuRecord] = []
        built: list[GpuRecord | None] = []
        memo: _GpuMemo = []
        reusable = len(old_memo)
        for i in range(gpu_count):
            key = _NO_KEY
            if i < reusable and not (changed >> i) & 1:
                key, result = old_memo[i]
            else:
                record = _native_gpu(buf, i, built)
                if record is not None:
                    result = (record, (), _NO_PROFILES)
                else:
                    key = self._gpu_key(i)
                    result = self._convert_gpu(key, memo)
            memo.append((key, result))
            record, gpu_errors, _ = result
            built.append(record)
            if record is not None:
                gpus.append(record)
            errors.extend(gpu_errors)
        for i in range(gpu_count, device_count):
            errors.append(
                DeviceError(
                    i,
                    ERROR_INSUFFICIENT_SIZE,
                    f"not read: the fast path holds at most {lib.FP_MAX_GPUS} GPUs",
                    CALL_COUNT,
                )
            )
        if driver_version_rc != SUCCESS:
            log.warning(
                "nvmlSystemGetDriverVersion: %s (rc=%d)",
                self._message(driver_version_rc),
                driver_version_rc,
            )
        snapshot = _new_snapshot(
            decode(driver_version),
            cuda_version if cuda_version_rc == SUCCESS else 0,
            tuple(gpus),
            tuple(errors),
        )
        self._gpu_memo = memo
        return snapshot

    def _gpu_key(self, i: int) -> _GpuKey:
        """GPU i's meaningful native bytes (what _convert_gpu reads)."""
        buf = self._inv_buf
        base = _GPUS_OFF + i * _GPU_SIZE
        profile_count, mig_count = _COUNTS.unpack_from(buf, base + _PROFILE_COUNT_OFF)
        start = base + _PROFILES_OFF
        return (
            buf[base:start],
            buf[start : start + profile_count * _PROFILE_SIZE],
            buf[base + _MIG_HEADER_OFF : base + _MIGS_OFF + mig_count * _MIG_SIZE],
        )

    def _convert_gpu(self, key: _GpuKey, *memos: _GpuMemo) -> _GpuResult:
        """One GPU's record and errors from its meaningful bytes."""
        head, profiles_raw, tail = key
        (
            index,
            stop_rc,
            stop_call,
            _minor_rc,
            minor,
            _uuid_rc,
            uuid,
            name_rc,
            name,
            brand_rc,
            brand,
            arch_rc,
            arch,
            cc_rc,
            cc_major,
            cc_minor,
            memory_rc,
            memory,
            pci_rc,
            bus_id,
            mig_mode_rc,
            mig_current,
            mig_pending,
            _profile_count,
        ) = _GPU_HEAD.unpack_from(head)
        if stop_rc != SUCCESS:
            stop = DeviceError(index, stop_rc, self._message(stop_rc), _CALL_NAMES[stop_call])
            return None, (stop,), _NO_PROFILES
        errors: list[DeviceError] = []
        rcs = (name_rc, brand_rc, arch_rc, cc_rc, memory_rc, pci_rc, mig_mode_rc)
        if rcs != _ALL_READ:  # SUCCESS or NOT_SUPPORTED: no error; anything else: one each
            for rc, call in zip(rcs, _OPTIONAL_CALLS, strict=True):
                if rc != SUCCESS and not is_unsupported(rc):
                    errors.append(DeviceError(index, rc, self._message(rc), call))
        migs: tuple[MigRecord, ...] = ()
        profiles = _profiles(profiles_raw, memos)  # none unless MIG capable
        if mig_mode_rc != SUCCESS:
            mig_current = mig_pending = None
        elif mig_current == MIG_ENABLE:
            migs = self._migs(index, tail, profiles[1], errors)
        # Strings are decoded as _common.decode() does, inline: a call costs as much.
        record = _new_gpu(
            index,
            minor,
            uuid.decode("utf-8", "replace"),
            name.decode("utf-8", "replace") if name_rc == SUCCESS else "",
            brand if brand_rc == SUCCESS else None,
            arch if arch_rc == SUCCESS else None,
            (cc_major, cc_minor) if cc_rc == SUCCESS else None,
            memory if memory_rc == SUCCESS else None,
            bus_id.decode("utf-8", "replace") if pci_rc == SUCCESS else "",
            mig_current,
            mig_pending,
            migs,
            profiles[0],
        )
        return record, tuple(errors), profiles

    def _migs(
        self,
        index: int,
        tail: bytes,
        profile_names: dict[int, str],
        errors: list[DeviceError],
    ) -> tuple[MigRecord, ...]:
        max_mig_rc, max_mig_count, _mig_count, mig_failed = _MIG_HEAD.unpack_from(tail)
        if max_mig_rc != SUCCESS:
            if not is_unsupported(max_mig_rc):
                errors.append(
                    DeviceError(index, max_mig_rc, self._message(max_mig_rc), CALL_MAX_MIG_COUNT)
                )
            return ()
        out: list[MigRecord] | None = None
        if not mig_failed:
            out = _mig_records(tail, profile_names)
        if out is None:
            out = self._mig_records_or_errors(index, tail, profile_names, errors)
        if max_mig_count > lib.FP_MAX_MIGS:
            errors.append(
                DeviceError(
                    index,
                    ERROR_INSUFFICIENT_SIZE,
                    f"MIG slots from {lib.FP_MAX_MIGS} on not read (NVML reports {max_mig_count})",
                    CALL_MAX_MIG_COUNT,
                )
            )
        return tuple(out)

    def _mig_records_or_errors(
        self,
        index: int,
        tail: bytes,
        profile_names: dict[int, str],
        errors: list[DeviceError],
    ) -> list[MigRecord]:
        """The MIG records of a GPU some of whose MIG devices fail (errors for those)."""
        out = []
        for (
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
        ) in _MIG_LAYOUT.iter_unpack(tail[_MIGS_IN_TAIL:]):
            if stop_rc != SUCCESS:  # empty slots were already skipped natively
                errors.append(
                    DeviceError(
                        index,
                        stop_rc,
                        self._message(stop_rc),
                        _CALL_NAMES[stop_call],
                        mig_index=slot,
                    )
                )
                continue
            profile = profile_names.get(profile_id)
            if profile is None:
                errors.append(unknown_profile_error(index, slot, profile_id))
                continue
            out.append(
                _new_tuple(
                    MigRecord,
                    (
                        slot,
                        uuid.decode("utf-8", "replace"),
                        gi_id,
                        ci_id,
                        profile_id,
                        profile,
                        start,
                        size,
                        sms,
                        copy_engines,
                        decoders,
                        encoders,
                        jpegs,
                        ofas,
                        memory_mb * MiB,
                    ),
                )
            )
        return out

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
                self._health_memo = []
            rc = lib.fp_health(self._ctx, self._health_indices, len(gpus), self._health_out)
            if rc != SUCCESS:
                raise error_for(rc, self._message(rc), "health_sample")
            buf = self._health_buf
            old_memo = self._health_memo
            # The steady state: every GPU's bytes as last time (compared natively).
            if _native_same(buf, self._health_prev, len(gpus) * _HEALTH_SIZE) and len(
                old_memo
            ) == len(gpus):
                return [sample for _, sample in old_memo]
            memo: list[tuple[bytes, HealthSample]] = []
            samples = []
            for k, gpu in enumerate(gpus):
                raw = buf[k * _HEALTH_SIZE : (k + 1) * _HEALTH_SIZE]
                if k < len(old_memo) and old_memo[k][0] == raw and old_memo[k][1].uuid == gpu.uuid:
                    sample = old_memo[k][1]
                else:
                    sample = _health_record(gpu.index, gpu.uuid, _HEALTH_LAYOUT.unpack(raw))
                memo.append((raw, sample))
                samples.append(sample)
            self._health_memo = memo
            return samples

    def health_sample_gpu(self, index: int) -> HealthSample:
        """One GPU in one native call, with buffers of its own and no lock held across it."""
        self._check_open()
        gpu = next((g for g in self._known_gpus().gpus if g.index == index), None)
        if gpu is None:
            raise error_for(ERROR_INVALID_ARGUMENT, f"no GPU with NVML index {index}", self.name)
        indices = ffi.new("unsigned int[1]", [index])
        out = ffi.new("fp_health_t[1]")
        rc = lib.fp_health(self._ctx, indices, 1, out)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), "health_sample")
        return _health_record(index, gpu.uuid, _HEALTH_LAYOUT.unpack(ffi.buffer(out)))

    @property
    def calls_in_flight(self) -> int:
        """NVML calls inside the library right now (samples, compute mode, event waits)."""
        return int(lib.fp_busy(self._ctx))

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
            uuid=self._uuid_of(index),
            event_type=out.event_type,
            event_data=out.event_data,
            gpu_instance_id=out.gpu_instance_id,
            compute_instance_id=out.compute_instance_id,
        )

    def _uuid_of(self, index: int) -> str:
        """The UUID of the GPU at an NVML index in the latest inventory ("" if unknown)."""
        snapshot = self._snapshot
        for gpu in snapshot.gpus if snapshot is not None else ():
            if gpu.index == index:
                return gpu.uuid
        return ""

    # -- configuration and teardown --------------------------------------

    def set_compute_mode(self, gpu_uuid: str, mode: int) -> None:
        self._check_open()
        failed = ffi.new("int *")
        rc = lib.fp_set_compute_mode(self._ctx, gpu_uuid.encode(), mode, failed)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), _CALL_NAMES[failed[0]])

    def close(self, timeout: float | None = None) -> bool:
        """Shut NVML down, waiting at most timeout s for calls in flight. Idempotent."""
        self._closed = True
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        rc = lib.fp_close_timed(self._ctx, timeout_ms)
        if rc == ERROR_IN_USE:
            log.warning(
                "NVML left initialised: %d call(s) still inside NVML after %s",
                self.calls_in_flight,
                "waiting" if timeout is None else f"{timeout:g}s",
            )
            return False
        if rc not in (SUCCESS, ERROR_UNINITIALIZED):
            log.warning("nvmlShutdown: %s (rc=%d)", self._message(rc), rc)
        return True


def _mig_records(tail: bytes, profile_names: dict[int, str]) -> list[MigRecord] | None:
    """The MIG records of a GPU whose MIG devices all read; None if a profile id is unknown."""
    try:
        return [
            _new_tuple(
                MigRecord,
                (
                    slot,
                    uuid.decode("utf-8", "replace"),
                    gi_id,
                    ci_id,
                    profile_id,
                    profile_names[profile_id],
                    start,
                    size,
                    sms,
                    copy_engines,
                    decoders,
                    encoders,
                    jpegs,
                    ofas,
                    memory_mb * MiB,
                ),
            )
            for (
                slot,
                _handle_rc,
                _stop_rc,
                _stop_call,
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
            ) in _MIG_LAYOUT.iter_unpack(tail[_MIGS_IN_TAIL:])
        ]
    except KeyError:
        return None


def _profiles(raw: bytes, memos: tuple[_GpuMemo, ...]) -> _Profiles:
    """The MigProfiles of one GPU's profiles[] bytes, shared with any GPU with equal bytes.

    A node has one or two GPU models, so a scan comparing bytes beats hashing them.
    """
    if not raw:
        return _NO_PROFILES
    for memo in memos:
        for key, result in memo:
            if key[1] == raw and result[0] is not None:  # an abandoned GPU built none
                return result[2]
    profiles = tuple(_profile(p) for p in _PROFILE_LAYOUT.iter_unpack(raw))
    names: dict[int, str] = {}
    for p in profiles:  # the first profile with an id names it, as profile_by_id
        names.setdefault(p.profile_id, p.name)
    return profiles, names


def _profile(p: tuple[Any, ...]) -> MigProfile:
    """A MigProfile from an unpacked fp_profile_t."""
    n = p[13] if p[12] == SUCCESS else 0  # placement_count, when placements_rc is SUCCESS
    placements = p[14][: n * _PLACEMENT_LAYOUT.size]
    return _new_tuple(
        MigProfile,
        (
            p[2],
            profile_name(p[11].decode("utf-8", "replace")),
            p[3],
            p[10] * MiB,
            p[4],
            p[5],
            p[6],
            p[7],
            p[8],
            p[9],
            tuple(_PLACEMENT_LAYOUT.iter_unpack(placements)),
        ),
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
        recovery_rc,
        recovery,
    ) = fields
    if handle_rc != lib.FP_NOT_CALLED:  # no cached handle: nothing was sampled
        missing = _new_tuple(Reading, (0, handle_rc))
        return _new_sample(index, uuid, handle_rc, *([missing] * 12))
    if remap_rc != SUCCESS:
        remap_c = remap_u = remap_pending = remap_failure = 0
    rc = SUCCESS
    if not _DEVICE_LEVEL_CODES.isdisjoint(
        (reasons_rc, temperature_rc, ecc_c_rc, ecc_u_rc, retired_rc, remap_rc, link_rc, link_max_rc)
    ):
        rc = sample_rc(
            reasons_rc,
            temperature_rc,
            ecc_c_rc,
            ecc_u_rc,
            retired_rc,
            remap_rc,
            link_rc,
            link_max_rc,
        )
    # Readings are built inline (a helper call would cost as much): value 0 unless SUCCESS.
    return _new_sample(
        index,
        uuid,
        rc,
        _new_tuple(Reading, (reasons if reasons_rc == SUCCESS else 0, reasons_rc)),
        _new_tuple(Reading, (temperature if temperature_rc == SUCCESS else 0, temperature_rc)),
        _new_tuple(Reading, (ecc_c if ecc_c_rc == SUCCESS else 0, ecc_c_rc)),
        _new_tuple(Reading, (ecc_u if ecc_u_rc == SUCCESS else 0, ecc_u_rc)),
        _new_tuple(Reading, (retired if retired_rc == SUCCESS else 0, retired_rc)),
        _new_tuple(Reading, (remap_c, remap_rc)),
        _new_tuple(Reading, (remap_u, remap_rc)),
        _new_tuple(Reading, (remap_pending, remap_rc)),
        _new_tuple(Reading, (remap_failure, remap_rc)),
        _new_tuple(Reading, (link if link_rc == SUCCESS else 0, link_rc)),
        _new_tuple(Reading, (link_max if link_max_rc == SUCCESS else 0, link_max_rc)),
        _new_tuple(Reading, (recovery if recovery_rc == SUCCESS else 0, recovery_rc)),
    )
