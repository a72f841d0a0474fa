"""Issue 9, item 11: idle health streams never take the capacity prepare and unprepare need.

The server's MAX_CONCURRENT_RPCS counts open streams; health streams have a
cap of their own, well below it, with a clear RESOURCE_EXHAUSTED past it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from dra_driver.health.board import HealthBoard
from dra_driver.kubelet.dra import ClaimCalls, DRAPluginV1
from dra_driver.kubelet.health import HealthServicer
from dra_driver.kubelet.proto import drahealth_v1alpha1_pb2 as pb
from dra_driver.kubelet.server import MAX_CONCURRENT_RPCS, SocketServer
from dra_driver.kubelet.stubs import add_dra_v1, add_health_v1alpha1, health_v1alpha1_stub
from dra_driver.prepare.types import ClaimRef, PrepareResult, UnprepareResult
from dra_driver.testing.kubelet import DraClient


class OkPreparer:
    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return {c.uid: PrepareResult() for c in claims}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        return {c.uid: UnprepareResult() for c in claims}


@pytest.mark.timeout(90)
async def test_idle_health_streams_leave_capacity_for_prepare(short_dir: Path) -> None:
    health = HealthServicer(HealthBoard(["gpu-0"]), "node-a", resend_interval=60)
    calls = ClaimCalls(OkPreparer())

    def add(server: grpc.aio.Server) -> None:
        add_dra_v1(DRAPluginV1(calls), server)
        add_health_v1alpha1(health, server)

    srv = SocketServer("dra", short_dir / "dra.sock", add)
    await srv.start()
    channel = grpc.aio.insecure_channel(f"unix://{srv.path}")
    stub = health_v1alpha1_stub(channel)
    streams = []
    outcomes: list[object] = []
    try:
        # Opened in batches, each awaited, like watchers that come and stay: the server
        # sees at most the accepted ones plus one batch at a time (1,040 at once would
        # trip gRPC's own limit, which cancels some calls before our code sees them).
        for _ in range((MAX_CONCURRENT_RPCS + 16) // 65):
            batch = [stub.NodeWatchResources(pb.NodeWatchResourcesRequest()) for _ in range(65)]
            streams.extend(batch)
            outcomes += await asyncio.gather(*(s.read() for s in batch), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert refused and len(refused) < len(streams)
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("health streams" in (e.details() or "") for e in refused), refused[0]
        async with DraClient(srv.path) as client:
            claim = ClaimRef("default", "u1", "c")
            resp = await client.prepare([claim], timeout=5)
            assert resp.claims["u1"].error == ""
            resp = await client.unprepare([claim], timeout=5)
            assert resp.claims["u1"].error == ""
        assert 0 < health.active_streams <= MAX_CONCURRENT_RPCS // 4
    finally:
        for s in streams:
            s.cancel()
        await channel.close()
        health.close()
        await srv.stop(0)
