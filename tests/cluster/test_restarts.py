"""Restarts on a real node: the kubelet's, and the plugin's by kill -9.

- Kubelet restart: the kubelet deletes its node's ResourceSlices when it starts;
  the plugin must publish them again, re-register, and running pods keep their
  containers and devices.
- Plugin kill -9 while a pod starts: once the plugin is back the pod reaches
  Running; deleting the pod removes the claim's CDI spec and checkpoint entry.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from .conftest import SUMMARY, Cluster, claim_pod, env_name, running_pod, wait_for


def namespace(cluster: Cluster, ns: str) -> None:
    cluster.delete_namespace(ns)
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])


def claim_uid(cluster: Cluster, pod: Any) -> tuple[str, str]:
    name = pod.status.resource_claim_statuses[0].resource_claim_name
    return name, cluster.claim(pod.metadata.namespace, name)["metadata"]["uid"]


def cdi_specs_for(cluster: Cluster, uid: str) -> list[Path]:
    return [p for p in cluster.cdi_dir.glob("*.json") if uid in p.name]


def checkpoint_claims(cluster: Cluster) -> dict[str, Any]:
    path = cluster.checkpoint
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    claims = (doc.get("body") or {}).get("claims") or {}
    return dict(claims)


def test_kubelet_restart_keeps_pods_and_republishes(plugin_running: Cluster) -> None:
    cluster = plugin_running
    ns = "restart-kubelet"
    namespace(cluster, ns)
    try:
        cluster.apply(claim_pod(ns, "keep", "one-gpu"))
        before = running_pod(cluster, ns, "keep")
        devices = cluster.pod_devices(before)["ctr"]
        container_id = before.status.container_statuses[0].container_id
        _, uid = claim_uid(cluster, before)
        assert cdi_specs_for(cluster, uid), "no CDI spec for the running pod's claim"
        slices_before = {s["metadata"]["name"] for s in cluster.slices()}

        seconds = cluster.restart_kubelet()
        # The kubelet wiped the node's slices at start; the plugin publishes them again.
        cluster.wait_slices(timeout=60)
        slices_after = {s["metadata"]["name"] for s in cluster.slices()}

        def same_container() -> Any:
            p = cluster.core().read_namespaced_pod("keep", ns)
            cs = p.status.container_statuses[0]
            ok = p.status.phase == "Running" and cs.ready and cs.container_id == container_id
            return p if ok else None

        after = wait_for("the pod still Running in the same container", same_container, 60, 0.5)
        assert after.status.container_statuses[0].restart_count == 0
        assert cluster.pod_devices(after)["ctr"] == devices
        assert cdi_specs_for(cluster, uid), "the claim's CDI spec disappeared"
        assert uid in checkpoint_claims(cluster)

        # The re-registered plugin still prepares new claims after the restart.
        cluster.apply(claim_pod(ns, "new", "one-gpu-2"))
        new = running_pod(cluster, ns, "new")
        new_devices = cluster.pod_devices(new)["ctr"]
        assert set(new_devices).isdisjoint(devices)
        logged = cluster.logs(ns, "new", "ctr")
        assert env_name(new_devices[0]) in logged, logged
        SUMMARY.append(
            f"kubelet restart: back in {seconds:.1f}s; slices "
            f"{'renamed' if slices_after != slices_before else 'same names'}, running pod kept "
            f"{devices} in container {container_id[-12:]}; a new pod got {new_devices}"
        )
    finally:
        cluster.delete_namespace(ns)


def test_plugin_kill9_while_pod_starts(plugin_running: Cluster) -> None:
    cluster = plugin_running
    ns = "plugin-kill"
    namespace(cluster, ns)
    try:
        cluster.apply(claim_pod(ns, "starting", "one-gpu"))

        def scheduled() -> Any:
            p = cluster.core().read_namespaced_pod("starting", ns)
            return p if p.spec.node_name else None

        wait_for("the pod scheduled", scheduled, 60, 0.05)
        cluster.kill_plugin(signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(3)  # the kubelet tries to prepare while no plugin answers
        p = cluster.core().read_namespaced_pod("starting", ns)
        state = p.status.phase
        cluster.start_plugin()
        pod = running_pod(cluster, ns, "starting", timeout=120)
        back = time.monotonic() - killed_at
        claim, uid = claim_uid(cluster, pod)
        devices = cluster.pod_devices(pod)["ctr"]
        assert cdi_specs_for(cluster, uid), "no CDI spec for the prepared claim"
        assert uid in checkpoint_claims(cluster), "the prepared claim is not checkpointed"
        logged = cluster.logs(ns, "starting", "ctr")
        assert env_name(devices[0]) in logged, logged

        cluster.core().delete_namespaced_pod("starting", ns, grace_period_seconds=1)

        def cleaned() -> bool:
            return not cdi_specs_for(cluster, uid) and uid not in checkpoint_claims(cluster)

        wait_for("the claim's CDI spec and checkpoint entry removed", cleaned, 90, 0.5)
        SUMMARY.append(
            f"plugin kill -9 while {ns}/starting started (phase then {state}): Running "
            f"{back:.1f}s after the kill; after deletion claim {claim} left no CDI spec and "
            f"no checkpoint entry"
        )
    finally:
        cluster.delete_namespace(ns)
