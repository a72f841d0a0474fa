"""Creating and destroying MIG devices: one native call each (cffi), or nvidia-ml-py.

A MIG device is a GPU instance (GI) at a placement plus the compute instance
(CI) covering all of it. create() makes both or, when a step fails, neither
(what was made is destroyed again); destroy() removes the CI, then the GI.
Every NVML failure is raised as its typed NvmlError (INSUFFICIENT_RESOURCES,
IN_USE, NOT_SUPPORTED, NO_PERMISSION, ...), naming the call that failed. The
caller serialises creates and destroys per GPU; this module holds no lock
across NVML.

Both implementations load their own reference to the same library as the
inventory backend (dlopen and nvmlInit are reference counted), so they share
one NVML with it and never depend on it.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ._common import DEFAULT_LIBRARY, decode, fallback_message
from .errors import (
    ERROR_FUNCTION_NOT_FOUND,
    ERROR_INVALID_ARGUMENT,
    ERROR_LIBRARY_NOT_FOUND,
    ERROR_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
    ERROR_UNINITIALIZED,
    ERROR_UNKNOWN,
    SUCCESS,
    NvmlError,
    error_for,
)

if TYPE_CHECKING:
    from .deadline import GpuWorkers


@dataclass(frozen=True)
class CreatedMig:
    """A MIG device this driver made, with everything needed to find and destroy it."""

    parent_uuid: str
    uuid: str
    gi_profile_id: int
    placement_start: int
    placement_size: int
    gpu_instance_id: int
    compute_instance_id: int


class MigManager(Protocol):
    """Create and destroy MIG devices on one node's NVML."""

    name: str

    def create(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> CreatedMig:
        """Make the GI at placement_start and its CI; raise the typed NvmlError otherwise."""
        ...

    def destroy(self, parent_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> bool:
        """Destroy the CI and the GI; False when the GI was already gone."""
        ...

    def destroy_at(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> bool:
        """Destroy the GI of this profile at this placement (and its CIs), whatever its ids;
        False when there is none. For instances made but never recorded."""
        ...

    def close(self) -> None: ...


def _rollback_note(rollback_rc: int, gi: int, message: str) -> str:
    if rollback_rc in (-1, SUCCESS):
        return message
    return f"{message}; rolling back GPU instance {gi} also failed (nvml rc={rollback_rc})"


class CffiMigManager:
    """MigManager over the fast path: each create or destroy is one native call."""

    name = "cffi"

    def __init__(self, library: str | None = None) -> None:
        from ._fastpath import ffi, lib

        self._ffi, self._lib = ffi, lib
        path = library or DEFAULT_LIBRARY
        err = ffi.new("char[]", 1024)
        ctx = lib.fpm_open(path.encode(), err, 1024)
        if ctx == ffi.NULL:
            text = decode(ffi.string(err))
            raise error_for(ERROR_LIBRARY_NOT_FOUND, f"cannot load {path}: {text}", "dlopen")
        self._ctx: Any = ffi.gc(ctx, lib.fpm_free)
        rc = lib.fpm_init(self._ctx)
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), "nvmlInit_v2")
        buf = ffi.new("char[]", 1024)
        lib.fpm_missing_symbols(self._ctx, buf, 1024)
        self.missing_symbols = [s for s in decode(ffi.string(buf)).split(",") if s]
        self.nvml_calls = 0
        self._closed = False

    def _message(self, rc: int) -> str:
        ptr = self._lib.fpm_error_string(self._ctx, rc)
        return decode(self._ffi.string(ptr)) if ptr != self._ffi.NULL else fallback_message(rc)

    def _call_name(self, call: int) -> str:
        return decode(self._ffi.string(self._lib.fpm_call_name(call)))

    def _result(self) -> Any:
        if self._closed:
            raise error_for(ERROR_UNINITIALIZED, "MIG manager is closed", self.name)
        return self._ffi.new("fpm_result_t *")

    def create(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> CreatedMig:
        out = self._result()
        rc = self._lib.fpm_create(
            self._ctx, parent_uuid.encode(), gi_profile_id, placement_start, out
        )
        self.nvml_calls += out.nvml_calls
        if rc != SUCCESS:
            message = _rollback_note(out.rollback_rc, out.gpu_instance_id, self._message(rc))
            raise error_for(rc, message, self._call_name(out.call))
        return CreatedMig(
            parent_uuid=parent_uuid,
            uuid=decode(self._ffi.string(out.uuid)),
            gi_profile_id=gi_profile_id,
            placement_start=out.placement_start,
            placement_size=out.placement_size,
            gpu_instance_id=out.gpu_instance_id,
            compute_instance_id=out.compute_instance_id,
        )

    def destroy(self, parent_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> bool:
        out = self._result()
        rc = self._lib.fpm_destroy(
            self._ctx, parent_uuid.encode(), gpu_instance_id, compute_instance_id, out
        )
        self.nvml_calls += out.nvml_calls
        if rc == ERROR_NOT_FOUND and out.call == self._lib.FPM_CALL_GI_BY_ID:
            return False
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), self._call_name(out.call))
        return True

    def destroy_at(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> bool:
        out = self._result()
        rc = self._lib.fpm_destroy_at(
            self._ctx, parent_uuid.encode(), gi_profile_id, placement_start, out
        )
        self.nvml_calls += out.nvml_calls
        if rc == ERROR_NOT_FOUND and out.call == self._lib.FPM_CALL_GPU_INSTANCES:
            return False
        if rc != SUCCESS:
            raise error_for(rc, self._message(rc), self._call_name(out.call))
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._lib.fpm_close(self._ctx)


# NVML_COMPUTE_INSTANCE_PROFILE_* (nvml.h) of the CI that covers a GI of this many slices.
_CI_PROFILE_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
_CI_PROFILE_COUNT = 9  # NVML_COMPUTE_INSTANCE_PROFILE_COUNT


class PynvmlMigManager:
    """MigManager over nvidia-ml-py: the same steps, one ctypes call each (parity tests)."""

    name = "nvidia-ml-py"

    def __init__(self, library: str | None = None) -> None:
        import pynvml

        from .pynvml_backend import _Library

        self._nvml = pynvml
        self._library = _Library
        _Library.acquire(library or DEFAULT_LIBRARY)
        try:
            self._nvml.nvmlInit()
        except pynvml.NVMLError as e:
            _Library.release()
            raise error_for(int(e.value), str(e), "nvmlInit_v2") from e
        self.nvml_calls = 0
        self._closed = False
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any) -> Any:
        if self._closed:
            raise error_for(ERROR_UNINITIALIZED, "MIG manager is closed", self.name)
        self.nvml_calls += 1
        try:
            return getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as e:
            raise error_for(int(e.value), str(e), name) from e
        except AttributeError as e:  # an nvidia-ml-py too old to wrap the call
            raise error_for(ERROR_FUNCTION_NOT_FOUND, str(e), name) from e

    def create(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> CreatedMig:
        n = self._nvml
        dev = self._call("nvmlDeviceGetHandleByUUID", parent_uuid)
        info = (
            self._call("nvmlDeviceGetGpuInstanceProfileInfoById", dev, gi_profile_id)
            if hasattr(n, "nvmlDeviceGetGpuInstanceProfileInfoById")
            else None
        )
        slices = info.sliceCount if info is not None else self._slices(dev, gi_profile_id)
        ci_index = _CI_PROFILE_BY_SLICES.get(slices)
        if ci_index is None:
            raise error_for(
                ERROR_NOT_SUPPORTED,
                f"no CI profile covers {slices} slices",
                "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
            )
        placements = (n.c_nvmlGpuInstancePlacement_t * 16)()
        count = ctypes.c_uint(16)
        self._call(
            "nvmlDeviceGetGpuInstancePossiblePlacements",
            dev,
            gi_profile_id,
            placements,
            ctypes.byref(count),
        )
        match = [p for p in placements[: count.value] if p.start == placement_start]
        if not match:
            raise error_for(
                ERROR_INVALID_ARGUMENT,
                "not a placement this profile offers",
                "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
            )
        want = n.c_nvmlGpuInstancePlacement_t()
        want.start, want.size = match[0].start, match[0].size
        # nvidia-ml-py hands the placement through as given: it must be a pointer.
        gi = self._call(
            "nvmlDeviceCreateGpuInstanceWithPlacement", dev, gi_profile_id, ctypes.byref(want)
        )
        ci = None
        try:
            gi_info = self._call("nvmlGpuInstanceGetInfo", gi)
            ci_profile = self._call("nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, ci_index, 0)
            ci = self._call("nvmlGpuInstanceCreateComputeInstance", gi, ci_profile.id)
            ci_info = self._call("nvmlComputeInstanceGetInfo", ci)
            uuid = self._uuid_of(dev, gi_info.id, ci_info.id)
        except NvmlError as failure:
            rollback = SUCCESS
            try:
                if ci is not None:
                    self._call("nvmlComputeInstanceDestroy", ci)
                self._call("nvmlGpuInstanceDestroy", gi)
            except NvmlError as e:
                rollback = e.code
            if rollback != SUCCESS:
                raise error_for(
                    failure.code, _rollback_note(rollback, -1, failure.nvml_message), failure.call
                ) from failure
            raise
        return CreatedMig(
            parent_uuid=parent_uuid,
            uuid=uuid,
            gi_profile_id=gi_profile_id,
            placement_start=gi_info.placement.start,
            placement_size=gi_info.placement.size,
            gpu_instance_id=gi_info.id,
            compute_instance_id=ci_info.id,
        )

    def _slices(self, dev: Any, profile_id: int) -> int:
        for index in range(16):
            try:
                info = self._call("nvmlDeviceGetGpuInstanceProfileInfo", dev, index)
            except NvmlError:
                continue
            if info.id == profile_id:
                return int(info.sliceCount)
        raise error_for(
            ERROR_INVALID_ARGUMENT,
            f"no GI profile id {profile_id}",
            "nvmlDeviceGetGpuInstanceProfileInfo",
        )

    def _uuid_of(self, dev: Any, gi: int, ci: int) -> str:
        for index in range(self._call("nvmlDeviceGetMaxMigDeviceCount", dev)):
            try:
                mig = self._call("nvmlDeviceGetMigDeviceHandleByIndex", dev, index)
            except NvmlError as e:
                if e.code in (ERROR_NOT_FOUND, ERROR_INVALID_ARGUMENT):
                    continue
                raise
            if (
                self._call("nvmlDeviceGetGpuInstanceId", mig) == gi
                and self._call("nvmlDeviceGetComputeInstanceId", mig) == ci
            ):
                uuid = self._call("nvmlDeviceGetUUID", mig)
                return uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        raise error_for(
            ERROR_NOT_FOUND,
            f"no MIG device for GI {gi} CI {ci}",
            "nvmlDeviceGetMigDeviceHandleByIndex",
        )

    def destroy(self, parent_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> bool:
        dev = self._call("nvmlDeviceGetHandleByUUID", parent_uuid)
        try:
            gi = self._call("nvmlDeviceGetGpuInstanceById", dev, gpu_instance_id)
        except NvmlError as e:
            if e.code == ERROR_NOT_FOUND:
                return False
            raise
        try:
            ci = self._call("nvmlGpuInstanceGetComputeInstanceById", gi, compute_instance_id)
        except NvmlError as e:
            if e.code != ERROR_NOT_FOUND:
                raise
        else:
            self._call("nvmlComputeInstanceDestroy", ci)
        self._call("nvmlGpuInstanceDestroy", gi)
        return True

    def destroy_at(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> bool:
        n = self._nvml
        dev = self._call("nvmlDeviceGetHandleByUUID", parent_uuid)
        gis = (n.c_nvmlGpuInstance_t * 16)()
        count = ctypes.c_uint(16)
        self._call("nvmlDeviceGetGpuInstances", dev, gi_profile_id, gis, ctypes.byref(count))
        for gi in gis[: count.value]:
            if self._call("nvmlGpuInstanceGetInfo", gi).placement.start != placement_start:
                continue
            for profile in range(_CI_PROFILE_COUNT):
                cis = (n.c_nvmlComputeInstance_t * 8)()
                found = ctypes.c_uint(8)
                try:
                    self._call(
                        "nvmlGpuInstanceGetComputeInstances", gi, profile, cis, ctypes.byref(found)
                    )
                except NvmlError:
                    continue
                for ci in cis[: found.value]:
                    self._call("nvmlComputeInstanceDestroy", ci)
            self._call("nvmlGpuInstanceDestroy", gi)
            return True
        return False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
        finally:
            self._library.release()


def open_mig_manager(library: str | None = None, backend: str = "auto") -> MigManager:
    """The MIG manager of the given backend ("auto" prefers the fast path)."""
    if backend in ("auto", "cffi"):
        try:
            return CffiMigManager(library)
        except ImportError as e:
            if backend == "cffi":
                raise NvmlError(
                    ERROR_UNKNOWN, f"the cffi fast path is unavailable: {e}", "import"
                ) from e
    return PynvmlMigManager(library)


# A real GPU instance takes on the order of a second to create; a GPU that
# does not answer for this long is treated as hung.
DEFAULT_MIG_DEADLINE = 30.0


class GuardedMigManager:
    """A MigManager whose calls run on the GPU's own worker with a deadline (nvml/deadline.py).

    A create or destroy stuck in NVML is abandoned by its caller with
    NvmlDeadlineError (the claim fails, its intent stays in the checkpoint),
    and later calls on that GPU fail at once while it stays stuck, instead of
    queueing behind it; other GPUs are not delayed.
    """

    def __init__(
        self, manager: MigManager, workers: GpuWorkers, deadline: float = DEFAULT_MIG_DEADLINE
    ) -> None:
        self.manager = manager
        self.workers = workers
        self.deadline = deadline
        self.name = manager.name

    def create(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> CreatedMig:
        return self.workers.call(
            parent_uuid,
            self.deadline,
            self.manager.create,
            parent_uuid,
            gi_profile_id,
            placement_start,
            what="create MIG device",
        )

    def destroy(self, parent_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> bool:
        return self.workers.call(
            parent_uuid,
            self.deadline,
            self.manager.destroy,
            parent_uuid,
            gpu_instance_id,
            compute_instance_id,
            what="destroy MIG device",
        )

    def destroy_at(self, parent_uuid: str, gi_profile_id: int, placement_start: int) -> bool:
        return self.workers.call(
            parent_uuid,
            self.deadline,
            self.manager.destroy_at,
            parent_uuid,
            gi_profile_id,
            placement_start,
            what="destroy MIG device by placement",
        )

    def close(self) -> None:
        self.manager.close()
