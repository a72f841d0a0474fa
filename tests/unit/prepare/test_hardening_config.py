"""Issue 9, items 1 and 12: hostile opaque configs and malformed allocation results.

A quantity must never cost more than microseconds (the GIL is shared with every
other claim), an unusable one is a `config` error, only the configs that apply
to the claim's own requests are decoded, and the cheap checks run first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hardening_node import API, Node, gpu_config, make_node

from dra_driver.prepare.config import ConfigError, parse_quantity
from dra_driver.prepare.types import ErrorKind


def mps(limit: Any) -> dict[str, Any]:
    return gpu_config(strategy="MPS", mpsConfig={"defaultPinnedDeviceMemoryLimit": limit})


@pytest.mark.parametrize(
    "text",
    ["9e99999", "9e999999", "1e99999999999", "1E-99999999999", "1" * 5000, "9" * 40 + "Ei"],
)
def test_absurd_quantities_are_config_errors_and_cheap(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="quantity"):
        parse_quantity(text, "limit")
    assert time.perf_counter() - start < 0.05


@pytest.mark.parametrize(
    ("text", "want"),
    [("10Gi", 10 * 2**30), ("1.5k", 1500), ("2e3", 2000), ("1e-3", 1), ("4Ei", 4 * 2**60)],
)
def test_ordinary_quantities_still_parse(text: str, want: int) -> None:
    assert parse_quantity(text, "limit") == want


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return make_node(tmp_path)


async def test_overflowing_quantity_in_a_claim_is_a_config_error(node: Node) -> None:
    ref = node.put(
        1, {"request": "gpu", "device": "gpu-0"}, configs=[{"parameters": mps("1e99999999999")}]
    )
    prep = node.preparer()
    await prep.start()
    try:
        r = (await prep.prepare([ref]))[ref.uid]
    finally:
        await prep.close()
    assert r.error_kind is ErrorKind.CONFIG, r
    assert "quantity" in r.error


async def test_config_of_a_request_not_in_this_claim_is_not_decoded(node: Node) -> None:
    bogus = {"apiVersion": API, "kind": "GpuConfig", "nonsense": True}
    ref = node.put(
        1,
        {"request": "gpu", "device": "gpu-0"},
        {"request": "nic", "device": "eth0", "driver": "net.example.com"},
        configs=[{"requests": ["nic"], "parameters": bogus}],
    )
    prep = node.preparer()
    await prep.start()
    try:
        r = (await prep.prepare([ref]))[ref.uid]
    finally:
        await prep.close()
    assert r.error == "" and [d.device_name for d in r.devices] == ["gpu-0"]


async def test_cheap_checks_run_before_configs_are_decoded(node: Node) -> None:
    bogus = {"apiVersion": API, "kind": "GpuConfig", "nonsense": True}
    ref = node.put(
        1, {"request": "gpu", "device": "gpu-0", "pool": "node-2"}, configs=[{"parameters": bogus}]
    )
    prep = node.preparer()
    await prep.start()
    try:
        r = (await prep.prepare([ref]))[ref.uid]
    finally:
        await prep.close()
    assert r.error_kind is ErrorKind.NOT_ALLOCATED, r
