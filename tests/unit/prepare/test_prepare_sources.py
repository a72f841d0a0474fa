"""Claim sources: the official client against the API server double, and the no-API source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dra_driver.k8s import load_api_client
from dra_driver.prepare.sources import (
    ApiClaimSource,
    ClaimNotFound,
    ClaimSourceError,
    NoApiClaimSource,
)
from dra_driver.testing import ApiServerDouble, claim_object


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ApiServerDouble, ApiClaimSource]]:
    with ApiServerDouble() as server:
        client = load_api_client(str(server.kubeconfig_path(tmp_path)))
        yield server, ApiClaimSource(client, timeout_s=2.0)


def test_reads_the_claim_with_its_status(api: tuple[ApiServerDouble, ApiClaimSource]) -> None:
    server, source = api
    obj = claim_object("", "c1", [{"request": "gpu", "device": "gpu-0"}], namespace="team")
    del obj["metadata"]["uid"]
    created = server.create("resourceclaims", obj)
    got = source.get_claim("team", "c1")
    assert got["metadata"]["uid"] == created["metadata"]["uid"]
    assert got["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"


def test_not_found_and_server_errors_are_typed(
    api: tuple[ApiServerDouble, ApiClaimSource],
) -> None:
    server, source = api
    with pytest.raises(ClaimNotFound, match="ResourceClaim default/nope not found"):
        source.get_claim("default", "nope")
    server.faults.fail_next(1, 503, method="GET", path="resourceclaims")
    with pytest.raises(ClaimSourceError, match="HTTP 503") as e:
        source.get_claim("default", "nope")
    assert not isinstance(e.value, ClaimNotFound)


def test_unreachable_server_is_a_source_error(tmp_path: Path) -> None:
    with ApiServerDouble() as server:
        client = load_api_client(str(server.kubeconfig_path(tmp_path)))
    source = ApiClaimSource(client, timeout_s=1.0)  # the server is gone now
    with pytest.raises(ClaimSourceError, match="get ResourceClaim default/c"):
        source.get_claim("default", "c")


def test_no_api_source_says_why() -> None:
    with pytest.raises(ClaimSourceError, match="no API server configured"):
        NoApiClaimSource().get_claim("default", "c")
