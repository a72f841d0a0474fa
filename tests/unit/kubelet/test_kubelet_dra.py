"""DRAPlugin v1/v1beta1 servicers over a real grpc.aio unix socket, with an in-test Preparer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from dra_driver.kubelet.dra import ClaimCalls, DRAPluginV1, DRAPluginV1beta1, collect_claims
from dra_driver.kubelet.proto import dra_v1_pb2
from dra_driver.kubelet.server import SocketServer
from dra_driver.kubelet.stubs import add_dra_v1, add_dra_v1beta1
from dra_driver.prepare.types import ClaimRef, PreparedDevice, PrepareResult, UnprepareResult
from dra_driver.testing import DraClient


class FakePreparer:
    """Prepares every claim onto one device; fails claims whose name starts with "bad"."""

    def __init__(self) -> None:
        self.prepare_calls: list[list[ClaimRef]] = []
        self.unprepare_calls: list[list[ClaimRef]] = []
        self.raise_on_prepare: Exception | None = None
        self.drop_uids: set[str] = set()
        self.delay = 0.0
        self.finished: list[str] = []
        self.active = 0
        self.max_active = 0

    async def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        self.prepare_calls.append(list(claims))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.raise_on_prepare is not None:
                raise self.raise_on_prepare
            out = {}
            for c in claims:
                if c.uid in self.drop_uids:
                    continue
                if c.name == "bad-verbose":
                    out[c.uid] = PrepareResult(error="é" * 10_000)
                    continue
                if c.name.startswith("bad"):
                    out[c.uid] = PrepareResult(error=f"cannot prepare {c.name}")
                    continue
                dev = PreparedDevice(
                    request_names=("gpu",),
                    pool_name="node-a",
                    device_name="gpu-0",
                    cdi_device_ids=(f"k8s.gpu.nvidia.com/claim={c.uid}-gpu-0",),
                    share_id="3f1c2a8e-share" if c.name == "shared" else None,
                )
                out[c.uid] = PrepareResult(devices=(dev,))
            self.finished.extend(c.uid for c in claims)
            return out
        finally:
            self.active -= 1

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, UnprepareResult]:
        self.unprepare_calls.append(list(claims))
        return {c.uid: UnprepareResult(error="busy" if c.name == "bad" else "") for c in claims}


@pytest.fixture
def preparer() -> FakePreparer:
    return FakePreparer()


@pytest.fixture
async def endpoint(short_dir: Path, preparer: FakePreparer) -> AsyncIterator[Path]:
    calls = ClaimCalls(preparer, max_concurrent=2)

    def add(server: grpc.aio.Server) -> None:
        add_dra_v1(DRAPluginV1(calls), server)
        add_dra_v1beta1(DRAPluginV1beta1(calls), server)

    srv = SocketServer("dra", short_dir / "dra.sock", add)
    await srv.start()
    yield srv.path
    await srv.stop(1)


def claim(uid: str, name: str = "c", ns: str = "default") -> ClaimRef:
    return ClaimRef(namespace=ns, uid=uid, name=name)


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_one_entry_per_claim_and_per_claim_errors(
    endpoint: Path, preparer: FakePreparer, version: str
) -> None:
    async with DraClient(endpoint, version) as client:
        resp = await client.prepare([claim("u1", "ok"), claim("u2", "bad-one")])
    assert set(resp.claims) == {"u1", "u2"}
    assert resp.claims["u1"].error == ""
    (dev,) = resp.claims["u1"].devices
    assert (dev.pool_name, dev.device_name) == ("node-a", "gpu-0")
    assert list(dev.request_names) == ["gpu"]
    assert list(dev.cdi_device_ids) == ["k8s.gpu.nvidia.com/claim=u1-gpu-0"]
    assert resp.claims["u2"].error == "cannot prepare bad-one"
    assert list(resp.claims["u2"].devices) == []
    assert [c.uid for c in preparer.prepare_calls[0]] == ["u1", "u2"]


async def test_share_id_only_in_v1(endpoint: Path) -> None:
    async with DraClient(endpoint, "v1") as v1c, DraClient(endpoint, "v1beta1") as v1b:
        r1 = await v1c.prepare([claim("s1", "shared"), claim("s2", "plain")])
        rb = await v1b.prepare([claim("s1", "shared")])
    assert r1.claims["s1"].devices[0].HasField("share_id")
    assert r1.claims["s1"].devices[0].share_id == "3f1c2a8e-share"
    assert not r1.claims["s2"].devices[0].HasField("share_id")
    assert "share_id" not in type(rb.claims["s1"].devices[0]).DESCRIPTOR.fields_by_name
    assert rb.claims["s1"].devices[0].device_name == "gpu-0"


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_unprepare_maps_errors(endpoint: Path, version: str) -> None:
    async with DraClient(endpoint, version) as client:
        resp = await client.unprepare([claim("u1", "fine"), claim("u2", "bad")])
    assert {k: v.error for k, v in resp.claims.items()} == {"u1": "", "u2": "busy"}


async def test_empty_request_is_a_cheap_probe(endpoint: Path, preparer: FakePreparer) -> None:
    async with DraClient(endpoint) as client:
        assert len((await client.prepare([])).claims) == 0
        assert len((await client.unprepare([])).claims) == 0
    assert preparer.prepare_calls == [] and preparer.unprepare_calls == []


async def test_duplicates_collapse_and_bad_claims_get_entries(
    endpoint: Path, preparer: FakePreparer
) -> None:
    claims = [
        claim("u1", "a"),
        claim("u1", "a"),
        claim("", "no-uid"),
        claim("u3", "x" * 300),
        claim("u4", "ok", ns=""),
        claim("u5", "a"),
        claim("u5", "other-name"),
    ]
    async with DraClient(endpoint) as client:
        resp = await client.prepare(claims)
    assert set(resp.claims) == {"u1", "", "u3", "u4", "u5"}
    assert resp.claims["u1"].error == ""
    assert "uid is empty" in resp.claims[""].error
    assert "name is 300 bytes" in resp.claims["u3"].error
    assert "namespace is empty" in resp.claims["u4"].error
    assert "listed twice" in resp.claims["u5"].error
    # only the one valid distinct claim reached the preparer
    assert [[c.uid for c in call] for call in preparer.prepare_calls] == [["u1"]]


async def test_preparer_exception_becomes_per_claim_errors(
    endpoint: Path, preparer: FakePreparer
) -> None:
    preparer.raise_on_prepare = RuntimeError("checkpoint unreadable")
    async with DraClient(endpoint) as client:
        resp = await client.prepare([claim("u1"), claim("u2")])
    assert set(resp.claims) == {"u1", "u2"}
    for entry in resp.claims.values():
        assert "RuntimeError: checkpoint unreadable" in entry.error


async def test_missing_result_from_preparer_is_reported(
    endpoint: Path, preparer: FakePreparer
) -> None:
    preparer.drop_uids = {"u2"}
    async with DraClient(endpoint) as client:
        resp = await client.prepare([claim("u1"), claim("u2")])
    assert resp.claims["u1"].error == ""
    assert "no prepare result" in resp.claims["u2"].error


async def test_big_batch_and_big_name(endpoint: Path, preparer: FakePreparer) -> None:
    many = [claim(f"uid-{i:05d}", f"claim-{i}") for i in range(10_000)]
    async with DraClient(endpoint) as client:
        resp = await client.prepare(many)
        huge = await client.prepare([claim("h1", "n" * (1024 * 1024))])
    assert len(resp.claims) == 10_000
    assert all(not e.error for e in resp.claims.values())
    assert "1048576 bytes" in huge.claims["h1"].error
    assert len(huge.claims["h1"].error) < 200


async def test_cancelled_call_still_finishes_preparation(
    endpoint: Path, preparer: FakePreparer
) -> None:
    preparer.delay = 0.3
    async with DraClient(endpoint) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.prepare([claim("slow")], timeout=0.05)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.5)
    assert preparer.finished == ["slow"]


async def test_preparer_concurrency_is_bounded(endpoint: Path, preparer: FakePreparer) -> None:
    preparer.delay = 0.05
    async with DraClient(endpoint) as client:
        results = await asyncio.gather(*(client.prepare([claim(f"p{i}")]) for i in range(8)))
    assert all(r.claims[f"p{i}"].error == "" for i, r in enumerate(results))
    assert preparer.max_active == 2  # the bound given to ClaimCalls


async def test_long_preparer_error_is_truncated(endpoint: Path) -> None:
    async with DraClient(endpoint) as client:
        resp = await client.prepare([claim("v1", "bad-verbose")])
    error = resp.claims["v1"].error
    assert 4000 < len(error.encode()) <= 4096
    assert error.endswith("...")


def test_collect_claims_keeps_request_order() -> None:
    msgs = [dra_v1_pb2.Claim(namespace="ns", uid=u, name="n") for u in ("b", "a", "b", "c")]
    valid, errors = collect_claims(msgs)
    assert [c.uid for c in valid] == ["b", "a", "c"]
    assert errors == {}
