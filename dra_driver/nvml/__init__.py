"""The driver's only door to NVML: open_backend() plus the shared records and errors.

Two implementations serve the same NvmlBackend interface: the cffi fast path
(native/fastpath, one native call per job) and nvidia-ml-py (the fallback and
the reference the fast path is tested against).
"""

from __future__ import annotations

import logging

from ._common import DEFAULT_LIBRARY
from .errors import (
    ERROR_UNKNOWN,
    NvmlDeadlineError,
    NvmlError,
    NvmlFunctionNotFoundError,
    NvmlGpuLostError,
    NvmlInsufficientResourcesError,
    NvmlInUseError,
    NvmlLibraryNotFoundError,
    NvmlNoPermissionError,
    NvmlNotFoundError,
    NvmlNotSupportedError,
    NvmlTimeoutError,
    NvmlUninitializedError,
    error_for,
    is_unsupported,
)
from .migops import CreatedMig, MigManager, open_mig_manager
from .types import (
    HEALTH_EVENT_MASK,
    INSTANCE_ID_ALL,
    BackendInfo,
    DeviceError,
    EventRegistration,
    GpuRecord,
    HealthSample,
    MigProfile,
    MigRecord,
    NvmlBackend,
    NvmlEvent,
    NvmlSnapshot,
    Reading,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_LIBRARY",
    "HEALTH_EVENT_MASK",
    "INSTANCE_ID_ALL",
    "BackendInfo",
    "CreatedMig",
    "DeviceError",
    "EventRegistration",
    "GpuRecord",
    "HealthSample",
    "MigManager",
    "MigProfile",
    "MigRecord",
    "NvmlBackend",
    "NvmlDeadlineError",
    "NvmlError",
    "NvmlEvent",
    "NvmlFunctionNotFoundError",
    "NvmlGpuLostError",
    "NvmlInUseError",
    "NvmlInsufficientResourcesError",
    "NvmlLibraryNotFoundError",
    "NvmlNoPermissionError",
    "NvmlNotFoundError",
    "NvmlNotSupportedError",
    "NvmlSnapshot",
    "NvmlTimeoutError",
    "NvmlUninitializedError",
    "Reading",
    "error_for",
    "is_unsupported",
    "open_backend",
    "open_mig_manager",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cffi", "nvidia-ml-py")


def open_backend(library: str | None = None, backend: str = "auto") -> NvmlBackend:
    """Load NVML (library=None: libnvidia-ml.so.1 from the loader path) and init it.

    "auto" prefers the cffi fast path and falls back to nvidia-ml-py only when
    the extension cannot be imported (not built for this platform); an NVML
    problem is never papered over by switching backends. Raises
    NvmlLibraryNotFoundError when the library cannot be loaded, and the typed
    NvmlError of nvmlInit_v2 when initialisation fails.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown NVML backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    fallback_reason = ""
    if backend in ("auto", "cffi"):
        try:
            from .cffi_backend import CffiBackend
        except ImportError as e:
            if backend == "cffi":
                raise NvmlError(
                    ERROR_UNKNOWN, f"the cffi NVML fast path is not available: {e}", "import"
                ) from e
            fallback_reason = f"cffi fast path unavailable: {e}"
            log.warning("NVML: %s; using nvidia-ml-py", fallback_reason)
        else:
            return CffiBackend(library)
    from .pynvml_backend import PynvmlBackend

    return PynvmlBackend(library, fallback_reason=fallback_reason)
