"""Typed NVML errors shared by every backend.

Each NVML return code maps to one exception class so callers can react to
the conditions that matter (a lost GPU, an uninitialised library, a missing
library) without string matching, while every other code still carries
NVML's own error string.
"""

from __future__ import annotations

# NVML return codes (nvml.h, nvmlReturn_t); only the values, so this module
# imports nothing native.
SUCCESS = 0
ERROR_UNINITIALIZED = 1
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_ALREADY_INITIALIZED = 5
ERROR_NOT_FOUND = 6
ERROR_INSUFFICIENT_SIZE = 7
ERROR_INSUFFICIENT_POWER = 8
ERROR_DRIVER_NOT_LOADED = 9
ERROR_TIMEOUT = 10
ERROR_IRQ_ISSUE = 11
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_CORRUPTED_INFOROM = 14
ERROR_GPU_IS_LOST = 15
ERROR_RESET_REQUIRED = 16
ERROR_OPERATING_SYSTEM = 17
ERROR_LIB_RM_VERSION_MISMATCH = 18
ERROR_IN_USE = 19
ERROR_MEMORY = 20
ERROR_NO_DATA = 21
ERROR_VGPU_ECC_NOT_ENABLED = 22
ERROR_INSUFFICIENT_RESOURCES = 23
ERROR_FREQ_NOT_SUPPORTED = 24
ERROR_ARGUMENT_VERSION_MISMATCH = 25
ERROR_DEPRECATED = 26
ERROR_NOT_READY = 27
ERROR_GPU_NOT_FOUND = 28
ERROR_INVALID_STATE = 29
ERROR_RESET_TYPE_NOT_SUPPORTED = 30
ERROR_UNKNOWN = 999


class NvmlError(Exception):
    """An NVML call returned something other than NVML_SUCCESS."""

    def __init__(self, code: int, message: str = "", call: str = "") -> None:
        self.code = code
        self.nvml_message = message or f"NVML error {code}"
        self.call = call
        where = f"{call}: " if call else ""
        super().__init__(f"{where}{self.nvml_message} (nvml rc={code})")


class NvmlUninitializedError(NvmlError):
    """NVML was not initialised (or was shut down / reloaded underneath us)."""


class NvmlLibraryNotFoundError(NvmlError):
    """libnvidia-ml could not be loaded at all."""


class NvmlGpuLostError(NvmlError):
    """The GPU fell off the bus or otherwise became inaccessible."""


class NvmlNotSupportedError(NvmlError):
    """The device or driver does not support the query; normal, not a fault."""


class NvmlFunctionNotFoundError(NvmlError):
    """The loaded NVML lacks the symbol (an older driver): treat as unsupported."""


class NvmlTimeoutError(NvmlError):
    """A wait (e.g. nvmlEventSetWait) ended without an event."""


class NvmlNoPermissionError(NvmlError):
    """The caller lacks the privilege (MIG create/destroy needs root or the MIG capability)."""


class NvmlNotFoundError(NvmlError):
    """No such object (a GPU instance already destroyed, an unknown UUID)."""


class NvmlInUseError(NvmlError):
    """The object is busy: processes on a compute instance, a compute instance on a GPU instance."""


class NvmlInsufficientResourcesError(NvmlError):
    """The request does not fit: an overlapping placement or a GPU at its instance limit."""


class NvmlDeadlineError(NvmlError):
    """NVML did not answer within the deadline the driver gave the call (code TIMEOUT).

    Raised by the deadline layer (dra_driver.nvml.deadline), above both
    backends: the native call may still be running; the caller no longer waits.
    """


_BY_CODE: dict[int, type[NvmlError]] = {
    ERROR_UNINITIALIZED: NvmlUninitializedError,
    ERROR_LIBRARY_NOT_FOUND: NvmlLibraryNotFoundError,
    ERROR_GPU_IS_LOST: NvmlGpuLostError,
    ERROR_NOT_SUPPORTED: NvmlNotSupportedError,
    ERROR_FUNCTION_NOT_FOUND: NvmlFunctionNotFoundError,
    ERROR_TIMEOUT: NvmlTimeoutError,
    ERROR_NO_PERMISSION: NvmlNoPermissionError,
    ERROR_NOT_FOUND: NvmlNotFoundError,
    ERROR_IN_USE: NvmlInUseError,
    ERROR_INSUFFICIENT_RESOURCES: NvmlInsufficientResourcesError,
}


def error_for(code: int, message: str = "", call: str = "") -> NvmlError:
    """Build the most specific exception for an NVML return code."""
    return _BY_CODE.get(code, NvmlError)(code, message, call)


def is_unsupported(code: int) -> bool:
    """Codes that mean "this device/driver cannot answer", not a failure."""
    return code in (ERROR_NOT_SUPPORTED, ERROR_FUNCTION_NOT_FOUND)
