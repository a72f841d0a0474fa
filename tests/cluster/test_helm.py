"""The Helm chart on the real cluster, as a cluster admin installs it.

The image comes from hack/image/build (an OCI archive, imported into the
cluster's containerd); the chart runs it with `fakeNvml.topology`, so the init
container builds a simulated host (mknod device nodes) and the plugin runs on
the fake NVML. The host-run plugin of the other cluster tests is stopped
meanwhile (both would serve the same sockets) and started again at the end.

In order: install -> the DaemonSet pod is Ready, registered with the real
kubelet and publishes the node's slices; a quickstart pod and a plain pod with
`nvidia.com/gpu: 1` reach Running; the admission policy and RBAC refuse what
they must, by impersonating the plugin's service account; the rendered chart
passes server-side dry-run; deleting the plugin pod (a rolling restart) leaves
running pods alone and new pods still start; `helm uninstall` leaves no slices.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import DRIVER, REPO, SUMMARY, TOPOLOGY, Cluster, env_name, wait_for
from .test_quickstart import TEST_IMAGE, load, logged_devices, namespace_of

CHART = REPO / "deploy" / "helm" / "dra-driver-gpu"
NAMESPACE = "dra-driver-gpu"
RELEASE = "gpu"
FULLNAME = f"{RELEASE}-dra-driver-gpu"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
pytestmark = pytest.mark.timeout(1500)  # the first test may build the image (minutes)


def _run(cmd: list[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def helm_binary() -> str:
    proc = _run([str(REPO / "hack" / "helm"), "--path"], timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"helm unavailable: {proc.stderr.strip()[-200:]}")
    return proc.stdout.strip()


def image_archive() -> tuple[str, Path]:
    from dra_driver import __version__

    archive = REPO / "build" / "image" / f"dra-driver-gpu-{__version__}.tar"
    if not archive.is_file():
        t0 = time.monotonic()
        proc = _run([str(REPO / "hack" / "image" / "build")], timeout=1200)
        if proc.returncode != 0:
            pytest.fail(f"hack/image/build failed:\n{proc.stderr[-2000:]}")
        SUMMARY.append(f"helm: image built in {time.monotonic() - t0:.0f}s: {proc.stdout.strip()}")
    return __version__, archive


@dataclass
class Release:
    cluster: Cluster
    helm: str
    values: list[str]

    def helm_cmd(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run(
            [self.helm, *args, "--kubeconfig", str(self.cluster.kubeconfig)], timeout=timeout
        )

    def plugin_pods(self) -> list[Any]:
        core = self.cluster.core()
        selector = f"app.kubernetes.io/instance={RELEASE}"
        return list(core.list_namespaced_pod(NAMESPACE, label_selector=selector).items)

    def ready_pod(self, timeout: float = 180) -> Any:
        def ready() -> Any:
            for pod in self.plugin_pods():
                if pod.metadata.deletion_timestamp:
                    continue
                conditions = {c.type: c.status for c in pod.status.conditions or []}
                if conditions.get("Ready") == "True":
                    return pod
            return None

        return wait_for("the plugin pod to be Ready", ready, timeout, 1)

    def plugin_log(self, pod: Any) -> str:
        return self.cluster.logs(NAMESPACE, pod.metadata.name, "plugin")


def _values(c: Cluster, version: str) -> list[str]:
    kubelet = c.env["KUBELET_ROOT_DIR"]
    extra_env = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": c.env["APISERVER_PORT"]},
    ]
    return [
        "--set", f"image.tag={version}",
        "--set", "image.pullPolicy=Never",
        "--set", f"kubeletDir={kubelet}",
        "--set", f"cdiRoot={c.cdi_dir}",
        "--set", f"fakeNvml.topology={TOPOLOGY}",
        "--set", f"fakeNvml.hostDir={c.dir / 'helm-simhost'}",
        "--set", "kubeletPlugin.hostNetwork=true",
        "--set", "logLevel=DEBUG",
        "--set", "health.pollIntervalSeconds=1",
        "--set-json", "kubeletPlugin.affinity=null",
        "--set-json", f"kubeletPlugin.extraEnv={json.dumps(extra_env)}",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    helm = helm_binary()
    version, archive = image_archive()
    ctr = Path(cluster.env["CONTAINERD_BIN"]) / "ctr"
    sock = cluster.dir / "containerd" / "containerd.sock"
    proc = _run(
        [str(ctr), "--address", str(sock), "-n", "k8s.io", "images", "import", str(archive)]
    )
    assert proc.returncode == 0, proc.stderr
    # The chart owns the DeviceClasses: the tier's plain copies go while it is installed.
    classes = cluster.resource("resource.k8s.io/v1", "DeviceClass")
    plain = [d for d in yaml.safe_load_all((REPO / "deploy/deviceclasses.yaml").read_text()) if d]
    for doc in plain:
        classes.delete(name=doc["metadata"]["name"])
    cluster.stop_plugin()
    r = Release(cluster, helm, _values(cluster, version))
    t0 = time.monotonic()
    try:
        proc = r.helm_cmd(
            "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            *r.values, "--wait", "--timeout", "5m", timeout=400,
        )  # fmt: skip
        if proc.returncode != 0:
            pods = [(p.metadata.name, p.status.phase) for p in r.plugin_pods()]
            pytest.fail(f"helm install failed: {proc.stderr}\nplugin pods: {pods}")
        SUMMARY.append(f"helm: install -> DaemonSet Ready in {time.monotonic() - t0:.1f}s")
        yield r
    finally:
        r.helm_cmd("uninstall", RELEASE, "-n", NAMESPACE, "--wait", timeout=300)
        cluster.apply_missing(plain)
        cluster.start_plugin()


def test_install_gives_a_ready_registered_pod_that_publishes(release: Release) -> None:
    c = release.cluster
    pod = release.ready_pod()
    log = release.plugin_log(pod)
    assert "registered with the kubelet" in log, log[-2000:]
    devices = c.wait_slices()
    assert devices and all(
        s["metadata"]["ownerReferences"][0]["kind"] == "Node" for s in c.slices()
    )
    # The sockets the kubelet dials are the host's, with the modes the plugin gives them.
    plugin_dir = c.plugin_dir
    assert (plugin_dir / "dra.sock").is_socket()
    assert oct((plugin_dir / "dra.sock").stat().st_mode & 0o777) == "0o600"
    assert oct(plugin_dir.stat().st_mode & 0o777) == "0o700"
    assert (plugin_dir / "dra-driver-gpu" / "heartbeat.json").is_file()
    ds = c.resource("apps/v1", "DaemonSet").get(name=FULLNAME, namespace=NAMESPACE)
    assert ds.status.numberReady == ds.status.desiredNumberScheduled == 1


def _running(c: Cluster, ns: str, want: int) -> list[Any] | None:
    pods = c.pods(ns)
    if len(pods) == want and all(p.status.phase == "Running" for p in pods):
        return pods
    return None


def test_quickstart_pod_runs_with_its_gpu(release: Release) -> None:
    c = release.cluster
    docs = load("gpu-test1")
    ns = namespace_of(docs)
    c.delete_namespace(ns)
    c.apply(docs)
    try:
        pods = wait_for(f"{ns} pods Running", lambda: _running(c, ns, 2), 180, 1)
        uuids = {n: d["attributes"]["uuid"]["string"] for n, d in c.devices().items()}
        for pod in pods:
            (devices,) = c.pod_devices(pod).values()
            got = wait_for(
                "the pod to log its devices",
                lambda p=pod.metadata.name: logged_devices(c.logs(ns, p, "ctr")) or None,
                30,
            )
            assert got.get(env_name(devices[0])) == uuids[devices[0]]
    finally:
        c.delete_namespace(ns)


EXTENDED_NS = "helm-extended"


def extended_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": EXTENDED_NS},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "ctr",
                    "image": TEST_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "nvidia-smi -L; sleep 3600"],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ],
        },
    }


def test_extended_resource_pod_runs_without_a_claim(release: Release) -> None:
    c = release.cluster
    c.delete_namespace(EXTENDED_NS)
    c.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": EXTENDED_NS}}])
    c.apply([extended_pod("plain-gpu-pod")])
    pods = wait_for("the nvidia.com/gpu pod Running", lambda: _running(c, EXTENDED_NS, 1), 180, 1)
    got = wait_for(
        "the pod to log its device",
        lambda: logged_devices(c.logs(EXTENDED_NS, pods[0].metadata.name, "ctr")) or None,
        30,
    )
    gpu_uuids = {
        d["attributes"]["uuid"]["string"]
        for d in c.devices().values()
        if d["attributes"]["type"]["string"] == "gpu"
    }
    assert set(got.values()) & gpu_uuids, got
    raw = c.resource("v1", "Pod").get(name=pods[0].metadata.name, namespace=EXTENDED_NS)
    assert raw.to_dict()["status"].get("extendedResourceClaimStatus"), "no claim was made"


def test_rolling_restart_keeps_running_pods_and_new_pods_start(release: Release) -> None:
    c = release.cluster
    before = c.pods(EXTENDED_NS)
    assert before and before[0].status.phase == "Running"
    old = release.ready_pod()
    t0 = time.monotonic()
    c.core().delete_namespaced_pod(old.metadata.name, NAMESPACE)
    wait_for(
        "the old plugin pod to go",
        lambda: all(p.metadata.uid != old.metadata.uid for p in release.plugin_pods()),
        120,
        1,
    )
    new = release.ready_pod()
    SUMMARY.append(f"helm: plugin pod replaced, new one Ready in {time.monotonic() - t0:.1f}s")
    assert new.metadata.uid != old.metadata.uid
    (after,) = c.pods(EXTENDED_NS)
    assert after.metadata.uid == before[0].metadata.uid and after.status.phase == "Running"
    assert after.status.container_statuses[0].restart_count == 0
    # A new pod still gets a device (prepared by the new plugin instance).
    c.core().delete_namespaced_pod(after.metadata.name, EXTENDED_NS, grace_period_seconds=0)
    wait_for("the first pod gone", lambda: not c.pods(EXTENDED_NS), 120, 1)
    c.apply([extended_pod("after-restart")])
    wait_for("a new pod Running", lambda: _running(c, EXTENDED_NS, 1), 180, 1)
    c.delete_namespace(EXTENDED_NS)


def _as_plugin(c: Cluster, node: str | None) -> Any:
    """An ApiClient that impersonates the plugin's service account (on node, if given).

    The ClusterRoleBinding names the ServiceAccount and the policy matches its
    user name, so the user (and the node extra a pod-bound token carries) is all
    that needs impersonating.
    """
    from kubernetes import config

    api = config.new_client_from_config(config_file=str(c.kubeconfig))
    api.default_headers["Impersonate-User"] = SA_USER
    if node is not None:
        api.default_headers[f"Impersonate-Extra-{NODE_EXTRA.replace('/', '%2F')}"] = node
    return api


def _slice(node: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [],
        },
    }


def _call(api: Any, method: str, path: str, body: Any = None) -> tuple[int, str]:
    """(HTTP status, body) of one request, as SliceApi makes them."""
    params = api.param_serialize(
        method=method,
        resource_path=path,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*params, _request_timeout=30)
    raw: bytes = response.read() or b""
    return response.status, raw.decode("utf-8", "replace")


def test_policy_and_rbac_refuse_what_they_must(release: Release) -> None:
    c = release.cluster
    own = _as_plugin(c, c.node)
    slices = "/apis/resource.k8s.io/v1/resourceslices?dryRun=All"
    status, body = _call(own, "POST", slices, _slice(c.node, "helm-policy-own"))
    assert status == 201, ("the plugin may write its own node's slice", status, body)
    status, body = _call(own, "POST", slices, _slice("some-other-node", "helm-policy-other"))
    assert status in (403, 422) and "may only write ResourceSlices" in body, (status, body)
    anonymous_node = _as_plugin(c, None)
    status, body = _call(anonymous_node, "POST", slices, _slice(c.node, "helm-policy-none"))
    assert status in (403, 422) and "names no node" in body, (status, body)
    for path in (
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
        "/api/v1/pods",
        "/api/v1/namespaces/default/pods",
    ):
        status, body = _call(own, "GET", path)
        assert status == 403, (path, status, body)
    status, body = _call(own, "GET", f"/api/v1/nodes/{c.node}")
    assert status == 200, body


def test_rendered_chart_passes_server_side_dry_run(release: Release) -> None:
    c = release.cluster
    ns = "helm-dry-run"
    proc = release.helm_cmd(
        "template", "dry", str(CHART), "-n", ns, *release.values,
        "--set", "deviceClasses.gpu.name=dry-gpu.nvidia.com",
        "--set", "deviceClasses.mig.name=dry-mig.nvidia.com",
        "--set", "metrics.enabled=true",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    c.apply_missing([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    try:
        for doc in docs:
            res = c.resource(doc["apiVersion"], doc["kind"])
            kwargs: dict[str, Any] = {"body": doc, "query_params": [("dryRun", "All")]}
            if res.namespaced:
                kwargs["namespace"] = ns
            res.create(**kwargs)  # raises with the server's reason on a rejection
    finally:
        c.delete_namespace(ns)
    assert {d["kind"] for d in docs} >= {
        "DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "DeviceClass",
        "Service",
    }  # fmt: skip


def test_uninstall_leaves_no_slices(release: Release) -> None:
    c = release.cluster
    assert c.slices()
    t0 = time.monotonic()
    proc = release.helm_cmd("uninstall", RELEASE, "-n", NAMESPACE, "--wait", timeout=300)
    assert proc.returncode == 0, proc.stderr
    wait_for("the node's slices to go", lambda: not c.slices(), 120, 1)
    SUMMARY.append(
        f"helm: uninstall -> no {DRIVER} slices after {time.monotonic() - t0:.1f}s "
        "(the kubelet wipes them 30 s after the plugin is gone)"
    )
    assert not (c.plugin_dir / "dra.sock").exists()
    assert not os.path.exists(c.plugin_dir / "dra-driver-gpu" / "heartbeat.json")
