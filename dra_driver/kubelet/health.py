"""DRAResourceHealth servicers (v1 and v1alpha1): the per-device health stream to the kubelet.

One stream implementation serves both wire versions: a 1.37 kubelet opens
`v1.DRAResourceHealth`, a 1.36 one `v1alpha1.DRAResourceHealth`, and the two
protos carry the same messages (only the proto package differs), so each
service is a thin adapter that hands the shared stream its own message module.

Every message is the complete device list (the kubelet treats it as such and
marks missing devices Unknown). The kubelet evaluates staleness lazily against
last_updated_time, so the list is re-sent periodically even when nothing
changed, well inside health_check_timeout_seconds. last_updated_time is the
time of the last successful check of each device, never the time of the
resend: a device whose checks stopped (NVML hung) goes stale at the kubelet
too, even if our own watchdog were to miss it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc

from ..health.board import DeviceHealth, Health, HealthBoard
from .dra import truncate_utf8
from .options import DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_HEALTH_STREAMS, DEFAULT_RESEND_INTERVAL
from .proto import drahealth_v1_pb2 as pb_v1
from .proto import drahealth_v1_pb2_grpc as pb_v1_grpc
from .proto import drahealth_v1alpha1_pb2 as pb_v1alpha1
from .proto import drahealth_v1alpha1_pb2_grpc as pb_v1alpha1_grpc

log = logging.getLogger(__name__)

# The kubelet keeps at most 1024 characters (1021 + "..."); cutting to 1024
# UTF-8 bytes ourselves satisfies that and keeps multi-byte text valid.
MAX_MESSAGE_BYTES = 1024

# HealthStatus numbers are the same in both protos (UNKNOWN 0, HEALTHY 1, UNHEALTHY 2).
_STATUS = {
    Health.HEALTHY: pb_v1alpha1.HEALTHY,
    Health.DEGRADED: pb_v1alpha1.HEALTHY,  # usable; the message says what is wrong
    Health.UNHEALTHY: pb_v1alpha1.UNHEALTHY,
    Health.UNKNOWN: pb_v1alpha1.UNKNOWN,
}


def device_health_message(
    d: DeviceHealth, pool: str, timeout_seconds: int, pb: ModuleType = pb_v1alpha1
) -> Any:
    """One DeviceHealth of the given proto module (v1 or v1alpha1)."""
    return pb.DeviceHealth(
        device=pb.DeviceIdentifier(pool_name=pool, device_name=d.device),
        health=_STATUS[d.health],
        last_updated_time=int(d.checked_at),
        health_check_timeout_seconds=timeout_seconds,
        message=truncate_utf8(d.message, MAX_MESSAGE_BYTES),
    )


class HealthServicer:
    """Streams the HealthBoard to any number of watchers, of either wire version."""

    def __init__(
        self,
        board: HealthBoard,
        pool_name: str,
        resend_interval: float = DEFAULT_RESEND_INTERVAL,
        timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT,
        check_interval: float = 0.0,
        max_streams: int = DEFAULT_MAX_HEALTH_STREAMS,
    ) -> None:
        if resend_interval <= 0:
            raise ValueError("resend_interval must be positive")
        self._board = board
        self._pool = pool_name
        self._resend = resend_interval
        # A resend, and a fresh check, must always land before the kubelet
        # considers a device stale (last_updated_time is the check's time).
        self._timeout = max(timeout_seconds, math.ceil(3 * max(resend_interval, check_interval)))
        self._closing = asyncio.Event()
        self._streams = 0
        self._max_streams = max_streams
        self.v1 = _V1Servicer(self)
        self.v1alpha1 = _V1alpha1Servicer(self)

    @property
    def active_streams(self) -> int:
        return self._streams

    @property
    def timeout_seconds(self) -> int:
        return self._timeout

    def close(self) -> None:
        """End every stream (at shutdown), so that server.stop() need not wait its grace."""
        self._closing.set()

    def snapshot_message(self, pb: ModuleType = pb_v1alpha1) -> Any:
        return pb.NodeWatchResourcesResponse(
            devices=[
                device_health_message(d, self._pool, self._timeout, pb)
                for d in self._board.snapshot()
            ]
        )

    async def stream(
        self, pb: ModuleType, version: str, context: object = None
    ) -> AsyncIterator[Any]:
        """The shared stream: the full list now, then on every change or resend interval.

        Past max_streams open ones (of both versions) a stream is refused with
        RESOURCE_EXHAUSTED: idle streams count against the server's
        MAX_CONCURRENT_RPCS, which prepare and unprepare need.
        """
        if self._streams >= self._max_streams:
            log.warning("refused a health stream (%s): %d open already", version, self._streams)
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many health streams: {self._streams} are open, this plugin serves at "
                f"most {self._max_streams}; close idle ones (the kubelet needs one)",
            )
            return
        self._streams += 1
        log.debug("%s health watcher connected (%d active)", version, self._streams)
        try:
            while not self._closing.is_set():
                version_seen = self._board.version  # read before the snapshot: never miss one
                yield self.snapshot_message(pb)
                await self._wait_change_or_resend(version_seen)
        finally:
            self._streams -= 1
            log.debug("%s health watcher gone (%d active)", version, self._streams)

    # v1alpha1 callers (and tests) that address the servicer itself.
    async def NodeWatchResources(self, request: object, context: object) -> AsyncIterator[Any]:
        async for message in self.stream(pb_v1alpha1, "v1alpha1", context):
            yield message

    async def _wait_change_or_resend(self, version: int) -> None:
        changed = asyncio.ensure_future(self._board.wait_changed(version, self._resend))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({changed, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            closing.cancel()


class _V1Servicer(pb_v1_grpc.DRAResourceHealthServicer):
    """`v1.DRAResourceHealth` (Kubernetes 1.37+)."""

    def __init__(self, core: HealthServicer) -> None:
        self._core = core

    async def NodeWatchResources(
        self, request: pb_v1.NodeWatchResourcesRequest, context: object
    ) -> AsyncIterator[pb_v1.NodeWatchResourcesResponse]:
        # grpc.aio streams only from an async generator function, so no plain delegation.
        async for message in self._core.stream(pb_v1, "v1", context):
            yield message


class _V1alpha1Servicer(pb_v1alpha1_grpc.DRAResourceHealthServicer):
    """`v1alpha1.DRAResourceHealth` (Kubernetes 1.34-1.36; removal planned for 1.40)."""

    def __init__(self, core: HealthServicer) -> None:
        self._core = core

    async def NodeWatchResources(
        self, request: pb_v1alpha1.NodeWatchResourcesRequest, context: object
    ) -> AsyncIterator[pb_v1alpha1.NodeWatchResourcesResponse]:
        async for message in self._core.stream(pb_v1alpha1, "v1alpha1", context):
            yield message


async def _abort(context: object, code: grpc.StatusCode, details: str) -> None:
    """End the call with code (a grpc.aio context raises out of here)."""
    abort = getattr(context, "abort", None)
    if abort is None:  # called without gRPC (tests): the refusal is the end of the stream
        return
    await abort(code, details)
