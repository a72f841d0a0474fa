"""The real-cluster tier: upstream control plane, kubelet and containerd from hack/cluster.

One cluster per Kubernetes version is brought up (hack/cluster/up) into a temp
dir the first time a test asks for it and taken down (hack/cluster/down) at the
end of the session. The plugin is this repository's `dra-driver run` on the fake
NVML over a simulated host with real character devices (hack/cluster/plugin).

Everything here is marked `cluster` and deselected from the main suite; run it
with `pytest -m cluster tests/cluster` (README, third command). Without Go, the
module proxy or root the tier skips with one line saying which.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack" / "cluster"
DRIVER = "gpu.nvidia.com"
# The topology the tier's plugin simulates: full GPUs and two MIG-mode GPUs.
TOPOLOGY = "dgx-h100"
# Short enough that a test sees an XID condition clear.
HEALTH_HOLD = 4.0
PRIMARY_VERSION = "1.37"
CLUSTER_TEST_TIMEOUT = 600
TEST_IMAGE = "docker.io/dra-driver-gpu/busybox:test"  # hack/cluster/build's test image
SUMMARY: list[str] = []  # lines for the terminal summary (quickstart outcomes, timings)

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here that needs a cluster is marked `cluster` (the rest run in the main suite)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and "clusters" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.cluster)
            # The first test of a version also waits for its cluster to come up.
            item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("cluster tier")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll probe until it returns something other than None/False; fail after timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except Exception as e:  # an API hiccup while the cluster settles
            last_error = e
        if time.monotonic() > deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
        time.sleep(interval)


def env_name(device: str) -> str:
    """The CDI env variable our specs set for a device's UUID."""
    return "NVIDIA_DRA_DEVICE_" + re.sub(r"[^A-Z0-9_]", "_", device.upper()) + "_UUID"


def _run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def health_by_device(p: Any, devices: list[str]) -> dict[str, str]:
    """device name -> health, from the containers' allocatedResourcesStatus.

    Entries are named claim:<pod claim>[/<request>]; each resource is identified by
    the first CDI id the plugin returned for the device (`<kind>=<claim uid>-<device>`)
    or else `<driver>/<pool>/<device>`.
    """
    out: dict[str, str] = {}
    for cs in p.status.container_statuses or []:
        for entry in cs.allocated_resources_status or []:
            for r in entry.resources or []:
                for d in devices:
                    if r.resource_id.endswith(("-" + d, "/" + d)):
                        out[d] = r.health
    return out


def claim_pod(
    ns: str, name: str, claim_template: str, request: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """A ResourceClaimTemplate with one request (default: a whole GPU) and a pod using it."""
    exactly = request or {"deviceClassName": "gpu.nvidia.com"}
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"namespace": ns, "name": claim_template},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": ns, "name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "ctr",
                        "image": TEST_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": [
                            "sh",
                            "-c",
                            "nvidia-smi -L; trap 'exit 0' TERM; sleep 9999 & wait",
                        ],
                        "resources": {"claims": [{"name": "gpu"}]},
                    }
                ],
                "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": claim_template}],
            },
        },
    ]


@dataclass
class Cluster:
    """A running hack/cluster cluster and this repository's plugin on it."""

    dir: Path
    version: str
    env: dict[str, str]
    api: Any  # kubernetes.client.ApiClient
    plugin_flags: list[str] = field(default_factory=list)
    # The simulated machine the plugin runs on (hack/cluster/plugin --topology/--host).
    topology: str = TOPOLOGY
    host: str = "simhost"

    @property
    def node(self) -> str:
        return self.env["NODE_NAME"]

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def cdi_dir(self) -> Path:
        return self.dir / "cdi"

    @property
    def plugin_dir(self) -> Path:
        """This driver's directory under the kubelet's plugins dir (its dra.sock)."""
        return Path(self.env["KUBELET_ROOT_DIR"]) / "plugins" / DRIVER

    @property
    def checkpoint(self) -> Path:
        """The plugin's checkpoint (hack/cluster/plugin: --state-dir DIR/plugin-state)."""
        state = "plugin-state" if self.host == "simhost" else f"{self.host}-state"
        return self.dir / state / "checkpoint.json"

    @property
    def faults(self) -> Path:
        """The fake NVML's fault log, where it also keeps the MIG layout it was told to make."""
        return self.dir / self.host / "fakenvml" / "faults.jsonl"

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def dynamic(self) -> Any:
        from kubernetes import dynamic

        return dynamic.DynamicClient(self.api)

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dynamic().resources.get(api_version=api_version, kind=kind)

    # --- objects -----------------------------------------------------------------------

    def apply(self, docs: list[dict[str, Any]]) -> None:
        """Create every object, in order (namespaces first, as the manifests list them)."""
        for doc in docs:
            res = self.resource(doc["apiVersion"], doc["kind"])
            ns = doc.get("metadata", {}).get("namespace")
            res.create(body=doc, namespace=ns) if res.namespaced else res.create(body=doc)

    def apply_missing(self, docs: list[dict[str, Any]]) -> None:
        """apply(), leaving objects that already exist alone."""
        from kubernetes.client.exceptions import ApiException

        for doc in docs:
            try:
                self.apply([doc])
            except ApiException as e:
                if e.status != 409:
                    raise

    def delete_namespace(self, name: str, timeout: float = 90) -> None:
        from kubernetes.client.exceptions import ApiException

        core = self.core()
        try:
            core.delete_namespace(name, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise
            return

        def gone() -> bool:
            try:
                core.read_namespace(name)
            except ApiException as e:
                return e.status == 404
            return False

        wait_for(f"namespace {name} to go away", gone, timeout, 0.5)

    def pods(self, namespace: str) -> list[Any]:
        return list(self.core().list_namespaced_pod(namespace).items)

    def claim(self, namespace: str, name: str) -> dict[str, Any]:
        res = self.resource("resource.k8s.io/v1", "ResourceClaim")
        return dict(res.get(name=name, namespace=namespace).to_dict())

    def slices(self) -> list[dict[str, Any]]:
        res = self.resource("resource.k8s.io/v1", "ResourceSlice")
        items = res.get(field_selector=f"spec.nodeName={self.node}").to_dict()["items"]
        return [s for s in items if s["spec"]["driver"] == DRIVER]

    def devices(self) -> dict[str, dict[str, Any]]:
        """Published devices by name."""
        return {d["name"]: d for s in self.slices() for d in s["spec"].get("devices") or []}

    def pod_devices(self, pod: Any) -> dict[str, list[str]]:
        """container name -> allocated device names, from the pod's claims."""
        by_pod_claim: dict[str, str] = {}
        for st in pod.status.resource_claim_statuses or []:
            by_pod_claim[st.name] = st.resource_claim_name
        for rc in pod.spec.resource_claims or []:
            if rc.resource_claim_name:
                by_pod_claim[rc.name] = rc.resource_claim_name
        out: dict[str, list[str]] = {}
        for c in pod.spec.containers:
            names: list[str] = []
            for ref in (c.resources.claims or []) if c.resources else []:
                claim = self.claim(pod.metadata.namespace, by_pod_claim[ref.name])
                results = claim["status"]["allocation"]["devices"]["results"]
                for r in results:
                    if r["driver"] == DRIVER and (
                        ref.request is None or r["request"].split("/")[0] == ref.request
                    ):
                        names.append(r["device"])
            out[c.name] = sorted(names)
        return out

    def logs(self, namespace: str, pod: str, container: str) -> str:
        return str(self.core().read_namespaced_pod_log(pod, namespace, container=container))

    # --- processes ---------------------------------------------------------------------

    def hack(
        self, script: str, *args: str, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHON": sys.executable}
        return _run([str(HACK / script), str(self.dir), *args], timeout, env)

    def start_plugin(
        self, *extra: str, topology: str | None = None, host: str | None = None
    ) -> None:
        """Start the plugin with extra (else the last flags) on a simulated machine.

        topology and host pick another machine (hack/cluster/plugin --host), kept
        for later starts; the default is the one the tier started with.
        """
        self.topology = topology or self.topology
        self.host = host or self.host
        args = ["--topology", self.topology, "--host", self.host]
        args += ["--", *(extra or self.plugin_flags)]
        proc = self.hack("plugin", *args, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"hack/cluster/plugin failed:\n{_tail(proc.stderr)}")
        self.plugin_flags = list(extra or self.plugin_flags)

    def plugin_pid(self) -> int | None:
        try:
            pid = int((self.dir / "run" / "plugin.pid").read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def kill_plugin(self, sig: int = signal.SIGKILL) -> None:
        pid = self.plugin_pid()
        if pid is not None:
            os.kill(pid, sig)
            wait_for("the plugin to exit", lambda: self.plugin_pid() is None, 20)
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "run" / "plugin.pid").unlink()

    def stop_plugin(self) -> None:
        self.hack("plugin", "--stop", timeout=60)

    def restart_kubelet(self) -> float:
        """Stop the kubelet (SIGTERM) and start it again; returns seconds to Ready."""
        t0 = time.monotonic()
        proc = self.hack("restart", "kubelet", timeout=180)
        if proc.returncode != 0:
            pytest.fail(f"hack/cluster/restart kubelet failed:\n{_tail(proc.stderr)}")
        return time.monotonic() - t0

    def inject(self, *args: str) -> None:
        env = {**os.environ, "FAKE_NVML_FAULTS": str(self.faults)}
        cmd = [
            sys.executable,
            "-m",
            "dra_driver.testing.fakenvml",
            "inject",
            "--topology",
            self.topology,
            *args,
        ]
        proc = _run(cmd, 30, env)
        if proc.returncode != 0:
            pytest.fail(f"fakenvml inject {' '.join(args)} failed: {proc.stderr.strip()}")

    def expected_devices(self) -> set[str]:
        """Device names `dra-driver slices` says the plugin's machine publishes."""
        publishing = [f for f in self.plugin_flags if f.startswith(("--dynamic-mig", "--partit"))]
        proc = _run(
            [
                sys.executable,
                "-m",
                "dra_driver",
                "slices",
                "--fake-nvml",
                self.topology,
                "--node-name",
                self.node,
                *publishing,
                "-o",
                "json",
            ],
            60,
        )
        assert proc.returncode == 0, proc.stderr
        items = json.loads(proc.stdout)["items"]
        return {d["name"] for s in items for d in s["spec"].get("devices") or []}

    def wait_slices(self, timeout: float = 60) -> dict[str, dict[str, Any]]:
        want = self.expected_devices()

        def published() -> dict[str, dict[str, Any]] | None:
            devices = self.devices()
            return devices if set(devices) == want else None

        return wait_for(
            f"ResourceSlices of node {self.node} with {len(want)} devices", published, timeout, 0.5
        )


def _build(version: str) -> dict[str, str]:
    if sys.platform != "linux":
        pytest.skip("cluster tier: Linux only")
    if os.geteuid() != 0:
        pytest.skip("cluster tier: needs root (containerd, kubelet mounts, mknod)")
    env = {**os.environ, "KUBE_VERSION": version}
    try:
        proc = _run([str(HACK / "build"), "--cached-only"], 120, env)
    except FileNotFoundError as e:
        pytest.skip(f"cluster tier: {e}")
    if proc.returncode == 3:
        reason = [ln for ln in proc.stderr.splitlines() if "unavailable" in ln]
        pytest.skip(f"cluster tier ({version}): {(reason or ['binaries unavailable'])[-1]}")
    if proc.returncode != 0:
        pytest.fail(f"hack/cluster/build ({version}) failed:\n{_tail(proc.stderr)}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


class Clusters:
    """One cluster per Kubernetes version, started on first use."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.running: dict[str, Cluster] = {}
        self.failed: dict[str, str] = {}
        self.attached: set[str] = set()

    def get(self, version: str) -> Cluster:
        if version in self.failed:
            pytest.skip(self.failed[version])
        if version not in self.running:
            try:
                self.running[version] = self._up(version)
            except pytest.skip.Exception as e:
                self.failed[version] = str(e)
                raise
        return self.running[version]

    def _up(self, version: str) -> Cluster:
        from kubernetes import config

        attach = os.environ.get("CLUSTER_DIR") if version == PRIMARY_VERSION else None
        if attach:  # a cluster someone brought up with hack/cluster/up: use it, keep it
            d = Path(attach).absolute()
            if not (d / "run" / "paths").is_file():
                pytest.fail(f"CLUSTER_DIR={attach} holds no cluster made by hack/cluster/up")
            self.attached.add(version)
        else:
            _build(version)
            d = self.base / f"k{version.replace('.', '')}"
            d.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            env = {**os.environ, "KUBE_VERSION": version}
            proc = _run([str(HACK / "up"), str(d)], 600, env)
            if proc.returncode != 0:
                _run([str(HACK / "down"), str(d)], 300)
                if proc.returncode == 3:
                    pytest.skip(f"cluster tier ({version}): {_tail(proc.stderr, 1)}")
                pytest.fail(f"hack/cluster/up ({version}) failed:\n{_tail(proc.stderr, 30)}")
            SUMMARY.append(f"Kubernetes {version}: up in {time.monotonic() - t0:.1f}s ({d})")
        values: dict[str, str] = {}
        for line in (d / "run" / "paths").read_text().splitlines():
            k, _, v = line.partition("=")
            values[k] = v
        api = config.new_client_from_config(config_file=str(d / "admin.kubeconfig"))
        c = Cluster(d, version, values, api)
        with open(REPO / "deploy" / "deviceclasses.yaml") as f:
            c.apply_missing([doc for doc in yaml.safe_load_all(f) if doc])
        c.stop_plugin()  # an attached cluster may run one with other flags
        c.start_plugin(
            "--health-hold",
            str(HEALTH_HOLD),
            "--health-poll-interval",
            "1",
            "--health-resend-interval",
            "5",
        )
        c.wait_slices()
        return c

    def release(self, version: str) -> None:
        """Take one version's cluster down now (a later get() brings up a new one)."""
        c = self.running.pop(version, None)
        if c is not None and version in self.attached:
            c.stop_plugin()
        elif c is not None:
            proc = _run([str(HACK / "down"), str(c.dir)], 300)
            if proc.returncode != 0:
                print(f"hack/cluster/down {c.dir} failed:\n{proc.stderr}", file=sys.stderr)

    def down(self) -> None:
        for version in list(self.running):
            self.release(version)


@pytest.fixture(scope="session")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    cs = Clusters(tmp_path_factory.mktemp("cluster"))
    try:
        yield cs
    finally:
        cs.down()


@pytest.fixture(scope="session")
def cluster(clusters: Clusters) -> Cluster:
    """The primary (1.37) cluster with the plugin running on dgx-h100."""
    return clusters.get(PRIMARY_VERSION)


@pytest.fixture
def plugin_running(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with its plugin running before and after the test (tests may kill it)."""
    if cluster.plugin_pid() is None:
        cluster.start_plugin()
    yield cluster
    if cluster.plugin_pid() is None:
        cluster.start_plugin()


def running_pod(cluster: Cluster, ns: str, name: str, timeout: float = 120) -> Any:
    """The pod once it is Running (the test fails after timeout)."""

    def probe() -> Any:
        p = cluster.core().read_namespaced_pod(name, ns)
        return p if p.status.phase == "Running" else None

    return wait_for(f"{ns}/{name} Running", probe, timeout, 0.5)
