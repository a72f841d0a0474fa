"""Fixtures of the kit's tests: an API server double and an official client of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from dra_driver.k8s import load_api_client
from dra_driver.testing import ApiServerDouble


@pytest.fixture
def api() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


@pytest.fixture
def kube(api: ApiServerDouble, tmp_path: Path) -> Iterator[client.ApiClient]:
    api_client = load_api_client(str(api.kubeconfig_path(tmp_path)))
    yield api_client
    api_client.close()
