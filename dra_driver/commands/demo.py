"""`dra-driver demo`: a whole simulated node in one command.

Starts the real plugin process on the bundled fake NVML against an in-process
API server double and plays the kubelet towards it: registration, the
published ResourceSlices, a claim prepared and unprepared, the device health
stream with an injected XID (the device turns Unhealthy, its slice gets a
taint, and both clear after recovery), and a clean stop. No GPU, cluster or
kubelet directory of the host is touched: everything lives in one work directory.
It is a tour for a person and a smoke test of the assembled pieces at once,
so every step checks what it shows and a failed step ends the demo with exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # heavy imports stay out of the CLI's start-up
    from ..inventory import Device, Inventory
    from ..kubelet.proto.drahealth_v1alpha1_pb2 import NodeWatchResourcesResponse
    from ..prepare.types import ClaimRef
    from ..testing.apiserver import ApiServerDouble
    from ..testing.fakenvml import FakeNode
    from ..testing.kubelet import DraClient, PluginRegistration
    from ..testing.plugin import PluginProcess
    from ..testing.simhost import SimHost

log = logging.getLogger(__name__)

T = TypeVar("T")

DRIVER = "gpu.nvidia.com"
NODE = "demo-node"
NAMESPACE = "default"
CLAIM_NAME = "demo-claim"
# A double-bit ECC error: a hardware fault, unlike the application XIDs
# (13, 31, 43, ...) a health monitor must ignore.
DEMO_XID = 48

READY_TIMEOUT = 20.0
SLICES_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
HEALTH_CHANGE_TIMEOUT = 5.0
# The plugin's hold for event-driven conditions, short so the demo shows recovery.
DEMO_HOLD = 2.0
DEMO_POLL_INTERVAL = 0.25
STOP_TIMEOUT = 10.0
HINT_PORT = 6443
LOG_TAIL_LINES = 20


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole simulated node: fake NVML, API server double, the real plugin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--topology",
        default="small",
        help="fake NVML topology name or file (default: small; list them with "
        "`python -m dra_driver.testing.fakenvml topologies`)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (plugin log, kubeconfig, host tree, state) at the end",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="run in this new or empty directory instead of a temp dir (implies --keep)",
    )
    p.set_defaults(func=run)


class StepFailed(Exception):
    """A demo step did not see what it must; the message says what it saw instead."""


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..testing.fakenvml import FakeNvmlError, topology_names, topology_path

    try:
        topo = topology_path(args.topology)
    except FakeNvmlError as e:
        print(f"dra-driver demo: {e}", file=sys.stderr)
        return 2
    # A shipped topology goes by its name (readable in the hints); a file by an
    # absolute path, since the plugin runs in the work directory.
    topology = args.topology if args.topology in topology_names() else str(topo.resolve())
    try:
        workdir, keep = _make_workdir(args.workdir, args.keep)
    except OSError as e:
        print(f"dra-driver demo: {e}", file=sys.stderr)
        return 2
    demo = Demo(topology, workdir, keep)
    try:
        return asyncio.run(demo.main())
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop_plugin()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _make_workdir(requested: Path | None, keep: bool) -> tuple[Path, bool]:
    """The work directory and whether to keep it; a named one must be new or empty."""
    if requested is None:
        import tempfile

        # Short, under /tmp: unix socket paths are limited to 107 bytes.
        return Path(tempfile.mkdtemp(prefix="dra-demo-", dir="/tmp")), keep
    path = requested.absolute()
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise OSError(f"work directory {path} is not empty; give a new or empty one")
    return path, True


def _table(rows: Sequence[Sequence[str]], indent: str = "   ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _describe(exc: BaseException) -> str:
    """One line for an unexpected error: gRPC status, else type and message."""
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        return f"gRPC {exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class Demo:
    """The steps, in order, with every resource they start released at the end."""

    def __init__(self, topology: str, workdir: Path, keep: bool) -> None:
        self.topology = topology
        self.workdir = workdir
        self.keep = keep
        self.plugins_dir = workdir / "plugins"
        self.registry_dir = workdir / "registry"
        self.cdi_root = workdir / "cdi"
        self.state_dir = workdir / "state"
        self.fault_log = workdir / "fakenvml" / "faults.jsonl"
        self.log_path = workdir / "plugin.log"
        self.api: ApiServerDouble | None = None
        self.plugin: PluginProcess | None = None
        self.node: FakeNode | None = None
        self.inventory: Inventory | None = None
        self.host: SimHost | None = None
        self.kubeconfig: Path | None = None
        self.spec_path: Path | None = None
        self.injected = f"xid --gpu 0 --xid {DEMO_XID}"  # the fault step's, once it ran
        self.step = ""
        self.started = time.monotonic()

    # ---- output -----------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def heading(self, number: int, title: str) -> None:
        self.step = f"{number}. {title}"
        self.say()
        self.say(self.step)

    def rel(self, path: Path) -> str:
        """A path under the work directory, shortened for the screen."""
        try:
            return str(path.relative_to(self.workdir))
        except ValueError:
            return str(path)

    # ---- the run ----------------------------------------------------------------------

    async def main(self) -> int:
        self.say(
            f"dra-driver demo: a simulated node. The real plugin process runs on the bundled\n"
            f"fake NVML (topology {self.topology}) against an in-process API server double, and "
            "this\ncommand plays the kubelet. No GPU or cluster is used."
        )
        self.say(f"work directory: {self.workdir}{'' if self.keep else ' (removed at the end)'}")
        try:
            await self.steps()
        except StepFailed as e:
            self.fail(str(e))
            return 1
        except Exception as e:
            log.debug("demo step failed", exc_info=True)
            self.fail(_describe(e))
            return 1
        finally:
            self.stop_plugin()
            if self.api is not None:
                self.api.stop()
        self.say()
        self.say(f"demo finished in {time.monotonic() - self.started:.1f}s")
        if self.keep:
            self.say(f"kept: {self.workdir} (plugin log: {self.rel(self.log_path)})")
        self.hints()
        return 0

    async def steps(self) -> None:
        from ..testing.kubelet import DraClient

        self.start_api()
        self.build_host()
        self.start_plugin()
        reg = await self.registration()
        await self.slices()
        async with DraClient.for_registration(reg) as dra:
            ref, target = await self.prepare(dra)
            if reg.has_health:
                await self.health(dra, target)
            else:
                self.heading(7, "Device health stream")
                self.say("   the plugin does not serve DRAResourceHealth; skipping steps 7 and 8")
            await self.unprepare(dra, ref)
        await self.stop(reg)

    def fail(self, message: str) -> None:
        self.say()
        self.say(f"FAILED at step {self.step or '0. start'}: {message}")
        # A crashed plugin closes its sockets a moment before it can be reaped.
        code = _wait(self.plugin.proc, 0.5) if self.plugin is not None else None
        if code is not None and "the plugin exited" not in message:
            self.say(f"the plugin process has exited with code {code}")
        tail = self.log_tail()
        if tail:
            self.say(f"last lines of the plugin log ({self.log_path}):")
            for line in tail:
                self.say(f"   {line}")
        if not self.keep:
            self.say("(run with --keep to inspect the work directory afterwards)")

    def log_tail(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-LOG_TAIL_LINES:]

    # ---- steps ------------------------------------------------------------------------

    def start_api(self) -> None:
        from ..testing.apiserver import ApiServerDouble

        self.heading(1, "API server double")
        self.api = ApiServerDouble().start()
        node = self.api.create_node(NODE)
        self.kubeconfig = self.api.kubeconfig_path(self.workdir)
        rows = [
            ("listening on", self.api.url),
            ("node", f"{NODE} (uid {node['metadata']['uid']})"),
            ("kubeconfig", str(self.kubeconfig)),
        ]
        for line in _table(rows):
            self.say(line)

    def build_host(self) -> None:
        from ..commands.inventory import load_inventory
        from ..settings import Settings
        from ..testing.fakenvml import FakeNode, library_path
        from ..testing.simhost import build

        self.heading(2, "Simulated host")
        self.node = FakeNode(self.topology, fault_log=self.fault_log)
        # The fake library reads these at nvmlInit; the plugin gets the same
        # fault log, so a fault injected here reaches it.
        self.node.apply_env()
        # Its problems are shown below, as part of the step, not as log lines.
        quiet = logging.getLogger("dra_driver.inventory")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            inv = load_inventory(Settings(nvml_library=library_path()))
        finally:
            quiet.setLevel(level)
        self.inventory = inv
        # What `python -m dra_driver.testing.simhost` builds.
        self.host = build(self.workdir / "host", self.topology)
        for gpu in inv.gpus:
            what = (
                f"MIG mode, {len(gpu.mig_devices)} MIG devices" if gpu.mig_enabled else "whole GPU"
            )
            self.say(f"   GPU {gpu.index}  {gpu.uuid}  {gpu.pci_bus_id}  {what}")
        self.say(
            f"   driver {inv.driver_version}, CUDA {inv.cuda_driver_version}; /dev, /proc, sysfs "
            f"and the driver files under {self.rel(self.host.root)}/"
        )
        for problem in inv.problems:
            self.say(f"   note: {problem}")

    def start_plugin(self) -> None:
        from ..testing.plugin import PluginProcess

        assert self.host is not None and self.kubeconfig is not None
        self.heading(3, "Plugin process")
        # The demo passes its own flags (PluginProcess drops whatever the
        # caller's shell exports that a flag reads): the simulated host's, as
        # the simhost command prints them, with --fake-nvml among them.
        self.plugin = PluginProcess.start(
            self.workdir,
            [
                *self.host.run_flags(self.topology),
                f"--kubeconfig={self.kubeconfig}",
                f"--health-hold={DEMO_HOLD:g}",
                f"--health-poll-interval={DEMO_POLL_INTERVAL:g}",
            ],
            {"FAKE_NVML_FAULTS": str(self.fault_log)},
            node_name=NODE,
            driver_name=DRIVER,
            topology=None,
            log_path=self.log_path,
            new_session=True,
        )
        self.say(f"   dra-driver run --fake-nvml {self.topology} --node-name {NODE} ...")
        self.say(f"   pid {self.plugin.pid}, log {self.rel(self.log_path)}")

    async def registration(self) -> PluginRegistration:
        from ..testing.kubelet import register, wait_for_socket

        self.heading(4, "Registration (as the kubelet does it)")
        t0 = time.monotonic()
        socket = await self.guarded(
            wait_for_socket(self.registry_dir, timeout=READY_TIMEOUT),
            READY_TIMEOUT + 1,
            "waiting for the registration socket",
        )
        waited = time.monotonic() - t0
        reg = await self.guarded(register(socket), CALL_TIMEOUT, "registering the plugin")
        if "v1.DRAPlugin" not in reg.supported_versions:
            raise StepFailed(f"the plugin does not offer v1.DRAPlugin: {reg.supported_versions}")
        rows = [
            ("socket", f"{self.rel(socket)} (appeared after {waited:.1f}s)"),
            ("driver", reg.name),
            ("endpoint", self.rel(reg.endpoint)),
            ("services", ", ".join(reg.supported_versions)),
            ("kubelet uses", reg.service),
        ]
        for line in _table(rows):
            self.say(line)
        return reg

    async def slices(self) -> None:
        import asyncio

        assert self.inventory is not None and self.api is not None
        self.heading(5, "ResourceSlices published to the API server")
        expected = sorted(d.name for d in self.inventory.devices)
        api = self.api
        pool: tuple[int, int, list[dict[str, Any]]] | None = None

        async def complete() -> tuple[int, int, list[dict[str, Any]]]:
            nonlocal pool
            while True:
                pool = _pool(api.slices(driver=DRIVER, node=NODE))
                if pool is not None and sorted(d["name"] for d in pool[2]) == expected:
                    return pool
                await asyncio.sleep(0.05)

        try:
            generation, count, devices = await self.guarded(
                complete(), SLICES_TIMEOUT, "waiting for the ResourceSlices"
            )
        except StepFailed:
            seen = sorted(d["name"] for d in pool[2]) if pool else []
            raise StepFailed(
                f"the pool did not reach the expected devices within {SLICES_TIMEOUT:.0f}s: "
                f"published {seen or 'nothing'}, expected {expected}"
            ) from None
        rows = [("DEVICE", "TYPE", "PROFILE/PRODUCT", "MEMORY")]
        for d in devices:
            attrs = d.get("attributes") or {}
            label = _attr(attrs, "profile") or _attr(attrs, "productName")
            memory = ((d.get("capacity") or {}).get("memory") or {}).get("value", "-")
            rows.append((d["name"], _attr(attrs, "type"), label, str(memory)))
        for line in _table(rows):
            self.say(line)
        self.say(
            f"   pool {NODE}: generation {generation}, {count} slice(s), {len(devices)} devices "
            "(the same as the NVML inventory)"
        )

    async def prepare(self, dra: DraClient) -> tuple[ClaimRef, Device]:
        from ..inventory import DeviceType
        from ..prepare.types import ClaimRef
        from ..testing.simhost import claim_object

        assert self.inventory is not None and self.api is not None
        self.heading(6, "Prepare an allocated ResourceClaim (NodePrepareResources v1)")
        mig = next((d for d in self.inventory.devices if d.type is DeviceType.MIG), None)
        gpu = next((d for d in self.inventory.devices if d.type is DeviceType.GPU), None)
        picks = [(req, d) for req, d in (("mig", mig), ("gpu", gpu)) if d is not None]
        if not picks:
            raise StepFailed(f"topology {self.topology} has no device to allocate")
        obj = claim_object(
            "",
            CLAIM_NAME,
            [{"request": req, "device": d.name} for req, d in picks],
            namespace=NAMESPACE,
            driver=DRIVER,
            pool=NODE,
        )
        del obj["metadata"]["uid"]  # the API server assigns it
        obj["spec"]["devices"]["requests"] = [
            {"name": req, "exactly": {"deviceClassName": f"{req}.nvidia.com"}} for req, _ in picks
        ]
        created = self.api.create("resourceclaims", obj, namespace=NAMESPACE)
        ref = ClaimRef(NAMESPACE, created["metadata"]["uid"], CLAIM_NAME)
        self.say(f"   claim {NAMESPACE}/{CLAIM_NAME} uid {ref.uid}, allocated:")
        for req, d in picks:
            self.say(f"     request {req!r} -> {d.name}")

        resp = await self.guarded(dra.prepare([ref]), CALL_TIMEOUT, "calling NodePrepareResources")
        entry = resp.claims.get(ref.uid)
        if entry is None:
            raise StepFailed("NodePrepareResources did not answer for the claim")
        if entry.error:
            raise StepFailed(f"NodePrepareResources failed: {entry.error}")
        rows = [("REQUEST", "DEVICE", "CDI ID")]
        ids: list[str] = []
        for d in entry.devices:
            ids.extend(d.cdi_device_ids)
            rows.append((",".join(d.request_names), d.device_name, ",".join(d.cdi_device_ids)))
        self.say("   prepared:")
        for line in _table(rows, indent="     "):
            self.say(line)
        got = sorted(d.device_name for d in entry.devices)
        if got != sorted(d.name for _, d in picks):
            raise StepFailed(f"prepared devices {got} are not the allocated ones")
        spec_path, spec = self.find_spec(ids)
        self.say(f"   CDI spec {self.rel(spec_path)} (cdiVersion {spec.get('cdiVersion')}):")
        for line in _spec_summary(spec):
            self.say(f"     {line}")
        self.spec_path = spec_path
        return ref, picks[0][1]

    def find_spec(self, ids: Sequence[str]) -> tuple[Path, dict[str, Any]]:
        """The spec file that defines every returned CDI id, found as a runtime would."""
        wanted = set(ids)
        for path in sorted(self.cdi_root.glob("*.json")):
            try:
                spec: dict[str, Any] = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            names = {f"{spec.get('kind')}={d.get('name')}" for d in spec.get("devices", [])}
            if wanted <= names:
                return path, spec
        raise StepFailed(f"no CDI spec in {self.cdi_root} defines {sorted(wanted)}")

    async def health(self, dra: DraClient, target: Device) -> None:
        from ..health.policy import DEFAULT_HOLD_SECONDS

        assert self.node is not None and self.inventory is not None
        self.heading(7, "Device health stream (DRAResourceHealth NodeWatchResources)")
        stream = dra.watch_health()
        try:
            first = await self.guarded(
                _next(stream), CALL_TIMEOUT, "waiting for the first health message"
            )
            before = _health_map(first)
            for line in _health_table(before):
                self.say(line)

            gpu = self.inventory.gpu_of(target)
            assert gpu is not None
            where = f"GPU {gpu.index}"
            gi = ci = None
            if target.mig is not None:
                gi, ci = target.mig.gpu_instance_id, target.mig.compute_instance_id
                where += f" GI {gi} CI {ci}"
            self.heading(8, f"Inject XID {DEMO_XID} on {where} (behind {target.name})")
            self.injected = f"xid --gpu {gpu.index} --xid {DEMO_XID}" + (
                f" --gi {gi} --ci {ci}" if gi is not None else ""
            )
            t0 = time.monotonic()
            self.node.faults.xid(gpu.index, DEMO_XID, gi, ci)
            changed = await self.until(
                stream,
                lambda now: now.get(target.name, ("", ""))[0] == "UNHEALTHY",
                HEALTH_CHANGE_TIMEOUT,
                f"{target.name} to turn Unhealthy on the stream",
            )
            self.say(f"   the stream reports, {1000 * (time.monotonic() - t0):.0f} ms later:")
            for line in _health_table(changed, before, indent="     "):
                self.say(line)
            others = sorted(
                n for n, (h, _) in changed.items() if n != target.name and h != "HEALTHY"
            )
            if others:
                raise StepFailed(f"the XID also hit {', '.join(others)}: wrong blast radius")
            siblings = f" (GPU {gpu.index}'s other MIG devices too)" if target.mig else ""
            self.say(f"   every other device{siblings} stays Healthy")
            taint = await self.slice_taint(target.name, present=True)
            self.say(
                f"   ResourceSlice: {target.name} tainted {taint} "
                f"({time.monotonic() - t0:.1f}s after the XID; new claims avoid it)"
            )

            self.node.faults.recover(gpu.index)
            self.say(
                f"   inject recover --gpu {gpu.index} (as after a GPU reset): the XID is held "
                f"until {DEMO_HOLD:g}s pass without a repeat on a GPU that answers NVML\n"
                f"   (--health-hold {DEMO_HOLD:g}: a demo setting; the driver's default is "
                f"{DEFAULT_HOLD_SECONDS:g}s)"
            )
            await self.until(
                stream,
                lambda now: now.get(target.name, ("", ""))[0] == "HEALTHY",
                DEMO_HOLD + HEALTH_CHANGE_TIMEOUT,
                f"{target.name} to recover on the stream",
            )
            self.say(f"   {target.name} HEALTHY again, {time.monotonic() - t0:.1f}s after the XID")
            await self.slice_taint(target.name, present=False)
            self.say(
                f"   ResourceSlice: taint removed ({time.monotonic() - t0:.1f}s after the XID)"
            )
        finally:
            await stream.aclose()

    async def until(
        self,
        stream: AsyncIterator[NodeWatchResourcesResponse],
        done: Callable[[dict[str, tuple[str, str]]], bool],
        timeout: float,
        what: str,
    ) -> dict[str, tuple[str, str]]:
        """The first health list for which done() holds; StepFailed after the timeout."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: dict[str, tuple[str, str]] = {}
        while (left := deadline - loop.time()) > 0:
            try:
                message = await asyncio.wait_for(_next(stream), left)
            except TimeoutError:
                break
            last = _health_map(message)
            if done(last):
                return last
        seen = ", ".join(f"{n} {h}" for n, (h, _) in sorted(last.items())) or "nothing"
        raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {seen})")

    async def slice_taint(self, device: str, present: bool) -> str:
        """Wait until the published device has (or no longer has) a taint; returns it."""
        import asyncio

        assert self.api is not None
        api = self.api

        def taints() -> list[dict[str, Any]]:
            for s in api.slices(driver=DRIVER, node=NODE):
                for d in s["spec"].get("devices") or []:
                    if d.get("name") == device:
                        return list(d.get("taints") or [])
            return []

        async def settled() -> str:
            while True:
                found = taints()
                if bool(found) == present:
                    return ", ".join(
                        f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in found
                    )
                await asyncio.sleep(0.05)

        what = "the taint to appear" if present else "the taint to go"
        return await self.guarded(settled(), SLICES_TIMEOUT, f"waiting for {what} on {device}")

    async def unprepare(self, dra: DraClient, ref: ClaimRef) -> None:
        self.heading(9, "Unprepare the claim (NodeUnprepareResources v1)")
        resp = await self.guarded(
            dra.unprepare([ref]), CALL_TIMEOUT, "calling NodeUnprepareResources"
        )
        entry = resp.claims.get(ref.uid)
        if entry is None:
            raise StepFailed("NodeUnprepareResources did not answer for the claim")
        if entry.error:
            raise StepFailed(f"NodeUnprepareResources failed: {entry.error}")
        assert self.spec_path is not None
        if self.spec_path.exists():
            raise StepFailed(f"the CDI spec {self.spec_path} is still there")
        self.say(f"   claim {ref.uid} unprepared; CDI spec {self.rel(self.spec_path)} removed")

    async def stop(self, reg: PluginRegistration) -> None:
        import asyncio

        self.heading(10, "Stop the plugin (SIGTERM)")
        assert self.plugin is not None
        proc = self.plugin.proc
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await asyncio.to_thread(_wait, proc, STOP_TIMEOUT)
        if code is None:
            raise StepFailed(f"the plugin did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM")
        self.say(f"   exited with code {code} after {time.monotonic() - t0:.1f}s")
        if code != 0:
            raise StepFailed(f"the plugin exited with code {code}")
        left = [self.rel(p) for p in (reg.endpoint, reg.socket) if p.exists()]
        if left:
            raise StepFailed(f"sockets left behind: {', '.join(left)}")
        self.say(f"   sockets removed: {self.rel(reg.endpoint)}, {self.rel(reg.socket)}")

    # ---- helpers ----------------------------------------------------------------------

    async def guarded(self, aw: Awaitable[T], timeout: float, what: str) -> T:
        """Await aw, unless the plugin exits or the timeout passes first."""
        import asyncio

        task = asyncio.ensure_future(aw)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    return task.result()
                if self.plugin is not None and (code := self.plugin.returncode) is not None:
                    raise StepFailed(f"the plugin exited with code {code} while {what}")
                if loop.time() >= deadline:
                    raise StepFailed(f"timed out after {timeout:.0f}s {what}")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    def stop_plugin(self) -> None:
        """Stop the plugin if it still runs (a failed step, an interrupt): TERM, then KILL."""
        if self.plugin is not None:
            self.plugin.stop(signal.SIGTERM, STOP_TIMEOUT)

    def hints(self) -> None:
        d = "$DIR"
        self.say()
        self.say("The same pieces by hand ($DIR: a short directory of your own):")
        self.say(
            f"   python -m dra_driver.testing.apiserver --port {HINT_PORT} "
            f"--kubeconfig-out {d}/kubeconfig &"
        )
        self.say(
            "   curl -sX POST -H 'Content-Type: application/json' "
            f"""-d '{{"metadata":{{"name":"{NODE}"}}}}' http://127.0.0.1:{HINT_PORT}/api/v1/nodes"""
        )
        self.say(f"   export FAKE_NVML_FAULTS={d}/faults.jsonl   # read by run, written by inject")
        self.say(
            f"   python -m dra_driver.testing.simhost {d}/host --topology {self.topology} "
            f"> {d}/host.flags   # --fake-nvml, --dev-root, --proc-root, ..."
        )
        self.say(
            f"   dra-driver run $(cat {d}/host.flags) --node-name {NODE} "
            f"--kubeconfig {d}/kubeconfig \\\n"
            f"       --plugins-dir {d}/plugins --registry-dir {d}/registry "
            f"--cdi-root {d}/cdi --state-dir {d}/state"
        )
        self.say(
            f"   python -m dra_driver.testing.fakenvml inject --topology {self.topology} "
            + self.injected
        )


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def _next(stream: AsyncIterator[T]) -> T:
    """The stream's next item; its end is a failure here (the plugin hung up)."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        raise StepFailed("the health stream ended") from None


def _pool(slices: list[dict[str, Any]]) -> tuple[int, int, list[dict[str, Any]]] | None:
    """(generation, slice count, devices) of a complete pool, else None.

    Complete: every slice of the highest generation is there, as the
    scheduler requires before it uses a pool.
    """
    if not slices:
        return None
    pools = [s["spec"].get("pool") or {} for s in slices]
    generation = max(int(p.get("generation", 0)) for p in pools)
    current = [s for s, p in zip(slices, pools, strict=True) if p.get("generation") == generation]
    count = int((current[0]["spec"].get("pool") or {}).get("resourceSliceCount", 0))
    if len(current) != count:
        return None
    devices = [d for s in current for d in s["spec"].get("devices") or []]
    return generation, count, devices


def _attr(attrs: dict[str, Any], name: str) -> str:
    """An attribute's value from the API's union shape ({"string": ...} and the like)."""
    value = attrs.get(name) or {}
    return str(next(iter(value.values()), "")) if isinstance(value, dict) else ""


def _health_map(message: NodeWatchResourcesResponse) -> dict[str, tuple[str, str]]:
    from ..kubelet.proto.drahealth_v1alpha1_pb2 import HealthStatus

    return {d.device.device_name: (HealthStatus.Name(d.health), d.message) for d in message.devices}


def _spec_summary(spec: dict[str, Any]) -> list[str]:
    """Per device: its nodes and env; then what every device shares (mounts, hooks)."""
    lines = []
    for dev in spec.get("devices", []):
        edits = dev.get("containerEdits") or {}
        nodes = ", ".join(n.get("path", "?") for n in edits.get("deviceNodes") or [])
        lines.append(f"{dev.get('name')}:")
        lines.append(f"  device nodes  {nodes or '-'}")
        for env in edits.get("env") or []:
            lines.append(f"  env           {env}")
    common = spec.get("containerEdits") or {}
    nodes = ", ".join(n.get("path", "?") for n in common.get("deviceNodes") or [])
    if nodes:
        lines.append(f"all devices: device nodes {nodes}")
    mounts = common.get("mounts") or []
    hooks = common.get("hooks") or []
    if mounts or hooks:
        hook_names = sorted(
            {next((a for a in h.get("args", [])[1:2]), h.get("hookName", "?")) for h in hooks}
        )
        lines.append(
            f"all devices: {len(mounts)} driver mount(s), hooks {', '.join(hook_names) or '-'}"
        )
    return lines


def _health_table(
    now: dict[str, tuple[str, str]],
    before: dict[str, tuple[str, str]] | None = None,
    indent: str = "   ",
) -> list[str]:
    """Device -> health (and message, when any device has one); with before, a diff."""
    with_message = any(msg for _, msg in now.values())
    head = ["DEVICE", *(["BEFORE"] if before is not None else []), "HEALTH"]
    rows = [head + (["MESSAGE"] if with_message else [])]
    names = sorted(set(now) | set(before or {}))
    for name in names:
        health, msg = now.get(name, ("absent", ""))
        if before is not None and before.get(name) == (health, msg):
            continue
        row = [name]
        if before is not None:
            row.append(before.get(name, ("absent", ""))[0])
        row.append(health)
        rows.append(row + ([msg] if with_message else []))
    return _table(rows, indent)
