"""Dynamic MIG through the real scheduler, kubelet and containerd.

For this module the plugin runs on a second simulated machine behind the node
(hack/cluster/plugin --host dynmig): topology a100-dynamic (4x A100 40GB, GPUs 0
and 1 in MIG mode with no MIG device yet) and `--dynamic-mig`. Its slices carry
a counter set per MIG-mode GPU and every (profile, placement) consuming from it;
the real scheduler picks placements from those counters, the plugin creates the
MIG device when the kubelet prepares the claim and destroys it at unprepare.

Which MIG devices exist is read the way an operator would, by a second process
asking NVML (`dra-driver inventory --json` on the same fake library and layout),
never from the plugin's own state. Afterwards the tier's usual machine
(dgx-h100, static) is put back with the flags it had.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dra_driver.prepare.checkpoint import decode
from dra_driver.testing.fakenvml import current_migs, load_topology

from .conftest import (
    HEALTH_HOLD,
    SUMMARY,
    Cluster,
    claim_pod,
    env_name,
    health_by_device,
    running_pod,
    wait_for,
)
from .test_quickstart import load, logged_devices

HOST = "dynmig"
TOPOLOGY = "a100-dynamic"
MIG_NAME = re.compile(r"gpu-(\d+)-mig-([0-9a-z]+)-(\d+)-(\d+)")
UNSCHEDULABLE = "cannot allocate all claims"


def prepared_claims(cluster: Cluster) -> dict[str, Any]:
    """Claims in the checkpoint of the machine the plugin runs on (none without a file)."""
    try:
        return dict(decode(cluster.checkpoint.read_bytes()).claims)
    except FileNotFoundError:
        return {}


def node_migs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """MIG devices NVML lists on the plugin's machine, by name, from a separate process."""
    env = {**os.environ, "FAKE_NVML_FAULTS": str(cluster.faults)}
    cmd = [sys.executable, "-m", "dra_driver", "inventory", "--fake-nvml", TOPOLOGY, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return {d["name"]: d for d in json.loads(proc.stdout)["devices"] if d["type"] == "mig"}


def gi_ci(cluster: Cluster, device: str) -> tuple[int, int, int]:
    """(GPU index, GI id, CI id) of a created MIG device, from the fake's layout."""
    m = MIG_NAME.fullmatch(device)
    assert m, f"not a MIG device name: {device}"
    minor, profile_id, start = int(m[1]), int(m[3]), int(m[4])
    topo = load_topology(TOPOLOGY)
    index = next(g.index for g in topo.gpus if g.minor == minor)
    for mig in current_migs(topo, cluster.faults)[index]:
        if mig.profile_id == profile_id and mig.placement_start == start:
            return index, mig.gi_id, mig.ci_id
    raise AssertionError(f"{device} is not in the fake's layout")


@pytest.fixture(scope="module")
def dynamic(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with the plugin on the dynamic-MIG machine; the tier's machine put back."""
    before = (list(cluster.plugin_flags), cluster.topology, cluster.host)
    # Both machines write CDI specs into the one directory containerd reads: swap empty.
    wait_for("no claim prepared on the tier's machine", lambda: not prepared_claims(cluster), 90)
    cluster.stop_plugin()
    try:
        t0 = time.monotonic()
        cluster.start_plugin(
            "--dynamic-mig",
            "--health-hold",
            str(HEALTH_HOLD),
            "--health-poll-interval",
            "1",
            topology=TOPOLOGY,
            host=HOST,
        )
        devices = cluster.wait_slices(timeout=90)
        SUMMARY.append(
            f"dynamic MIG: {TOPOLOGY} published {len(devices)} devices in "
            f"{time.monotonic() - t0:.1f}s"
        )
        assert not node_migs(cluster), "MIG devices exist before any claim"
        yield cluster
    finally:
        cluster.stop_plugin()
        flags, topology, host = before
        cluster.start_plugin(*flags, topology=topology, host=host)
        cluster.wait_slices(timeout=90)


def test_slices_offer_placements_not_the_mig_mode_gpus(dynamic: Cluster) -> None:
    cluster = dynamic
    slices = cluster.slices()
    counter_sets = {cs["name"] for s in slices for cs in s["spec"].get("sharedCounters") or []}
    assert counter_sets == {"gpu-0-counter-set", "gpu-1-counter-set"}, counter_sets
    devices = cluster.devices()
    # MIG-mode GPUs 0 and 1 are not devices themselves; GPUs 2 and 3 (MIG off) are.
    assert {n for n in devices if not n.count("-mig-")} == {"gpu-2", "gpu-3"}
    for name, d in devices.items():
        if "-mig-" in name:
            (used,) = d["consumesCounters"]
            assert used["counterSet"] == f"gpu-{name.split('-')[1]}-counter-set", name


def mig_pod(ns: str) -> list[dict[str, Any]]:
    selector = "device.attributes['gpu.nvidia.com'].profile == '1g.5gb'"
    request = {
        "deviceClassName": "mig.nvidia.com",
        "selectors": [{"cel": {"expression": selector}}],
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    return [namespace, *claim_pod(ns, "mig", "mig", request)]


def test_mig_claim_creates_its_device_and_pod_deletion_destroys_it(dynamic: Cluster) -> None:
    cluster = dynamic
    ns = "dynmig"
    cluster.delete_namespace(ns)
    core = cluster.core()
    t0 = time.monotonic()
    cluster.apply(mig_pod(ns))
    try:
        pod = running_pod(cluster, ns, "mig")
        to_running = time.monotonic() - t0
        (device,) = cluster.pod_devices(pod)["ctr"]
        assert MIG_NAME.fullmatch(device), device

        # The device exists now, as NVML lists it, and is the one the container got.
        migs = node_migs(cluster)
        assert set(migs) == {device}, migs
        uuid = migs[device]["uuid"]
        logged = wait_for(
            "the container to log its devices",
            lambda: logged_devices(cluster.logs(ns, "mig", "ctr")) or None,
            30,
            0.5,
        )
        assert logged == {env_name(device): uuid}, logged
        claim_name = pod.status.resource_claim_statuses[0].resource_claim_name
        uid = cluster.claim(ns, claim_name)["metadata"]["uid"]
        assert uid in prepared_claims(cluster)
        spec = cluster.cdi_dir / f"k8s.gpu.nvidia.com-claim_{uid}.json"
        assert spec.is_file()

        # Health follows the created instance: Healthy, then an XID on its GI/CI hits it.
        def health() -> str | None:
            got = health_by_device(core.read_namespaced_pod_status("mig", ns), [device])
            return got.get(device)

        wait_for(f"{device} Healthy in the pod's status", lambda: health() == "Healthy", 60, 0.5)
        gpu, gi, ci = gi_ci(cluster, device)
        t1 = time.monotonic()
        cluster.inject("xid", "--gpu", str(gpu), "--xid", "79", "--gi", str(gi), "--ci", str(ci))
        wait_for(f"{device} Unhealthy after an XID on GI {gi}", lambda: health() == "Unhealthy",
                 60, 0.1)  # fmt: skip
        to_unhealthy = time.monotonic() - t1
        wait_for(f"{device} Healthy again", lambda: health() == "Healthy", HEALTH_HOLD + 60, 0.2)

        # Deleting the pod unprepares the claim: the device is destroyed, nothing is left.
        t2 = time.monotonic()
        core.delete_namespaced_pod("mig", ns, grace_period_seconds=0)
        wait_for(f"{device} destroyed after the pod's deletion", lambda: not node_migs(cluster),
                 120, 0.5)  # fmt: skip
        to_gone = time.monotonic() - t2
        wait_for("the claim out of the checkpoint", lambda: uid not in prepared_claims(cluster),
                 30, 0.5)  # fmt: skip
        assert not spec.exists(), f"{spec} left behind"
        SUMMARY.append(
            f"dynamic MIG: pod with a 1g.5gb claim Running {to_running:.1f}s after creation "
            f"on {device} ({uuid}); XID on GI {gi} -> Unhealthy in {to_unhealthy:.2f}s; "
            f"device destroyed {to_gone:.1f}s after the pod's deletion"
        )
    finally:
        cluster.delete_namespace(ns)


def test_a_plugin_killed_while_its_pod_runs_still_destroys_what_it_made(dynamic: Cluster) -> None:
    """kill -9 with a created MIG device in use; the new process adopts it from the checkpoint."""
    cluster = dynamic
    ns = "dynmig-kill"
    cluster.delete_namespace(ns)
    core = cluster.core()
    cluster.apply(mig_pod(ns))
    try:
        pod = running_pod(cluster, ns, "mig")
        (device,) = cluster.pod_devices(pod)["ctr"]
        before = node_migs(cluster)
        assert set(before) == {device}, before
        published = cluster.devices()
        cluster.kill_plugin()
        t0 = time.monotonic()
        cluster.start_plugin()
        # Back with the same slices: the device in use stays the abstract placement.
        cluster.wait_slices(timeout=90)
        wait_for("the slices as before the kill", lambda: cluster.devices() == published, 60, 0.5)
        back = time.monotonic() - t0
        assert node_migs(cluster) == before, "the restart changed the MIG layout"
        t1 = time.monotonic()
        core.delete_namespaced_pod("mig", ns, grace_period_seconds=0)
        wait_for(
            f"{device} destroyed by the restarted plugin", lambda: not node_migs(cluster), 120, 0.5
        )
        SUMMARY.append(
            f"dynamic MIG: plugin kill -9 while {device} was in use -> slices unchanged "
            f"{back:.1f}s after the restart; the new process destroyed it "
            f"{time.monotonic() - t1:.1f}s after the pod's deletion"
        )
    finally:
        if cluster.plugin_pid() is None:
            cluster.start_plugin()
        cluster.delete_namespace(ns)


def test_gpu_test4_unchanged_gets_what_the_counters_allow(dynamic: Cluster) -> None:
    """NVIDIA's gpu-test4: 4 replicas, each 1g.5gb x2 + 2g.10gb + 3g.20gb of one GPU.

    Each replica fills a whole A100 (7 of 7 compute slices): two MIG-mode GPUs
    fit two replicas, so the scheduler must run exactly two and leave two pending.
    """
    cluster = dynamic
    docs = load("gpu-test4")
    ns = next(d["metadata"]["name"] for d in docs if d["kind"] == "Namespace")
    cluster.delete_namespace(ns)
    t0 = time.monotonic()
    cluster.apply(docs)
    try:

        def settled() -> tuple[list[Any], list[Any]] | None:
            pods = cluster.pods(ns)
            run = [p for p in pods if p.status.phase == "Running"]
            waiting = [
                p
                for p in pods
                if any(
                    c.reason == "Unschedulable" and UNSCHEDULABLE in (c.message or "")
                    for c in p.status.conditions or []
                )
            ]
            return (run, waiting) if len(run) == 2 and len(waiting) == 2 else None

        running, _pending = wait_for(f"{ns}: 2 pods Running, 2 unschedulable", settled, 180, 1)
        to_running = time.monotonic() - t0
        migs = node_migs(cluster)
        parents = set()
        for pod in running:
            allocated = cluster.pod_devices(pod)
            devices = [d for ds in allocated.values() for d in ds]
            assert len(devices) == 4 and set(devices) <= set(migs), (allocated, sorted(migs))
            (parent,) = {migs[d]["parentUUID"] for d in devices}
            parents.add(parent)
            profiles = sorted(migs[d]["attributes"]["profile"] for d in devices)
            assert profiles == ["1g.5gb", "1g.5gb", "2g.10gb", "3g.20gb"], profiles
            for ctr, (d,) in allocated.items():
                got = wait_for(
                    f"{pod.metadata.name}/{ctr} to log its device",
                    lambda p=pod.metadata.name, c=ctr: (
                        logged_devices(cluster.logs(ns, p, c)) or None
                    ),
                    30,
                    0.5,
                )
                assert got == {env_name(d): migs[d]["uuid"]}, got
        assert len(parents) == 2 and len(migs) == 8, sorted(migs)

        t1 = time.monotonic()
        cluster.delete_namespace(ns)
        wait_for("every MIG device destroyed", lambda: not node_migs(cluster), 120, 0.5)
        SUMMARY.append(
            f"dynamic MIG: gpu-test4 unchanged -> 2 replicas Running in {to_running:.1f}s "
            f"(8 MIG devices created on 2 GPUs), 2 unschedulable (no counters left); "
            f"all destroyed {time.monotonic() - t1:.1f}s after the namespace's deletion"
        )
    finally:
        cluster.delete_namespace(ns)
