"""DRAResourceHealth (v1alpha1) servicer: the per-device health stream to the kubelet.

Every message is the complete device list (the kubelet treats it as such and
marks missing devices Unknown). The kubelet evaluates staleness lazily against
last_updated_time, so the list is re-sent periodically with a fresh timestamp
even when nothing changed, well inside health_check_timeout_seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

import grpc

from ..health.board import DeviceHealth, Health, HealthBoard
from .dra import truncate_utf8
from .options import DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_HEALTH_STREAMS, DEFAULT_RESEND_INTERVAL
from .proto import drahealth_v1alpha1_pb2 as pb
from .proto import drahealth_v1alpha1_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The kubelet keeps at most 1024 characters (1021 + "..."); cutting to 1024
# UTF-8 bytes ourselves satisfies that and keeps multi-byte text valid.
MAX_MESSAGE_BYTES = 1024

_STATUS = {
    Health.HEALTHY: pb.HEALTHY,
    Health.DEGRADED: pb.HEALTHY,  # usable; the message says what is wrong
    Health.UNHEALTHY: pb.UNHEALTHY,
    Health.UNKNOWN: pb.UNKNOWN,
}


def device_health_message(
    d: DeviceHealth, pool: str, now: int, timeout_seconds: int
) -> pb.DeviceHealth:
    return pb.DeviceHealth(
        device=pb.DeviceIdentifier(pool_name=pool, device_name=d.device),
        health=_STATUS[d.health],
        last_updated_time=now,
        health_check_timeout_seconds=timeout_seconds,
        message=truncate_utf8(d.message, MAX_MESSAGE_BYTES),
    )


class HealthServicer(pb_grpc.DRAResourceHealthServicer):
    """Streams the HealthBoard to any number of watchers."""

    def __init__(
        self,
        board: HealthBoard,
        pool_name: str,
        resend_interval: float = DEFAULT_RESEND_INTERVAL,
        timeout_seconds: int = DEFAULT_HEALTH_TIMEOUT,
        max_streams: int = DEFAULT_MAX_HEALTH_STREAMS,
    ) -> None:
        if resend_interval <= 0:
            raise ValueError("resend_interval must be positive")
        self._board = board
        self._pool = pool_name
        self._resend = resend_interval
        # A resend must always land before the kubelet considers a device stale.
        self._timeout = max(timeout_seconds, math.ceil(3 * resend_interval))
        self._closing = asyncio.Event()
        self._streams = 0
        self._max_streams = max_streams

    @property
    def active_streams(self) -> int:
        return self._streams

    @property
    def timeout_seconds(self) -> int:
        return self._timeout

    def close(self) -> None:
        """End every stream (at shutdown), so that server.stop() need not wait its grace."""
        self._closing.set()

    def snapshot_message(self) -> pb.NodeWatchResourcesResponse:
        now = int(time.time())
        return pb.NodeWatchResourcesResponse(
            devices=[
                device_health_message(d, self._pool, now, self._timeout)
                for d in self._board.snapshot()
            ]
        )

    async def NodeWatchResources(
        self, request: pb.NodeWatchResourcesRequest, context: object
    ) -> AsyncIterator[pb.NodeWatchResourcesResponse]:
        if self._streams >= self._max_streams:
            log.warning("refused a health stream: %d open already", self._streams)
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many health streams: {self._streams} are open, this plugin serves at "
                f"most {self._max_streams}; close idle ones (the kubelet needs one)",
            )
            return
        self._streams += 1
        log.debug("health watcher connected (%d active)", self._streams)
        try:
            while not self._closing.is_set():
                version = self._board.version  # read before the snapshot: never miss a change
                yield self.snapshot_message()
                await self._wait_change_or_resend(version)
        finally:
            self._streams -= 1
            log.debug("health watcher gone (%d active)", self._streams)

    async def _wait_change_or_resend(self, version: int) -> None:
        changed = asyncio.ensure_future(self._board.wait_changed(version, self._resend))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({changed, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            closing.cancel()


async def _abort(context: object, code: grpc.StatusCode, details: str) -> None:
    """End the call with code (a grpc.aio context raises out of here)."""
    abort = getattr(context, "abort", None)
    if abort is None:  # called without gRPC (tests): the refusal is the end of the stream
        return
    await abort(code, details)
