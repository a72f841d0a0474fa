"""Fault injection, request accounting, lifecycle and the standalone server of the double."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import urllib3
from apiserver_fixtures import (
    core_v1,
    device,
    expect_error,
    resource_v1,
    slice_body,
    status_of,
)
from kubernetes import client, watch

from dra_driver.k8s import load_api_client
from dra_driver.testing import ApiServerDouble

REPO = Path(__file__).resolve().parents[3]


def control(api: ApiServerDouble, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_latency(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.list_resource_slice()
    api.faults.set_latency(0.2)
    start = time.monotonic()
    res.list_resource_slice()
    assert time.monotonic() - start >= 0.2
    api.clear_faults()
    start = time.monotonic()
    res.list_resource_slice()
    assert time.monotonic() - start < 0.2


def test_fail_next_matching_requests(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    created = res.create_resource_slice(slice_body())
    api.faults.fail_next(2, 503, method="PUT", path=r"/resourceslices/")
    res.read_resource_slice("slice-a")  # a GET does not match the rule
    for _ in range(2):
        with pytest.raises(client.ApiException) as info:
            res.replace_resource_slice("slice-a", created)
        assert info.value.status == 503
        assert dict(info.value.headers or {})["Retry-After"] == "1"
        assert status_of(info.value)["reason"] == "ServiceUnavailable"
    res.replace_resource_slice("slice-a", created)

    api.faults.fail_next(1, 429, retry_after=3)
    with pytest.raises(client.ApiException) as info:
        res.list_resource_slice()
    assert info.value.status == 429 and dict(info.value.headers or {})["Retry-After"] == "3"
    assert status_of(info.value)["details"] == {"retryAfterSeconds": 3}

    api.faults.fail_next(1, 500)
    expect_error(lambda: res.list_resource_slice(), 500, "InternalError")
    res.list_resource_slice()
    with pytest.raises(ValueError):
        api.faults.fail_next(1, 200)


def _watch_in_thread(
    res: client.ResourceV1Api, outcome: dict[str, Any], **kw: Any
) -> threading.Thread:
    def run() -> None:
        try:
            outcome["events"] = [
                e["type"] for e in watch.Watch().stream(res.list_resource_slice, **kw)
            ]
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("mode", ["reset", "end", "expire"])
def test_drop_watches(api: ApiServerDouble, kube: client.ApiClient, mode: str) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body())
    outcome: dict[str, Any] = {}
    thread = _watch_in_thread(res, outcome, timeout_seconds=30)
    assert api.wait_for(lambda a: a.store.open_watches == 1)
    assert api.drop_watches(mode) == 1
    thread.join(3)
    assert not thread.is_alive()
    if mode == "reset":
        assert isinstance(outcome.get("error"), urllib3.exceptions.HTTPError), outcome
    elif mode == "end":
        assert outcome == {"events": ["ADDED"]}
    else:
        assert isinstance(outcome.get("error"), client.ApiException)
        assert outcome["error"].status == 410


def test_go_down_refuses_then_comes_back(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.create_resource_slice(slice_body())
    port = api.port
    outcome: dict[str, Any] = {}
    thread = _watch_in_thread(res, outcome, timeout_seconds=30)
    assert api.wait_for(lambda a: a.store.open_watches == 1)
    api.go_down(seconds=0.5)
    thread.join(3)
    assert "error" in outcome  # the open watch was cut
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        res.list_resource_slice()
    assert api.wait_for(lambda a: not a.is_down, timeout=3)
    assert api.port == port
    assert [s.metadata.name for s in res.list_resource_slice().items] == ["slice-a"]


def test_go_down_resetting_connections(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    res.list_resource_slice()
    api.go_down(mode="reset")
    with pytest.raises(urllib3.exceptions.HTTPError):
        res.list_resource_slice()
    api.come_up()
    res.list_resource_slice()


def test_feature_gate_off_drops_taints_without_update_loop(
    api: ApiServerDouble, kube: client.ApiClient
) -> None:
    res = resource_v1(kube)
    api.set_feature_gate("DRADeviceTaints", False)
    desired = slice_body(
        devices=[device(taints=[{"key": "gpu.nvidia.com/xid", "effect": "NoSchedule"}])]
    )
    stored = res.create_resource_slice(desired)
    assert stored.spec.devices[0].taints is None  # silently dropped, as with the gate off
    api.requests.reset()
    rv = stored.metadata.resource_version
    desired["metadata"]["resourceVersion"] = rv
    again = res.replace_resource_slice("slice-a", desired)
    # The write is answered but is a no-op: same revision, no watch event.
    assert again.metadata.resource_version == rv
    assert api.store.resource_version == int(rv)
    assert api.requests.writes("resourceslices") == 1
    with pytest.raises(ValueError, match="unknown feature gate"):
        api.set_feature_gate("NoSuchGate", False)


def test_gated_fields_in_use_are_kept(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    stored = res.create_resource_slice(
        slice_body(devices=[device(taints=[{"key": "k", "effect": "None"}])])
    )
    api.set_feature_gate("DRADeviceTaints", False)
    kept = res.patch_resource_slice("slice-a", {"metadata": {"labels": {"x": "y"}}})
    assert kept.spec.devices[0].taints[0].key == "k"  # dropDisabledFields keeps fields in use
    assert stored.spec.devices[0].taints[0].time_added == kept.spec.devices[0].taints[0].time_added


def test_drop_arbitrary_field(api: ApiServerDouble, kube: client.ApiClient) -> None:
    api.drop_field("resourceslices", "spec.devices[].capacity")
    stored = resource_v1(kube).create_resource_slice(slice_body())
    assert stored.spec.devices[0].capacity is None
    assert stored.spec.devices[0].attributes["type"].string == "gpu"


def test_request_accounting(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    core = core_v1(kube)
    core.create_node({"metadata": {"name": "n"}})
    res.create_resource_slice(slice_body())
    res.patch_resource_slice("slice-a", {"metadata": {"labels": {"a": "b"}}})
    res.read_resource_slice("slice-a")
    expect_error(lambda: res.create_resource_slice(slice_body()), 409, "AlreadyExists")
    res.delete_resource_slice("slice-a")
    log = api.requests
    assert log.writes() == 5
    assert log.writes("resourceslices") == 4
    assert log.writes("resourceslices", successful_only=True) == 3
    assert log.writes_by_resource() == {"nodes": 1, "resourceslices": 4}
    assert log.count(verb="get", resource="resourceslices") == 1
    assert log.count(status=409) == 1
    last = log.records()[-1]
    assert (last.method, last.verb, last.resource, last.name, last.status) == (
        "DELETE",
        "delete",
        "resourceslices",
        "slice-a",
        200,
    )
    status, body = control(api, "GET", "/_test/requests")
    assert status == 200 and len(body["items"]) == len(log.records())
    assert body["writes"] == {"nodes": 1, "resourceslices": 4}
    control(api, "DELETE", "/_test/requests")
    assert log.records() == []


def test_faults_over_http(api: ApiServerDouble, kube: client.ApiClient) -> None:
    res = resource_v1(kube)
    status, doc = control(
        api,
        "POST",
        "/_test/faults",
        {
            "fail": {"count": 1, "status": 503, "method": "GET"},
            "featureGates": {"DRADeviceTaints": False},
        },
    )
    assert status == 200 and doc["fail"][0]["status"] == 503
    assert doc["featureGates"]["DRADeviceTaints"] is False
    expect_error(lambda: res.list_resource_slice(), 503, "ServiceUnavailable")
    assert control(api, "POST", "/_test/faults", {"bogus": 1})[0] == 400
    assert control(api, "POST", "/_test/faults", {"down": {}})[0] == 400
    assert control(api, "DELETE", "/_test/faults")[1]["featureGates"]["DRADeviceTaints"] is True

    status, seeded = control(api, "POST", "/_test/objects/nodes", {"metadata": {"name": "n"}})
    assert status == 201 and seeded["metadata"]["uid"]
    assert control(api, "GET", "/_test/objects/nodes")[1]["items"][0]["metadata"]["name"] == "n"

    control(api, "POST", "/_test/faults", {"down": {"seconds": 0.3}})
    assert api.wait_for(lambda a: a.is_down, timeout=2)
    assert api.wait_for(lambda a: not a.is_down, timeout=3)
    res.list_resource_slice()


def test_stop_ends_open_watches_promptly(tmp_path: Path) -> None:
    server = ApiServerDouble().start()
    api_client = load_api_client(str(server.kubeconfig_path(tmp_path)))
    try:
        outcome: dict[str, Any] = {}
        thread = _watch_in_thread(resource_v1(api_client), outcome, timeout_seconds=60)
        assert server.wait_for(lambda a: a.store.open_watches == 1)
        start = time.monotonic()
        server.stop()
        thread.join(3)
        assert not thread.is_alive() and time.monotonic() - start < 2
    finally:
        server.stop()
        api_client.close()


def test_concurrent_writers_get_unique_ordered_revisions(
    api: ApiServerDouble, tmp_path: Path
) -> None:
    kubeconfig = str(api.kubeconfig_path(tmp_path))
    revisions: list[int] = []
    lock = threading.Lock()

    def writer(worker: int) -> None:
        api_client = load_api_client(kubeconfig)
        res = resource_v1(api_client)
        try:
            for i in range(5):
                obj = res.create_resource_slice(slice_body(f"w{worker}-{i}"))
                with lock:
                    revisions.append(int(obj.metadata.resource_version))
        finally:
            api_client.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(revisions) == len(set(revisions)) == 30
    assert len(api.objects("resourceslices")) == 30


def test_standalone_process(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dra_driver.testing.apiserver", "--kubeconfig-out", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(kubeconfig)
        api_client = load_api_client(str(kubeconfig))
        try:
            core_v1(api_client).create_node({"metadata": {"name": "n"}})
            assert [n.metadata.name for n in core_v1(api_client).list_node().items] == ["n"]
        finally:
            api_client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
