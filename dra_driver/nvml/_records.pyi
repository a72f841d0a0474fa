"""Types of the CPython-API extension built from native/fastpath/records.c."""

from typing import Any

from .types import GpuRecord

INVENTORY_SIZE: int
HEAD_BIT: int

def configure(
    gpu_record: type, mig_record: type, mig_profile: type, gpu_fields: tuple[str, ...]
) -> None: ...
def diff(inventory: Any, previous: Any) -> int: ...
def same(current: Any, previous: Any, n: int) -> bool: ...
def gpu(inventory: Any, index: int, built: list[GpuRecord | None]) -> GpuRecord | None: ...
