"""Issue 9, item 12: input nits — UID anchoring, malformed allocations, log forging, log size."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from hardening_node import Node, make_node

from dra_driver.prepare.cdi import CLAIM_UID_RE, InvalidClaimUid, check_claim_uid
from dra_driver.prepare.types import ClaimRef, ErrorKind
from dra_driver.testing.simhost import claim_object, claim_uid


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


def test_uid_with_trailing_newline_is_refused() -> None:
    uid = claim_uid(1)
    assert CLAIM_UID_RE.fullmatch(uid)
    with pytest.raises(InvalidClaimUid):
        check_claim_uid(uid + "\n")


async def test_prepare_and_unprepare_refuse_a_newline_terminated_uid(node: Node) -> None:
    uid = claim_uid(1) + "\n"
    node.source.put(claim_object(uid, "claim-1", [{"request": "gpu", "device": "gpu-0"}]))
    prep = node.preparer()
    await prep.start()
    try:
        ref = ClaimRef("default", uid, "claim-1")
        r = (await prep.prepare([ref]))[uid]
        assert r.error_kind is ErrorKind.INVALID_CLAIM, r
        assert (await prep.unprepare([ref]))[uid].error == ""
    finally:
        await prep.close()
    assert node.cdi_files() == [] and not list(node.settings.cdi_root.glob("*\n*"))


def _claim(uid: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "claim-1", "namespace": "default", "uid": uid}, **status}


def _results(*results: Any) -> dict[str, Any]:
    return {"status": {"allocation": {"devices": {"results": list(results)}}}}


def _gpu(**over: Any) -> dict[str, Any]:
    return {"driver": "gpu.nvidia.com", "pool": "node-1", "request": "g", "device": "gpu-0", **over}


@pytest.mark.parametrize(
    "body",
    [
        _results(1, 2),
        _results(_gpu(request=["g"])),
        _results(_gpu(shareID={"a": 1})),
        _results(_gpu(device=7)),
        _results(_gpu(adminAccess="yes")),
        _results(_gpu(driver=None)),
        {"status": []},
        {"status": {"allocation": []}},
        {"status": {"allocation": {"devices": "x"}}},
        {"status": {"allocation": {"devices": {"results": {"a": 1}}}}},
    ],
    ids=[
        "results-ints",
        "request-list",
        "shareid-object",
        "device-int",
        "admin-string",
        "driver-null",
        "status-list",
        "allocation-list",
        "devices-string",
        "results-object",
    ],
)
async def test_malformed_allocation_is_a_per_claim_error(node: Node, body: dict[str, Any]) -> None:
    uid = claim_uid(1)
    node.source.put(_claim(uid, **body))
    good = node.put(2, {"request": "gpu", "device": "gpu-1"})
    prep = node.preparer()
    await prep.start()
    try:
        ref = ClaimRef("default", uid, "claim-1")
        results = await prep.prepare([ref, good])
    finally:
        await prep.close()
    r = results[uid]
    assert r.error and r.error_kind is ErrorKind.NOT_ALLOCATED, r
    assert "malformed" in r.error and r.devices == ()
    assert results[good.uid].error == ""
    assert node.cdi_files() == [f"k8s.gpu.nvidia.com-claim_{good.uid}.json"]


async def test_claim_names_cannot_forge_log_lines(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    prep = node.preparer()
    await prep.start()
    forged = "x\nINFO dra_driver.prepare.preparer: prepared default/victim\r\x1b[2K"
    try:
        with caplog.at_level(logging.INFO, logger="dra_driver"):
            await prep.prepare([ClaimRef("default", claim_uid(5), forged)])
            await prep.unprepare([ClaimRef(forged, claim_uid(5), "y")])
    finally:
        await prep.close()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dra_driver")]
    assert any("victim" in m for m in messages)
    for m in messages:
        assert not any(ord(c) < 0x20 or c == "\x7f" for c in m), repr(m)


async def test_huge_config_values_are_capped_in_the_log(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    big = "A" * 5_000_000
    params = {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"}
    params["sharing"] = {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": big}}
    ref = node.put(1, {"request": "gpu", "device": "gpu-0"}, configs=[{"parameters": params}])
    prep = node.preparer()
    await prep.start()
    try:
        with caplog.at_level(logging.INFO, logger="dra_driver"):
            r = (await prep.prepare([ref]))[ref.uid]
    finally:
        await prep.close()
    assert r.error_kind is ErrorKind.CONFIG
    sizes = [len(rec.getMessage().encode()) for rec in caplog.records]
    assert sizes and max(sizes) <= 4096 + 256, sizes
