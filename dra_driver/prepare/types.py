"""The preparer interface the kubelet servicers call, and its records.

The gRPC layer only translates protobuf to these records and back, so
v1 and v1beta1 share one implementation and tests can drive preparation
without gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]  # base request names ("gpu", never "gpu/sub")
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class UnprepareResult:
    error: str = ""


@dataclass
class PreparerInfo:
    """What a preparer says about itself (logged at start, shown by the demo)."""

    name: str
    notes: list[str] = field(default_factory=list)


class Preparer(Protocol):
    """Prepares and unprepares claims; one failing claim never fails the others.

    Both methods return exactly one entry per distinct claim UID in the input.
    """

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]: ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]: ...
