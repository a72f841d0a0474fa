"""A fleet of plugins against one real kube-apiserver: start, health flaps, API server restart.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_fleet.py --nodes 20 --nodes 50
    PYTHONPATH=. .venv/bin/python tests/bench/bench_fleet.py --nodes 100 --window 60

Needs the real-cluster tier's binaries (hack/cluster/build puts kube-apiserver
and etcd under ${XDG_CACHE_HOME:-~/.cache}/dra-driver-gpu/cluster/); only etcd
and kube-apiserver are started here. Each node is one `dra-driver run` child
(the kit's PluginProcess) with its own fake NVML (topology, fault log), node
name and socket directories, publishing its ResourceSlices to the API server
as an admin (token in the system:masters group: this measures load, not RBAC).
A Node object per node is created first, so the slices get their
ownerReference as on a real cluster. No kubelet, scheduler or controllers run:
every resource.k8s.io request the API server counts is a plugin's (the
bench's own polling is subtracted).

Per fleet size it measures, from the API server's own /metrics
(apiserver_request_total, apiserver_request_duration_seconds,
apiserver_longrunning_requests, apiserver_watch_events_*):
  * start: time from the first exec until every node's slices are listed, and
    the API requests per node by verb;
  * health flaps at the field rate (NVIDIA: ~19 remediation events per 1,000
    nodes per day), at 100x that, and at a storm rate (--storm events/s across
    the fleet) that makes the per-event cost visible within the window: each
    event is an XID 48 on a random GPU, which taints the device and clears
    after --health-hold s; slice writes/s and the request latency p50/p99;
  * an API server restart (etcd kept), with a lasting fault (row remapping
    failed: Unhealthy, tainted) injected on a tenth of the nodes while it is
    down: time until every node watches again, and the writes per slice (one
    per changed slice, none for the other nodes).
Then prints the per-node costs the paper extrapolation in the issue note uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prometheus_client.parser import text_string_to_metric_families

from dra_driver.testing.fakenvml import FaultInjector, load_topology
from dra_driver.testing.plugin import PluginProcess

DRIVER = "gpu.nvidia.com"
FIELD_RATE_PER_NODE_DAY = 19 / 1000  # NVIDIA: remediation requests per node per day
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
WANTED_GATES = (
    "DRADeviceTaints",
    "DRAPartitionableDevices",
    "DRAAdminAccess",
    "DRAPrioritizedList",
    "DRAResourceClaimDeviceStatus",
    "ResourceHealthStatus",
)
TOKEN = "fleet-bench-admin-token"


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dra-driver-gpu" / "cluster"


def find_binary(name: str) -> Path:
    """The highest cached version of a component (either layout hack/cluster has used)."""
    root = cache_root()

    def version(path: Path) -> tuple[int, ...]:
        for part in reversed(path.parts):
            m = re.fullmatch(r"(?:[a-z-]*-)?v(\d+)\.(\d+)\.(\d+)", part)
            if m:
                return tuple(int(x) for x in m.groups())
        return ()

    hits = sorted(
        [*root.glob(f"*/bin/{name}"), *root.glob(f"*/{name}"), *root.glob(f"*/*/bin/{name}")],
        key=lambda p: (version(p), p.stat().st_mtime),
    )
    if not hits:
        raise SystemExit(f"no {name} under {root}: run hack/cluster/build first")
    return hits[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feature_gates(apiserver: Path) -> str:
    """Every wanted gate the binary still lists (a GA gate is not listed, and on anyway)."""
    text = subprocess.run(
        [str(apiserver), "--help"], capture_output=True, text=True, check=False
    ).stdout
    known = set(re.findall(r"^\s*(?:kube:)?([A-Za-z0-9]+)=true\|false", text, re.M))
    return ",".join(f"{g}=true" for g in WANTED_GATES if g in known)


class ControlPlane:
    """etcd + kube-apiserver, all state under one directory.

    TODO(cluster): share the start-up with hack/cluster/up once it has landed
    on main (certificates, kubeconfigs, feature gates); this is the minimum a
    load test needs: self-signed serving certificate, one admin token.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.etcd_bin = find_binary("etcd")
        self.apiserver_bin = find_binary("kube-apiserver")
        self.etcd_port, self.peer_port, self.port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.kubeconfig = root / "admin.kubeconfig"
        self.bench_requests: Counter[str] = Counter()  # our own, by verb

    def start(self) -> None:
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                str(pki / "sa.key"),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (pki / "tokens.csv").write_text(f'{TOKEN},fleet-admin,fleet-admin,"system:masters"\n')
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "fleet",
                            "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": TOKEN}}],
                    "contexts": [
                        {"name": "fleet", "context": {"cluster": "fleet", "user": "admin"}}
                    ],
                    "current-context": "fleet",
                }
            )
        )
        with open(self.root / "etcd.log", "ab") as log:
            self.etcd = subprocess.Popen(
                [
                    str(self.etcd_bin),
                    "--name",
                    "fleet",
                    "--data-dir",
                    str(self.root / "etcd"),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{self.etcd_port}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{self.etcd_port}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{self.peer_port}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{self.peer_port}",
                    "--initial-cluster",
                    f"fleet=http://127.0.0.1:{self.peer_port}",
                    "--listen-metrics-urls",
                    "",
                    "--quota-backend-bytes",
                    str(2 << 30),
                    "--unsafe-no-fsync",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.start_apiserver()

    def start_apiserver(self, timeout: float = 120.0) -> float:
        """Start kube-apiserver; seconds until /readyz answers ok."""
        pki = self.root / "pki"
        t0 = time.monotonic()
        with open(self.root / "kube-apiserver.log", "ab") as log:
            self.apiserver = subprocess.Popen(
                [
                    str(self.apiserver_bin),
                    "--etcd-servers",
                    f"http://127.0.0.1:{self.etcd_port}",
                    "--bind-address",
                    "127.0.0.1",
                    "--advertise-address",
                    "127.0.0.1",
                    "--secure-port",
                    str(self.port),
                    "--cert-dir",
                    str(pki / "serving"),
                    "--token-auth-file",
                    str(pki / "tokens.csv"),
                    "--service-account-issuer",
                    "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file",
                    str(pki / "sa.pub"),
                    "--service-account-signing-key-file",
                    str(pki / "sa.key"),
                    "--service-cluster-ip-range",
                    "10.0.0.0/24",
                    "--authorization-mode",
                    "RBAC",
                    "--endpoint-reconciler-type",
                    "none",
                    "--profiling=false",
                    "--feature-gates",
                    feature_gates(self.apiserver_bin),
                    "--v",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while time.monotonic() - t0 < timeout:
            if self.apiserver.poll() is not None:
                raise SystemExit(f"kube-apiserver exited; see {self.root / 'kube-apiserver.log'}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.get("/readyz", verb="") == b"ok":
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise SystemExit("kube-apiserver not ready")

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.send_signal(signal.SIGTERM)
            try:
                self.apiserver.wait(30)
            except subprocess.TimeoutExpired:
                self.apiserver.kill()
                self.apiserver.wait()
            self.apiserver = None

    def cpu_seconds(self) -> float:
        """CPU time kube-apiserver and etcd have used so far (utime + stime)."""
        total = 0.0
        for proc in (self.apiserver, self.etcd):
            if proc is not None:
                with contextlib.suppress(OSError):
                    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.terminate()
            self.etcd.wait(30)

    def request(self, method: str, path: str, body: Any = None, verb: str = "") -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if verb:
            self.bench_requests[verb] += 1
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
            return bytes(r.read())

    def get(self, path: str, verb: str = "LIST") -> bytes:
        return self.request("GET", path, verb=verb)

    def slices(self) -> list[dict[str, Any]]:
        return list(json.loads(self.get(SLICES))["items"])

    def metrics(self) -> Metrics:
        return Metrics.parse(self.request("GET", "/metrics").decode())


@dataclass
class Metrics:
    """The API server's counters and histograms we read, by label set."""

    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # verb, resource, code
    buckets: dict[tuple[str, str], dict[float, float]] = field(default_factory=dict)
    long_running: Counter[tuple[str, str]] = field(default_factory=Counter)  # verb, resource
    watch_events: Counter[str] = field(default_factory=Counter)  # kind
    watch_bytes: Counter[str] = field(default_factory=Counter)  # kind
    response_bytes: Counter[tuple[str, str]] = field(default_factory=Counter)  # verb, resource

    @classmethod
    def parse(cls, text: str) -> Metrics:
        m = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                lab = s.labels
                if s.name == "apiserver_request_total":
                    m.requests[
                        (lab.get("verb", ""), lab.get("resource", ""), lab.get("code", ""))
                    ] += s.value
                elif s.name == "apiserver_request_duration_seconds_bucket":
                    key = (lab.get("verb", ""), lab.get("resource", ""))
                    le = float(lab["le"])
                    m.buckets.setdefault(key, {})
                    m.buckets[key][le] = m.buckets[key].get(le, 0.0) + s.value
                elif s.name == "apiserver_longrunning_requests":
                    m.long_running[(lab.get("verb", ""), lab.get("resource", ""))] += s.value
                elif s.name == "apiserver_watch_events_total":
                    m.watch_events[lab.get("kind", lab.get("resource", ""))] += s.value
                elif s.name == "apiserver_watch_events_sizes_sum":
                    m.watch_bytes[lab.get("kind", lab.get("resource", ""))] += s.value
                elif s.name == "apiserver_response_sizes_sum":
                    m.response_bytes[(lab.get("verb", ""), lab.get("resource", ""))] += s.value
        return m

    def count(self, resource: str, verbs: tuple[str, ...] = ()) -> dict[str, float]:
        out: Counter[str] = Counter()
        for (verb, res, _code), n in self.requests.items():
            if res == resource and (not verbs or verb in verbs):
                out[verb] += n
        return dict(out)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def quantiles(after: Metrics, before: Metrics, verbs: tuple[str, ...], resource: str = "") -> str:
    """p50/p99 (upper bucket bound) of the requests between two scrapes."""
    merged: dict[float, float] = {}
    for key, b in after.buckets.items():
        if key[0] not in verbs or (resource and key[1] != resource):
            continue
        old = before.buckets.get(key, {})
        for le, n in b.items():
            merged[le] = merged.get(le, 0.0) + n - old.get(le, 0.0)
    if not merged or max(merged.values()) <= 0:
        return "no requests"
    total = merged[float("inf")]
    out = []
    for q in (0.5, 0.99):
        for le in sorted(merged):
            if merged[le] >= q * total:
                out.append(f"p{int(q * 100)} <= {le * 1e3:g} ms")
                break
    return f"{int(total)} requests, " + ", ".join(out)


def write_verbs(counts: dict[str, float]) -> float:
    return sum(counts.get(v, 0.0) for v in ("POST", "PUT", "PATCH", "DELETE"))


@dataclass
class Node:
    name: str
    plugin: PluginProcess
    faults: FaultInjector


def make_nodes(
    cp: ControlPlane,
    n: int,
    root: Path,
    topology: str,
    hold: float,
    poll: float,
    nodes: list[Node],
) -> None:
    """Create the Node objects and start one plugin each, into nodes (so they are stopped)."""
    spec = load_topology(topology)
    for i in range(n):
        name = f"fleet-{i:04d}"
        cp.request(
            "POST",
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}},
            verb="",
        )
        plugin = PluginProcess.start(
            root / name,
            [
                f"--kubeconfig={cp.kubeconfig}",
                f"--health-hold={hold}",
                f"--health-poll-interval={poll}",
                "--log-level=WARNING",
            ],
            node_name=name,
            topology=topology,
        )
        assert plugin.fault_log is not None
        nodes.append(Node(name, plugin, FaultInjector(spec, plugin.fault_log)))


def slices_by_node(cp: ControlPlane) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in cp.slices():
        out.setdefault(s["spec"].get("nodeName", ""), []).append(s)
    return out


def wait_published(
    cp: ControlPlane, nodes: list[Node], want: int, t0: float, timeout: float
) -> float:
    names = {n.name for n in nodes}
    while time.monotonic() - t0 < timeout:
        have = slices_by_node(cp)
        if all(len(have.get(name, [])) >= want for name in names):
            return time.monotonic() - t0
        dead = [n.name for n in nodes if not n.plugin.alive()]
        if dead:
            raise SystemExit(f"plugins exited: {dead[:5]}: {nodes[0].plugin.log_text()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("not all slices published in time")


def load() -> str:
    a, b, c = os.getloadavg()
    return f"load {a:.2f} {b:.2f} {c:.2f}"


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def flaps(
    cp: ControlPlane,
    nodes: list[Node],
    rate_per_s: float,
    window: float,
    rng: random.Random,
    gpus: int,
    hold: float,
) -> str:
    """Inject XID 48s as a Poisson process for window s; report writes/s and latency.

    The count runs on for hold + 2 s after the window, so every event's
    taint and its clearing are in it.
    """
    before = cp.metrics()
    cpu0 = cp.cpu_seconds()
    t_end = time.monotonic() + window
    events = 0
    next_at = time.monotonic() + (rng.expovariate(rate_per_s) if rate_per_s > 0 else window + 1)
    while time.monotonic() < t_end:
        now = time.monotonic()
        if now >= next_at:
            node = rng.choice(nodes)
            node.faults.xid(rng.randrange(gpus), 48)
            events += 1
            next_at = now + rng.expovariate(rate_per_s)
        time.sleep(max(0.0, min(0.05, next_at - now, t_end - now)))
    time.sleep(hold + 2.0)  # the last events clear
    after = cp.metrics()
    writes = write_verbs(delta(after.count("resourceslices"), before.count("resourceslices")))
    took = window + hold + 2.0
    cpu = cp.cpu_seconds() - cpu0
    return (
        f"{events} events in {window:.0f} s (+{hold + 2:.0f} s to clear) "
        f"({rate_per_s * 3600:.3g}/h fleet-wide): "
        f"{writes:.0f} slice writes = {writes / took:.3f} writes/s"
        + (f", {writes / events:.2f} writes per event" if events else "")
        + f"; resourceslices latency: "
        f"{quantiles(after, before, ('POST', 'PUT', 'PATCH', 'DELETE'), 'resourceslices')} "
        f"(writes), all requests: "
        f"{quantiles(after, before, ('GET', 'LIST', 'POST', 'PUT', 'PATCH', 'DELETE'))}; "
        f"apiserver+etcd CPU {cpu:.2f} s ({cpu / took * 100:.1f}% of a core); {load()}"
    )


def restart(
    cp: ControlPlane,
    nodes: list[Node],
    rng: random.Random,
    gpus: int,
    want: int,
    changed_nodes: int,
    settle: float,
) -> None:
    """Restart kube-apiserver (etcd stays) with a lasting fault injected on some nodes meanwhile.

    The fault (row remapping failed: a polled Unhealthy condition, so a taint)
    lasts past the restart, so
    each of those nodes has exactly one slice change to write once the server
    is back; every other node has none. Writes per slice are counted by
    metadata.generation (the server bumps it on every spec change).
    """

    def state() -> dict[str, tuple[str, int, str]]:
        return {
            s["metadata"]["name"]: (
                s["metadata"]["resourceVersion"],
                int(s["metadata"].get("generation", 0)),
                s["spec"].get("nodeName", ""),
            )
            for s in cp.slices()
        }

    before = state()
    cp.stop_apiserver()
    down_at = time.monotonic()
    hit = rng.sample(nodes, min(changed_nodes, len(nodes)))
    hit_gpu = {n.name: rng.randrange(gpus) for n in hit}
    for node in hit:  # these nodes have something to write once the server is back
        node.faults.remap(hit_gpu[node.name], failure=True)
    time.sleep(2.0)
    ready = cp.start_apiserver()
    cpu0 = cp.cpu_seconds()  # the new apiserver's own start-up excluded
    base = Metrics()  # a restarted API server counts from zero
    t_ready = time.monotonic()
    # every node watches again (one long-running WATCH on resourceslices each)
    watching = 0.0
    while time.monotonic() - t_ready < 120:
        watching = cp.metrics().long_running.get(("WATCH", "resourceslices"), 0.0)
        if watching >= len(nodes):
            break
        time.sleep(0.5)
    t_watch = time.monotonic() - t_ready
    time.sleep(settle)  # a health poll sees the fault, the write lands
    after = cp.metrics()
    cpu = cp.cpu_seconds() - cpu0
    counts = delta(after.count("resourceslices"), base.count("resourceslices"))
    now = state()
    hit_names = set(hit_gpu)
    gen_delta = {name: now[name][1] - before.get(name, ("", 0, ""))[1] for name in now}
    changed_of_hit = sum(1 for name, d in gen_delta.items() if d and now[name][2] in hit_names)
    unchanged_written = sum(
        1
        for name, (rv, _, owner) in now.items()
        if owner not in hit_names and before.get(name, ("",))[0] != rv
    )
    print(
        f"  restart: down {t_ready - down_at - ready:.1f} s + {ready:.1f} s to ready; every node "
        f"watching again {t_watch:.1f} s after ready ({watching:.0f}/{len(nodes)} watches); "
        f"resourceslices requests in the {t_watch + settle:.0f} s after ready: "
        f"{dict(sorted(counts.items()))}; apiserver+etcd CPU {cpu:.2f} s; {load()}"
    )
    print(
        f"  restart: {len(hit_names)} nodes got a remap failure while it was down ({want} slice(s) "
        f"per node): {changed_of_hit} of their slices rewritten, most writes to one slice "
        f"{max(gen_delta.values(), default=0)} (target 1); slices of the other "
        f"{len(nodes) - len(hit_names)} nodes rewritten: {unchanged_written} (target 0); "
        f"{write_verbs(counts):.0f} writes in all"
    )
    for node in hit:
        node.faults.recover(hit_gpu[node.name])


def run_fleet(n: int, args: argparse.Namespace, rng: random.Random) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"fleet-{n}-", dir="/tmp"))
    cp = ControlPlane(root)
    nodes: list[Node] = []
    try:
        cp.start()
        print(f"\n=== {n} nodes x {args.topology} ({root}); {load()}")
        spec = load_topology(args.topology)
        gpus = len(spec.gpus)
        base = cp.metrics()
        cpu0 = cp.cpu_seconds()
        cp.bench_requests.clear()
        t0 = time.monotonic()
        make_nodes(cp, n, root, args.topology, args.hold, args.poll, nodes)
        spawn = time.monotonic() - t0
        # how many slices one node publishes: wait for the first node, then for all
        first = nodes[0].name
        while not slices_by_node(cp).get(first):
            time.sleep(0.2)
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(nodes[0].plugin.log_text()[-3000:])
        time.sleep(1.0)
        want = len(slices_by_node(cp)[first])
        took = wait_published(cp, nodes, want, t0, args.timeout)
        time.sleep(2.0)  # let every node settle (converged, watching)
        after = cp.metrics()
        start_cpu = cp.cpu_seconds() - cpu0
        polls = cp.bench_requests["LIST"]
        start_counts = delta(after.count("resourceslices"), base.count("resourceslices"))
        start_counts["LIST"] = start_counts.get("LIST", 0) - polls
        node_counts = delta(after.count("nodes"), base.count("nodes"))
        node_counts["POST"] = node_counts.get("POST", 0) - n  # the bench created the Nodes
        body = json.dumps(cp.slices()).encode()
        watches = after.long_running.get(("WATCH", "resourceslices"), 0.0)
        print(
            f"  start: all {n} nodes' slices ({want} per node) listed {took:.1f} s after the "
            f"first exec (spawning took {spawn:.1f} s); apiserver+etcd CPU {start_cpu:.2f} s "
            f"(the bench's {polls} polling LISTs included); {load()}"
        )
        print(
            "  start: resourceslices requests per node: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(start_counts.items()) if v)
            + "; nodes requests per node: "
            + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(node_counts.items()) if v)
        )
        print(
            f"  steady: {watches:.0f} resourceslices watches ({watches / n:.2f} per node); "
            f"slices {len(body) / n / 1024:.1f} KiB JSON per node; plugin RSS "
            f"{rss_mib([x.plugin.pid for x in nodes]) / n:.1f} MiB per node"
        )
        field_rate = n * FIELD_RATE_PER_NODE_DAY / 86400
        if not args.no_flaps:
            print(
                "  flaps, field rate: "
                + flaps(cp, nodes, field_rate, args.window, rng, gpus, args.hold)
            )
            print(
                "  flaps, 100x: "
                + flaps(cp, nodes, 100 * field_rate, args.window, rng, gpus, args.hold)
            )
            print(
                "  flaps, storm: " + flaps(cp, nodes, args.storm, args.window, rng, gpus, args.hold)
            )
        restart(cp, nodes, rng, gpus, want, max(1, n // 10), args.poll + 3)
        m = cp.metrics()
        print(
            f"  totals since the restart: resourceslices watch events "
            f"{m.watch_events.get('resourceslices', 0):.0f}, "
            f"{m.watch_bytes.get('resourceslices', 0) / 1024:.1f} KiB"
        )
    finally:
        for node in nodes:
            node.plugin.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            with contextlib.suppress(Exception):
                node.plugin.stop(timeout=20)
        cp.stop()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nodes", type=int, action="append", help="fleet sizes (default 20, 50)")
    ap.add_argument("--topology", default="dgx-h100", help="each node's fake topology")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per flap phase")
    ap.add_argument("--storm", type=float, default=2.0, help="storm events/s, fleet-wide")
    ap.add_argument("--hold", type=float, default=5.0, help="--health-hold of the plugins")
    ap.add_argument("--poll", type=float, default=10.0, help="--health-poll-interval (default)")
    ap.add_argument("--timeout", type=float, default=300.0, help="start-up timeout")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--no-flaps", action="store_true", help="start and restart only")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    # SIGTERM (timeout(1), a CI job's cancel) unwinds like Ctrl-C: plugins and servers stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"kube-apiserver {find_binary('kube-apiserver')}, etcd {find_binary('etcd')}; "
        f"{os.cpu_count()} CPUs; {load()}"
    )
    for n in args.nodes or [20, 50]:
        run_fleet(n, args, rng)
    return 0


if __name__ == "__main__":
    sys.exit(main())
