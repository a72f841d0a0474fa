"""NVIDIA's own quickstart manifests (shared/nvidia-quickstart/v1), applied unchanged.

The only substitution is each container's image: nothing can be pulled here, so
the locally built test image stands in for ubuntu:22.04 / cuda-sample. Its
`bash` is busybox's sh and its `nvidia-smi -L` prints the NVIDIA_DRA_DEVICE_*
variables and /dev/nvidia* nodes the container got, so the pods' unchanged
commands log what CDI gave them.

Manifests our simulated dgx-h100 node can satisfy must reach Running, every
container must see exactly its allocated devices, containers sharing a claim the
same ones. For the others the test checks that they fail for the reason listed
in NOT_RUNNABLE and says so in the summary.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import SUMMARY, TEST_IMAGE, Cluster, env_name, wait_for

QUICKSTART = Path("/work/shared/nvidia-quickstart/v1")
for candidate in (Path(__file__).resolve().parents[2] / "../shared/nvidia-quickstart/v1",):
    if candidate.is_dir():
        QUICKSTART = candidate.resolve()

RUNNABLE = ["gpu-test1", "gpu-test2", "gpu-test3"]
# manifest -> (why it cannot run here, where the failure shows: "api" (the API server
# refuses part of the manifest) or "pod" (its pods fail), a regex over that message).
NOT_RUNNABLE: dict[str, tuple[str, str, str]] = {
    "gpu-test4": (
        "topology: needs 2x 1g.5gb + 2g.10gb + 3g.20gb MIG devices (A100-40GB profiles) on one "
        "GPU for each of 4 replicas; the tier's static dgx-h100 machine has none (with "
        "--dynamic-mig on a100-dynamic it runs: test_dynamic_mig.py)",
        "pod",
        r"cannot allocate all claims",
    ),
    "gpu-test5": (
        "sharing: its ts-gpu request asks for time-slice interval Long, which needs "
        "`nvidia-smi compute-policy --set-timeslice`, and its mps-gpu request for MPS, which "
        "needs an MPS control daemon; this driver runs neither, so NodePrepareResources "
        "refuses the claim",
        "pod",
        r"time-slice interval Long|MPS",
    ),
    "gpu-test6": (
        "topology + attribute: selects productName ~ a100 and the `index` attribute (0/2/4/6), "
        "which NVIDIA's own driver no longer publishes either (its PR #624: a GPU's index "
        "shifts when another falls off the bus); dgx-h100 has no A100, and its time-slice "
        "interval Long would be refused at prepare as in gpu-test5",
        "pod",
        r"cannot allocate all claims",
    ),
    "gpu-test-mps": (
        "MPS: sharing strategy MPS needs an MPS control daemon, not implemented",
        "pod",
        r"MPS",
    ),
    "gpu-test-vfiopci": (
        "VFIO: DeviceClass vfio.gpu.nvidia.com (VFIO passthrough) is not provided",
        "pod",
        r"vfio\.gpu\.nvidia\.com",
    ),
    "gpu-test-vfio-config": (
        "VFIO: VfioDeviceConfig passthrough is not implemented; besides, the manifest itself "
        "puts its Pod in namespace gpu-test-vfiopci, which it does not create",
        "api",
        r'namespaces "gpu-test-vfiopci" not found',
    ),
    "imex-test1": (
        "IMEX: its claims use DeviceClass imex.nvidia.com (IMEX channels of NVIDIA's "
        "ComputeDomain controller), which this driver does not provide",
        "pod",
        r"imex\.nvidia\.com",
    ),
}


def load(name: str) -> list[dict[str, Any]]:
    path = QUICKSTART / f"{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not found (shared/nvidia-quickstart is not checked out here)")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [with_test_image(d) for d in docs]


def with_test_image(doc: dict[str, Any]) -> dict[str, Any]:
    """doc with every container image replaced by the local test image; nothing else."""
    doc = copy.deepcopy(doc)
    spec = doc.get("spec") or {}
    pod_spec = spec.get("template", {}).get("spec") if doc["kind"] != "Pod" else spec
    for key in ("containers", "initContainers"):
        for c in (pod_spec or {}).get(key) or []:
            c["image"] = TEST_IMAGE
    return doc


def namespace_of(docs: list[dict[str, Any]]) -> str:
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")


def logged_devices(text: str) -> dict[str, str]:
    """env name -> value from the stand-in nvidia-smi's 'env: K=V' lines."""
    return dict(line[5:].split("=", 1) for line in text.splitlines() if line.startswith("env: "))


@pytest.mark.parametrize("name", RUNNABLE)
def test_quickstart_runs(plugin_running: Cluster, name: str) -> None:
    cluster = plugin_running
    docs = load(name)
    ns = namespace_of(docs)
    cluster.delete_namespace(ns)
    cluster.apply(docs)
    want = sum(1 for d in docs if d["kind"] == "Pod")
    try:
        pods = wait_for(f"{ns}: {want} pods Running", lambda: _running(cluster, ns, want), 120, 1)
        uuids = {n: d["attributes"]["uuid"]["string"] for n, d in cluster.devices().items()}
        seen: dict[str, list[str]] = {}  # claim-device set -> who saw it
        for pod in pods:
            allocated = cluster.pod_devices(pod)
            for ctr, devices in allocated.items():
                assert devices, f"{ns}/{pod.metadata.name}/{ctr}: no device allocated"
                got = wait_for(
                    f"{ns}/{pod.metadata.name}/{ctr} to log its devices",
                    lambda p=pod.metadata.name, c=ctr: (
                        logged_devices(cluster.logs(ns, p, c)) or None
                    ),
                    30,
                    0.5,
                )
                expected = {env_name(d): uuids[d] for d in devices}
                assert got == expected, f"{ns}/{pod.metadata.name}/{ctr}: env {got} != {expected}"
                seen.setdefault(",".join(devices), []).append(f"{pod.metadata.name}/{ctr}")
        _check_sharing(name, seen)
        SUMMARY.append(
            f"quickstart {name}: Running; "
            + "; ".join(f"{'+'.join(who)} -> {devs}" for devs, who in sorted(seen.items()))
        )
    finally:
        cluster.delete_namespace(ns)


def _running(cluster: Cluster, ns: str, want: int) -> list[Any] | None:
    pods = cluster.pods(ns)
    if len(pods) == want and all(p.status.phase == "Running" for p in pods):
        return pods
    return None


def _check_sharing(name: str, seen: dict[str, list[str]]) -> None:
    if name == "gpu-test1":  # two pods, one distinct GPU each
        assert len(seen) == 2 and all(len(w) == 1 for w in seen.values()), seen
    elif name == "gpu-test2" or name == "gpu-test3":  # two containers of one pod share one claim
        assert len(seen) == 1 and len(next(iter(seen.values()))) == 2, seen


@pytest.mark.parametrize("name", sorted(NOT_RUNNABLE))
def test_quickstart_not_runnable(plugin_running: Cluster, name: str) -> None:
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError

    cluster = plugin_running
    why, where, evidence = NOT_RUNNABLE[name]
    docs = load(name)
    namespaces = sorted(namespaces_of(docs))
    for ns in namespaces:
        cluster.delete_namespace(ns)
    try:
        refused = None
        for doc in docs:
            try:
                cluster.apply([doc])
            except (ApiException, DynamicApiError) as e:
                refused = f"{doc['kind']} {doc['metadata']['name']}: {_api_message(e)}"
                break
        if where == "api":
            assert refused and re.search(evidence, refused), (
                f"{name}: expected refusal, got {refused}"
            )
            message = refused
        else:
            assert refused is None, f"{name}: the API refused the manifest: {refused}"
            message = wait_for(
                f"{name}: a failure matching {evidence!r}",
                lambda: _failure(cluster, namespaces, evidence),
                90,
                1,
            )
        running = [
            f"{ns}/{p.metadata.name}"
            for ns in namespaces
            for p in cluster.pods(ns)
            if p.status.phase == "Running"
        ]
        assert not running, f"{name}: {running} Running although expected not to run"
        first = " ".join(message.split())
        SUMMARY.append(f"quickstart {name}: not runnable ({why}); observed: {first[:200]}")
    finally:
        for ns in namespaces:
            cluster.delete_namespace(ns)


def _api_message(e: Exception) -> str:
    """The Status message of an API error (its body), else the error's text."""
    body = getattr(e, "body", None)
    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(e)


def namespaces_of(docs: list[dict[str, Any]]) -> set[str]:
    out = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    return out | {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}


def _failure(cluster: Cluster, namespaces: list[str], pattern: str) -> str | None:
    texts = []
    for ns in namespaces:
        for p in cluster.pods(ns):
            for cond in p.status.conditions or []:
                if cond.status == "False" and cond.message:
                    texts.append(cond.message)
        for e in cluster.core().list_namespaced_event(ns).items:
            if e.type == "Warning":
                texts.append(f"{e.reason}: {e.message}")
    for t in texts:
        if re.search(pattern, t):
            return t
    return None
