"""Semantics both NVML backends share, so their records match field by field.

The rules, decided once (the cffi C code applies the same ones natively):

* Inventory. Device count failing fails the inventory. Per GPU: a failed
  handle, minor number or UUID abandons that GPU (one DeviceError). Any call
  answering GPU_IS_LOST abandons the GPU too (only that DeviceError is kept,
  naming the call that saw it, MIG calls included: a lost MIG device is a
  lost parent). Other fields (name, brand, architecture, compute capability,
  memory, PCI bus id, MIG mode) become None ("" for name and bus id): silently
  when NVML says NOT_SUPPORTED / FUNCTION_NOT_FOUND, with an attribute-level
  DeviceError (the GPU is kept) for any other code.
* MIG. A GPU whose nvmlDeviceGetMigMode succeeds is MIG capable: its
  mig_profiles are the GI profile indices 0..GI_PROFILE_INDEX_COUNT-1 that
  answer SUCCESS, in index order, each with its possible placements (empty
  when that query fails). When MIG is enabled, slots 0..max-1 are probed:
  NOT_FOUND / INVALID_ARGUMENT mean an empty slot; a MIG device whose UUID,
  GI/CI id, GPU instance, GI info or attributes cannot be read is left out
  with a DeviceError carrying mig_index.
* UNINITIALIZED anywhere aborts the pass: the backend re-initialises NVML once
  (a driver reload invalidates the session) and reads again.
* Health. Each reading keeps its own rc (value 0 when not SUCCESS); the
  sample's rc is the first device-level code among them (GPU_IS_LOST,
  RESET_REQUIRED, UNINITIALIZED, DRIVER_NOT_LOADED), else SUCCESS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .errors import (
    ERROR_DRIVER_NOT_LOADED,
    ERROR_GPU_IS_LOST,
    ERROR_INVALID_ARGUMENT,
    ERROR_NOT_FOUND,
    ERROR_RESET_REQUIRED,
    ERROR_UNINITIALIZED,
    SUCCESS,
)
from .types import DeviceError, MigProfile

DEFAULT_LIBRARY = "libnvidia-ml.so.1"
MiB = 1024 * 1024

# NVML_GPU_INSTANCE_PROFILE_COUNT of the nvml.h the fast path is built with.
# Both backends probe exactly these indices; a newer header with more
# profiles must raise this (tests check it against the compiled header).
GI_PROFILE_INDEX_COUNT = 0x12

# Codes that end the reading of one GPU (lost) or of the whole pass (reload).
GPU_FATAL_CODES = frozenset({ERROR_GPU_IS_LOST, ERROR_UNINITIALIZED})
EMPTY_MIG_SLOT_CODES = frozenset({ERROR_NOT_FOUND, ERROR_INVALID_ARGUMENT})
DEVICE_LEVEL_CODES = (
    ERROR_GPU_IS_LOST,
    ERROR_RESET_REQUIRED,
    ERROR_UNINITIALIZED,
    ERROR_DRIVER_NOT_LOADED,
)

# NVML's exported symbol names, used as DeviceError.call by both backends.
CALL_COUNT = "nvmlDeviceGetCount_v2"
CALL_HANDLE_BY_INDEX = "nvmlDeviceGetHandleByIndex_v2"
CALL_MINOR = "nvmlDeviceGetMinorNumber"
CALL_UUID = "nvmlDeviceGetUUID"
CALL_NAME = "nvmlDeviceGetName"
CALL_BRAND = "nvmlDeviceGetBrand"
CALL_ARCHITECTURE = "nvmlDeviceGetArchitecture"
CALL_COMPUTE_CAPABILITY = "nvmlDeviceGetCudaComputeCapability"
CALL_MEMORY = "nvmlDeviceGetMemoryInfo"
CALL_PCI = "nvmlDeviceGetPciInfo_v3"
CALL_MIG_MODE = "nvmlDeviceGetMigMode"
CALL_PROFILE_INFO = "nvmlDeviceGetGpuInstanceProfileInfoV"
CALL_PLACEMENTS = "nvmlDeviceGetGpuInstancePossiblePlacements_v2"
CALL_MAX_MIG_COUNT = "nvmlDeviceGetMaxMigDeviceCount"
CALL_MIG_HANDLE = "nvmlDeviceGetMigDeviceHandleByIndex"
CALL_GPU_INSTANCE_ID = "nvmlDeviceGetGpuInstanceId"
CALL_COMPUTE_INSTANCE_ID = "nvmlDeviceGetComputeInstanceId"
CALL_GPU_INSTANCE_BY_ID = "nvmlDeviceGetGpuInstanceById"
CALL_GPU_INSTANCE_INFO = "nvmlGpuInstanceGetInfo"
CALL_ATTRIBUTES = "nvmlDeviceGetAttributes_v2"
CALL_INIT = "nvmlInit_v2"
CALL_EVENT_SET_CREATE = "nvmlEventSetCreate"
CALL_SUPPORTED_EVENTS = "nvmlDeviceGetSupportedEventTypes"
CALL_REGISTER_EVENTS = "nvmlDeviceRegisterEvents"
CALL_EVENT_WAIT = "nvmlEventSetWait_v2"
CALL_HANDLE_BY_UUID = "nvmlDeviceGetHandleByUUID"
CALL_SET_COMPUTE_MODE = "nvmlDeviceSetComputeMode"

_MIG_PREFIX = "MIG "

R = TypeVar("R")
_FACTORY_PREFIX = "_rf_"


class ReinitNeeded(Exception):
    """Internal: NVML answered UNINITIALIZED mid-pass (driver reload)."""


def fallback_message(code: int) -> str:
    """The text used when the library has no nvmlErrorString."""
    return f"NVML error {code}"


def decode(raw: bytes) -> str:
    """NVML strings are ASCII in practice; never let a stray byte fail a pass."""
    return raw.decode("utf-8", "replace")


def profile_name(raw: str) -> str:
    """NVML names GI profiles "MIG 1g.10gb"; the published profile is "1g.10gb"."""
    name = raw.strip()
    if name.startswith(_MIG_PREFIX):
        name = name[len(_MIG_PREFIX) :].strip()
    return name


def profile_by_id(profiles: tuple[MigProfile, ...], profile_id: int) -> MigProfile | None:
    for p in profiles:
        if p.profile_id == profile_id:
            return p
    return None


def unknown_profile_error(gpu_index: int, slot: int, profile_id: int) -> DeviceError:
    return DeviceError(
        gpu_index=gpu_index,
        code=ERROR_NOT_FOUND,
        message=f"GPU instance profile id {profile_id} is not among the GPU's profiles",
        call=CALL_PROFILE_INFO,
        mig_index=slot,
    )


def sample_rc(*rcs: int) -> int:
    """The device-level status of a health sample from its readings' codes."""
    for rc in rcs:
        if rc in DEVICE_LEVEL_CODES:
            return rc
    return SUCCESS


def record_factory(cls: type[R]) -> Callable[..., R]:
    """A positional constructor for a frozen record class that skips its __init__.

    A frozen dataclass's __init__ stores each field through object.__setattr__,
    which dominates building the thousands of records of a cold inventory. The
    returned function writes the fields straight into the new instance's
    __dict__ (several times cheaper) and yields an instance equal in every way
    to cls(*values): same type, ==, hash, repr, dataclasses.replace. Every
    field must be passed, in declaration order (defaults are not applied), so
    it is only for classes whose __init__ does nothing else; anything else is
    refused here, at import time.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = dataclasses.fields(cls)
    if (
        hasattr(cls, "__post_init__")
        or hasattr(cls, "__slots__")
        or any(not f.init or f.name.startswith(_FACTORY_PREFIX) for f in fields)
    ):
        raise TypeError(f"{cls.__name__}: record_factory needs a plain dataclass record")
    names = [f.name for f in fields]
    obj, d = f"{_FACTORY_PREFIX}obj", f"{_FACTORY_PREFIX}dict"
    source = "".join(
        [
            f"def make({', '.join(names)}):\n",
            f"    {obj} = {_FACTORY_PREFIX}new({_FACTORY_PREFIX}cls)\n",
            f"    {d} = {obj}.__dict__\n",
            *(f"    {d}[{name!r}] = {name}\n" for name in names),
            f"    return {obj}\n",
        ]
    )
    namespace: dict[str, Any] = {
        f"{_FACTORY_PREFIX}new": object.__new__,
        f"{_FACTORY_PREFIX}cls": cls,
    }
    exec(source, namespace)  # the technique dataclasses itself uses for __init__
    make = cast(Callable[..., R], namespace["make"])
    make.__qualname__ = f"record_factory({cls.__name__})"
    return make
