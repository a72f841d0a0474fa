"""Issue 9, items 5 and 6: one stuck claim or a hung API server never delays unrelated answers.

5: kubelet retries of a never-finishing prepare join the running attempt
   instead of each holding one of the servicer's slots.
6: checkpoint hits and unprepares need neither the API server nor threads
   and slots that API reads hold; API reads end at the kubelet's deadline
   with a per-claim error, not the whole call's DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hardening_node import Node, make_node

from dra_driver.kubelet.dra import ClaimCalls, DRAPluginV1
from dra_driver.kubelet.server import SocketServer
from dra_driver.kubelet.stubs import add_dra_v1
from dra_driver.prepare.preparer import ClaimPreparer
from dra_driver.prepare.types import ClaimRef
from dra_driver.testing import MemoryClaimSource
from dra_driver.testing.kubelet import DraClient


class GatedSource:
    """A claim source whose reads of some claims (or of all, when hung) block until released."""

    def __init__(self, inner: MemoryClaimSource, stuck: set[str]) -> None:
        self.inner = inner
        self.stuck = stuck
        self.hung = False
        self.release = threading.Event()

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        if self.hung or name in self.stuck:
            self.release.wait(30)
        return self.inner.get_claim(namespace, name)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path, gpus=8, mig_gpus=())


@pytest.fixture
async def gated(node: Node) -> AsyncIterator[tuple[ClaimPreparer, GatedSource]]:
    source = GatedSource(node.source, {"claim-0"})
    prep = node.preparer(source=source)
    await prep.start()
    try:
        yield prep, source
    finally:
        source.release.set()
        await prep.close()


async def test_retries_of_a_stuck_claim_hold_no_capacity(
    node: Node, gated: tuple[ClaimPreparer, GatedSource]
) -> None:
    prep, _ = gated
    calls = ClaimCalls(prep, max_concurrent=4)
    stuck = node.put(0, {"request": "gpu", "device": "gpu-0"})
    for _ in range(8):  # the kubelet retrying after each of its deadlines
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(calls.prepare([stuck]), 0.05)
    other = node.put(1, {"request": "gpu", "device": "gpu-1"})
    start = time.monotonic()
    result = (await asyncio.wait_for(calls.prepare([other]), 5))[other.uid]
    assert result.error == "" and time.monotonic() - start < 1.0


async def test_cached_prepare_and_unprepare_do_not_wait_behind_a_hung_api(
    node: Node, gated: tuple[ClaimPreparer, GatedSource]
) -> None:
    prep, source = gated
    calls = ClaimCalls(prep)
    done = node.put(1, {"request": "gpu", "device": "gpu-1"})
    first = (await calls.prepare([done]))[done.uid]
    assert first.error == ""
    source.hung = True
    waiting = [node.put(n, {"request": "gpu", "device": f"gpu-{n % 8}"}) for n in range(10, 110)]
    outstanding = [asyncio.ensure_future(calls.prepare([r])) for r in waiting]
    await asyncio.sleep(0.2)  # every API thread and every slot is taken now
    start = time.monotonic()
    again = (await asyncio.wait_for(calls.prepare([done]), 5))[done.uid]
    cached_s = time.monotonic() - start
    assert again == first and cached_s < 0.5, cached_s
    start = time.monotonic()
    gone = (await asyncio.wait_for(calls.unprepare([done]), 5))[done.uid]
    unprepare_s = time.monotonic() - start
    assert gone.error == "" and unprepare_s < 0.5, unprepare_s
    source.release.set()
    await asyncio.gather(*outstanding)


async def test_api_read_ends_at_the_kubelet_deadline_with_a_per_claim_error(
    node: Node, gated: tuple[ClaimPreparer, GatedSource], short_dir: Path
) -> None:
    prep, source = gated
    source.hung = True
    calls = ClaimCalls(prep)
    srv = SocketServer("dra", short_dir / "dra.sock", lambda s: add_dra_v1(DRAPluginV1(calls), s))
    await srv.start()
    try:
        ref = node.put(1, {"request": "gpu", "device": "gpu-1"})
        async with DraClient(srv.path) as client:
            start = time.monotonic()
            try:
                resp = await client.prepare([ref], timeout=2.0)
            except grpc.aio.AioRpcError as e:
                pytest.fail(f"the whole call failed: {e.code()}")
            took = time.monotonic() - start
    finally:
        source.release.set()
        await srv.stop(0)
    error = resp.claims[ref.uid].error
    assert "API server" in error and "deadline" in error, error
    assert took < 2.0


class RecordingWriter:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def prepared(self, ref: ClaimRef, devices: Any) -> None:
        self.seen.append(ref.uid)

    def unprepared(self, ref: ClaimRef) -> None:
        pass


async def test_the_claim_status_wrapper_keeps_the_checkpoint_fast_path(
    node: Node, gated: tuple[ClaimPreparer, GatedSource]
) -> None:
    from dra_driver.claimstatus.hook import StatusReportingPreparer
    from dra_driver.prepare.types import AnswersFromCheckpoint

    prep, source = gated
    writer = RecordingWriter()
    wrapped = StatusReportingPreparer(prep, writer)  # type: ignore[arg-type]
    assert isinstance(wrapped, AnswersFromCheckpoint)
    calls = ClaimCalls(wrapped, max_concurrent=1)
    done = node.put(1, {"request": "gpu", "device": "gpu-1"})
    assert (await calls.prepare([done]))[done.uid].error == ""
    source.hung = True
    blocked = asyncio.ensure_future(
        calls.prepare([node.put(2, {"request": "gpu", "device": "gpu-2"})])
    )
    await asyncio.sleep(0.2)  # the only slot is taken by a call waiting on the API
    again = (await asyncio.wait_for(calls.prepare([done]), 2))[done.uid]
    assert again.error == "" and writer.seen == [done.uid, done.uid]
    source.release.set()
    await blocked
