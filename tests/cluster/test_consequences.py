"""Health with consequences on the real cluster: eviction by device taint, Job retries, status.

The plugin runs with --health-evict=xid-79,gpu-lost. deploy/examples' manifests
are applied as users apply them (image and command swapped for the tier's local
busybox), then:

- the Deployment's GPU falls off the bus (the fake's "lost": XID 79, then
  GPU_IS_LOST until recovered) and is tainted NoExecute; kube-controller-manager's
  device taint eviction controller deletes the pod with DisruptionTarget /
  DeletionByDeviceTaintManager; the replacement runs on a healthy device; the
  claim's status.devices shows Healthy turning False (what `kubectl get
  resourceclaim -o yaml` prints); after recovery the taint is gone and the device
  is allocatable again;
- the Job example (backoffLimit forced to 0, so a counted failure would fail it)
  retries on another device after the same eviction, and never counts it.
Each step's seconds go to the tier summary.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DRIVER, PRIMARY_VERSION, SUMMARY, Cluster, Clusters, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
EVICT = "--health-evict=xid-79,gpu-lost"


@pytest.fixture
def evicting(clusters: Clusters) -> Any:
    cluster = clusters.get(PRIMARY_VERSION)
    base = list(cluster.plugin_flags)
    cluster.stop_plugin()  # hack/cluster/plugin leaves a running plugin alone
    cluster.start_plugin(*base, EVICT)
    cluster.wait_slices()
    try:
        yield cluster
    finally:
        cluster.inject("recover")
        cluster.stop_plugin()
        cluster.start_plugin(*base)
        cluster.wait_slices()


def example(name: str, ns: str, cluster: Cluster) -> list[dict[str, Any]]:
    """An example's objects in namespace ns, on the tier's local image."""
    image = cluster.env.get("TEST_IMAGE", "docker.io/dra-driver-gpu/busybox:test")
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = ns
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is not None:
            spec["terminationGracePeriodSeconds"] = 1
            for c in spec["containers"]:
                c.update(image=image, imagePullPolicy="Never", command=["sh", "-c", "sleep 3600"])
        out.append(doc)
    return out


def namespace(cluster: Cluster, ns: str) -> None:
    cluster.delete_namespace(ns)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])


def running_pod(cluster: Cluster, ns: str, exclude: frozenset[str] | set[str] = frozenset()) -> Any:
    def find() -> Any:
        for p in cluster.pods(ns):
            if (
                p.metadata.name not in exclude
                and p.status.phase == "Running"
                and not p.metadata.deletion_timestamp
            ):
                return p
        return None

    return wait_for(f"a Running pod in {ns}", find, 180, 0.2)


def gpu_index(cluster: Cluster, device: str) -> int:
    """NVML index of a full GPU device name (gpu-<minor>) on the tier's topology."""
    import json

    from dra_driver.testing.fakenvml import topology_path

    from .conftest import TOPOLOGY

    minor = int(device.split("-")[1])
    topo = json.loads(topology_path(TOPOLOGY).read_text())
    return next(i for i, g in enumerate(topo["gpus"]) if g["minor"] == minor)


def claim_of(pod: Any) -> str:
    (status,) = pod.status.resource_claim_statuses
    return str(status.resource_claim_name)


def healthy_condition(cluster: Cluster, ns: str, claim: str, device: str) -> dict[str, Any]:
    status = cluster.claim(ns, claim).get("status") or {}
    for entry in status.get("devices") or []:
        if entry["driver"] == DRIVER and entry["device"] == device:
            return next((c for c in entry["conditions"] if c["type"] == "Healthy"), {})
    return {}


def evicted(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    """The pod's DisruptionTarget condition once set (or {} when it is already gone)."""
    from kubernetes.client.exceptions import ApiException

    try:
        p = cluster.core().read_namespaced_pod_status(name, ns)
    except ApiException as e:
        if e.status == 404:
            return {}
        raise
    for c in p.status.conditions or []:
        if c.type == "DisruptionTarget":
            return {"status": c.status, "reason": c.reason, "message": c.message}
    return None


def taint_effect(cluster: Cluster, device: str, key: str) -> str | None:
    for t in cluster.devices().get(device, {}).get("taints") or []:
        if t["key"] == key:
            return str(t["effect"])
    return None


def test_xid_79_evicts_the_deployment_pod_and_it_runs_elsewhere(evicting: Cluster) -> None:
    cluster, ns = evicting, "evict-deployment"
    namespace(cluster, ns)
    try:
        docs = example("evict-deployment.yaml", ns, cluster)
        for d in docs:
            if d["kind"] == "Deployment":
                d["spec"]["replicas"] = 1
        cluster.apply(docs)
        first = running_pod(cluster, ns)
        (device,) = cluster.pod_devices(first)["server"]
        claim = claim_of(first)
        wait_for(
            "the claim's Healthy condition True",
            lambda: healthy_condition(cluster, ns, claim, device).get("status") == "True",
            30,
        )

        t0 = time.monotonic()
        cluster.inject("lost", "--gpu", str(gpu_index(cluster, device)))  # XID 79, then lost
        wait_for(
            f"{device} tainted NoExecute",
            lambda: taint_effect(cluster, device, f"{DRIVER}/xid") == "NoExecute",
            30,
            0.05,
        )
        tainted = time.monotonic() - t0
        condition = wait_for(
            "DisruptionTarget on the evicted pod",
            lambda: evicted(cluster, ns, first.metadata.name),
            60,
            0.05,
        )
        evict_s = time.monotonic() - t0
        if condition:  # {}: deleted before we looked; the reason is then in the event only
            assert condition["reason"] == "DeletionByDeviceTaintManager", condition
        seen = healthy_condition(cluster, ns, claim, device)
        replacement = running_pod(cluster, ns, exclude={first.metadata.name})
        moved = time.monotonic() - t0
        (new_device,) = cluster.pod_devices(replacement)["server"]
        assert new_device != device
        assert taint_effect(cluster, device, f"{DRIVER}/xid") == "NoExecute"

        t1 = time.monotonic()
        cluster.inject("recover", "--gpu", str(gpu_index(cluster, device)))
        wait_for(
            f"{device} untainted after the hold",
            lambda: device in cluster.devices() and not cluster.devices()[device].get("taints"),
            120,
            0.2,
        )
        untainted = time.monotonic() - t1
        # Allocatable again: a claim asking for exactly that device is satisfied.
        uuid = cluster.devices()[device]["attributes"]["uuid"]["string"]
        same = f"device.attributes['{DRIVER}'].uuid == '{uuid}'"
        pinned = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "pinned", "namespace": ns},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "gpu.nvidia.com",
                "selectors": [{"cel": {"expression": same}}],
            }}]}},
        }  # fmt: skip
        image = cluster.env.get("TEST_IMAGE", "docker.io/dra-driver-gpu/busybox:test")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pinned", "namespace": ns},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "resourceClaims": [{"name": "gpu", "resourceClaimName": "pinned"}],
                "containers": [{
                    "name": "c", "image": image, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "sleep 3600"],
                    "resources": {"claims": [{"name": "gpu"}]},
                }],
            },
        }  # fmt: skip
        cluster.apply([pinned, pod])
        wait_for(
            "the pinned pod Running on the recovered device",
            lambda: (
                cluster.core().read_namespaced_pod_status("pinned", ns).status.phase == "Running"
            ),
            120,
            0.2,
        )
        SUMMARY.append(
            f"eviction: XID 79 + GPU lost on {device} -> NoExecute taint {tainted:.2f}s, pod "
            f"evicted (DisruptionTarget {condition.get('reason', 'pod already gone')}) "
            f"{evict_s:.2f}s, "
            f"replacement Running on {new_device} {moved:.1f}s; claim Healthy condition then "
            f"{seen.get('status')}/{seen.get('reason')}; recovered: untainted {untainted:.1f}s "
            "after recover, device allocatable again"
        )
    finally:
        cluster.delete_namespace(ns)


def test_the_job_retries_elsewhere_without_counting_the_eviction(evicting: Cluster) -> None:
    cluster, ns = evicting, "evict-job"
    namespace(cluster, ns)
    try:
        docs = example("evict-job.yaml", ns, cluster)
        for d in docs:
            if d["kind"] == "Job":
                d["spec"]["backoffLimit"] = 0  # a counted failure would fail the Job
        cluster.apply(docs)
        first = running_pod(cluster, ns)
        (device,) = cluster.pod_devices(first)["train"]

        t0 = time.monotonic()
        cluster.inject("lost", "--gpu", str(gpu_index(cluster, device)))  # XID 79, then lost
        wait_for(
            "the Job's pod evicted",
            lambda: evicted(cluster, ns, first.metadata.name) is not None,
            60,
            0.05,
        )
        second = running_pod(cluster, ns, exclude={first.metadata.name})
        retried = time.monotonic() - t0
        (new_device,) = cluster.pod_devices(second)["train"]
        assert new_device != device
        job = cluster.resource("batch/v1", "Job").get(name="training", namespace=ns).to_dict()
        status = job.get("status") or {}
        assert not status.get("failed"), status
        assert not [c for c in status.get("conditions") or [] if c["type"] == "Failed"], status
        SUMMARY.append(
            f"job: XID 79 + GPU lost on {device} -> pod evicted, retried on {new_device} in "
            f"{retried:.1f}s; failed count {status.get('failed', 0)} (podFailurePolicy Ignore)"
        )
    finally:
        cluster.delete_namespace(ns)
