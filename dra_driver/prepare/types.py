"""The preparer interface the kubelet servicers call, and its records.

The gRPC layer only translates protobuf to these records and back, so
v1 and v1beta1 share one implementation and tests can drive preparation
without gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

# time.monotonic() by which the caller (the kubelet) needs its answer, or None.
# Set by the servicer for the preparer's tasks, so a preparer can bound its waits
# on the API server and answer with a per-claim error instead of DEADLINE_EXCEEDED.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("CALL_DEADLINE", default=None)


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


class ErrorKind(StrEnum):
    """Why a claim failed, from a small fixed set: metrics count by it, nobody parses text."""

    INVALID_CLAIM = "invalid_claim"  # the kubelet sent an unusable claim reference or UID
    CLAIM_NOT_FOUND = "claim_not_found"  # gone from the API server, or replaced (new UID)
    API_SERVER = "api_server"  # the claim could not be read (no API server, errors, timeouts)
    NOT_ALLOCATED = "not_allocated"  # no allocation, or one from another node's pool
    DEVICE_UNAVAILABLE = "device_unavailable"  # unknown here, or prepared for another claim
    DEVICE_UNHEALTHY = "device_unhealthy"
    CONFIG = "config"  # opaque configuration invalid or asking for what this driver cannot do
    NVML = "nvml"  # an NVML setting the configuration asks for failed
    CDI_OR_CHECKPOINT = "cdi_or_checkpoint"  # writing or removing the CDI spec or checkpoint
    BUSY = "busy"  # no capacity, or an earlier attempt still running, before the deadline
    INTERNAL = "internal"  # anything else: a bug or an unexpected failure


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""
    error_kind: ErrorKind | None = None  # set with error; None counts as INTERNAL


@dataclass(frozen=True)
class UnprepareResult:
    error: str = ""
    error_kind: ErrorKind | None = None  # set with error; None counts as INTERNAL


class ClaimError(Exception):
    """This claim cannot be prepared; the message goes to the kubelet verbatim."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INTERNAL) -> None:
        super().__init__(message)
        self.kind = kind


class Preparer(Protocol):
    """Prepares and unprepares claims; one failing claim never fails the others.

    Both methods return exactly one entry per distinct claim UID in the input.
    """

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]: ...

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]: ...


@runtime_checkable
class AnswersFromCheckpoint(Protocol):
    """A preparer that can answer already-prepared claims at once.

    Such answers need neither the API server nor capacity shared with slow
    work, so the servicer asks for them before queueing the rest.
    """

    async def prepared(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        """Answers for the claims that are prepared already; others are left out."""
        ...
