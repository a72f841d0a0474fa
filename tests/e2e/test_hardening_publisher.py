"""Issue 9, item 9: slices come back after the API server loses its state.

An etcd restore (here: the double's reset, which ends watches cleanly and
keeps counting revisions) sends no DELETED events, so the watch cache keeps
believing in slices that are gone. A periodic, jittered relist finds out; a
watch error that is not a plain disconnect relists at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from dra_driver.inventory import build_inventory
from dra_driver.k8s import load_api_client
from dra_driver.slices.options import PublisherConfig
from dra_driver.slices.publisher import SlicePublisher
from dra_driver.testing.apiserver import ApiServerDouble
from dra_driver.testing.records import gpu_record, snapshot

DRIVER = "gpu.nvidia.com"
NODE = "node-a"
FAST: dict[str, Any] = {"debounce": 0.05, "backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.fixture
def server() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as s:
        s.create_node(NODE)
        yield s


@pytest.fixture
def api_client(server: ApiServerDouble, tmp_path: Path) -> client.ApiClient:
    return load_api_client(str(server.kubeconfig_path(tmp_path)))


def ours(server: ApiServerDouble) -> list[dict[str, Any]]:
    return server.slices(driver=DRIVER, node=NODE)


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_slices_are_republished_after_the_server_loses_its_state(
    server: ApiServerDouble, api_client: client.ApiClient
) -> None:
    config = PublisherConfig(driver_name=DRIVER, node_name=NODE, resync_interval=0.5, **FAST)
    pub = SlicePublisher(config, api_client)
    task = asyncio.create_task(pub.run())
    try:
        pub.set_desired(build_inventory(snapshot(gpu_record(0), gpu_record(1))))
        assert await pub.wait_converged(10)
        assert len(ours(server)) == 1
        server.reset()  # everything gone, no DELETED events, revisions keep counting
        server.create_node(NODE)
        assert await wait_until(lambda: len(ours(server)) == 1, 10), "slices never came back"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class ErrorStream:
    """A watch that delivers one ERROR event that is not 410 Gone."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any] | None] = [
            {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd lost"}}
        ]

    def next_event(self) -> dict[str, Any] | None:
        return self.events.pop(0) if self.events else None

    def close(self) -> None:
        pass


async def test_a_watch_error_event_relists(api_client: client.ApiClient) -> None:
    pub = SlicePublisher(PublisherConfig(driver_name=DRIVER, node_name=NODE, **FAST), api_client)
    rv = await pub._consume(ErrorStream(), "4711")  # type: ignore[arg-type]
    assert rv == ""  # "" makes the watch loop list again before it watches
