"""Device health reaches the pod's status through the real kubelet.

A pod holds two MIG devices of one GPU. An XID injected on one of them (fake
NVML fault log, as `python -m dra_driver.testing.fakenvml inject` writes it)
must turn that device, and only that one, Unhealthy in
status.containerStatuses[].allocatedResourcesStatus, and Healthy again once the
plugin's --health-hold has passed. Run against kubelet 1.37 (dra-health v1)
and 1.36 (v1alpha1 only); the seconds from inject to pod status are reported.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from dra_driver.testing.fakenvml import topology_path

from .conftest import (
    HEALTH_HOLD,
    PRIMARY_VERSION,
    SUMMARY,
    TOPOLOGY,
    Clusters,
    health_by_device,
    wait_for,
)

PROFILE_1G10GB = "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"
CLAIM = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "ResourceClaim",
    "metadata": {"name": "two-migs"},
    "spec": {
        "devices": {
            "requests": [
                {
                    "name": name,
                    "exactly": {
                        "deviceClassName": "mig.nvidia.com",
                        "selectors": [{"cel": {"expression": PROFILE_1G10GB}}],
                    },
                }
                for name in ("mig-a", "mig-b")
            ],
            "constraints": [{"requests": [], "matchAttribute": "gpu.nvidia.com/parentUUID"}],
        }
    },
}


def pod(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "health"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "ctr",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "nvidia-smi -L; trap 'exit 0' TERM; sleep 9999 & wait"],
                    "resources": {"claims": [{"name": "migs"}]},
                }
            ],
            "resourceClaims": [{"name": "migs", "resourceClaimName": "two-migs"}],
        },
    }


def mig_location(device: str) -> tuple[int, int, int]:
    """(NVML GPU index, GI id, CI id) of a published MIG device name, from the topology."""
    m = re.fullmatch(r"gpu-(\d+)-mig-[0-9a-z+]+-(\d+)-(\d+)", device)
    assert m, f"not a MIG device name: {device}"
    minor, profile_id, start = map(int, m.groups())
    topo = json.loads(topology_path(TOPOLOGY).read_text())
    for index, gpu in enumerate(topo["gpus"]):
        if gpu["minor"] != minor:
            continue
        for d in gpu["mig"]["devices"]:
            if d["profile_id"] == profile_id and d["placement_start"] == start:
                return index, d["gi_id"], d.get("ci_id", 0)
    raise AssertionError(f"{device} is not in topology {TOPOLOGY}")


@pytest.mark.parametrize("version", ["1.37", "1.36"])
def test_xid_on_one_mig_device_reaches_pod_status(clusters: Clusters, version: str) -> None:
    cluster = clusters.get(version)
    if cluster.plugin_pid() is None:
        cluster.start_plugin()
    ns = f"health-{version.replace('.', '')}"
    cluster.delete_namespace(ns)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    core = cluster.core()
    try:
        cluster.apply([{**CLAIM, "metadata": {**CLAIM["metadata"], "namespace": ns}}])
        body = pod(cluster.env.get("TEST_IMAGE", "docker.io/dra-driver-gpu/busybox:test"))
        core.create_namespaced_pod(ns, body)

        def running() -> Any:
            p = core.read_namespaced_pod_status("health", ns)
            return p if p.status.phase == "Running" else None

        wait_for(f"{ns}/health Running", running, 120, 0.5)
        results = cluster.claim(ns, "two-migs")["status"]["allocation"]["devices"]["results"]
        device = {r["request"]: r["device"] for r in results}
        sick_dev, other = device["mig-a"], device["mig-b"]
        both = [sick_dev, other]

        def healthy() -> dict[str, str] | None:
            h = health_by_device(core.read_namespaced_pod_status("health", ns), both)
            return h if h == {sick_dev: "Healthy", other: "Healthy"} else None

        wait_for("both devices Healthy in the pod's status", healthy, 60, 0.5)
        gpu, gi, ci = mig_location(sick_dev)

        t0 = time.monotonic()
        cluster.inject("xid", "--gpu", str(gpu), "--xid", "79", "--gi", str(gi), "--ci", str(ci))
        written = cluster.faults.stat().st_mtime  # when the command appended the fault

        def sick() -> dict[str, str] | None:
            h = health_by_device(core.read_namespaced_pod_status("health", ns), both)
            return h if h.get(sick_dev) == "Unhealthy" else None

        seen = wait_for(f"{sick_dev} Unhealthy in the pod's status", sick, 60, 0.05)
        latency, from_write = time.monotonic() - t0, time.time() - written
        assert seen == {sick_dev: "Unhealthy", other: "Healthy"}, seen

        t1 = time.monotonic()
        wait_for(f"{sick_dev} Healthy again after the hold", healthy, HEALTH_HOLD + 60, 0.1)
        recovery = time.monotonic() - t1
        SUMMARY.append(
            f"health (kubelet {cluster.env.get('KUBE_VERSION', version)}): XID 79 on "
            f"{sick_dev} -> pod status Unhealthy {latency:.2f}s after starting the inject "
            f"command, {from_write:.2f}s after it wrote the fault (50 ms polls; other device "
            f"{other} Healthy); Healthy again {recovery:.1f}s later "
            f"(--health-hold {HEALTH_HOLD:g})"
        )
    finally:
        cluster.delete_namespace(ns)
        if version != PRIMARY_VERSION:
            clusters.release(version)  # the rest of the tier runs on the primary cluster
