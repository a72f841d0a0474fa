"""The node plugin process: composition and lifecycle of `dra-driver run`.

Start order (each step needs the previous one):
  socket paths checked -> metrics endpoint bound (with --metrics-address) ->
  NVML opened and read (worker thread) -> inventory ->
  health board -> health monitor (events registered; when --health) ->
  API client (optional) -> preparer (checkpoint loaded) ->
  slice publisher, claim status writer (background) -> DRA socket ->
  registration socket.
Files: umask 077 from the start; the plugin directory and the state directory
are 0700, sockets 0600 (whoever can connect can unprepare claims), CDI specs
0644 (runtimes read them) in a CDI root created 0755 if missing.
A failure before the sockets exist exits non-zero with one clear message:
a plugin without NVML, or without its sockets, must not look alive to the
kubelet. SIGTERM/SIGINT at any point leads to an orderly exit with code 0,
within the shutdown grace period even when an NVML call is hung in C (it
cannot be interrupted): past the grace the process exits regardless.

Every per-GPU NVML job (health samples, compute mode for claims) runs on that
GPU's worker thread with a deadline (nvml.deadline), shared by the monitor and
the preparer, so a wedged GPU stalls neither other GPUs nor any caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, memory
from .health.board import Health, HealthBoard
from .heartbeat import FILE_NAME as HEARTBEAT_FILE
from .heartbeat import Heartbeat
from .inventory import Inventory, build_inventory
from .kubelet.plugin import KubeletPlugin
from .kubelet.sockets import (
    SocketInUseError,
    SocketPathError,
    claim_path,
    socket_path_problems,
)
from .prepare.types import Preparer
from .settings import Settings
from .sysfs import pcie_root_resolver

if TYPE_CHECKING:  # heavy imports stay lazy: they cost startup time and memory
    from kubernetes.client import ApiClient

    from .claimstatus.writer import ClaimStatusWriter
    from .health.monitor import HealthMonitor
    from .metrics import Metrics, MetricsServer
    from .nvml.deadline import GpuWorkers, GuardedNvml
    from .nvml.migops import MigManager
    from .nvml.types import NvmlBackend
    from .prepare.preparer import ClaimPreparer
    from .rescan import Rescanner
    from .slices.publisher import SlicePublisher

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class StartupError(RuntimeError):
    """A start step failed in a way the operator must fix; the message says how."""


PRIVATE_DIR_MODE = 0o700
CDI_ROOT_MODE = 0o755


def run(settings: Settings) -> int:
    """Run the plugin until SIGTERM/SIGINT; returns the process exit code."""
    # Nothing this process creates is for other users unless it says so explicitly.
    os.umask(0o077)
    log.info("dra-driver %s starting on node %s", __version__, settings.node_name)
    problems = socket_path_problems(settings.dra_socket, settings.registration_socket)
    if problems:
        for p in problems:
            log.error("%s; shorten --plugins-dir/--registry-dir or the driver name", p)
        return EXIT_USAGE
    memory.limit_arenas()  # before any thread starts
    app = App(settings)
    code = asyncio.run(app.main())
    if app.nvml_calls_in_flight():
        # A call still inside NVML would block interpreter teardown (or return
        # into a half-finalised interpreter): leave now, the log is flushed.
        log.warning("exiting with an NVML call still running (hung GPU)")
        _flush_and_exit(code)
    return code


def _flush_and_exit(code: int) -> None:
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def prepare_directories(s: Settings) -> None:
    """Create the directories the plugin writes, with their modes (see the module doc).

    The plugin and state directories are ours and get 0700 even when they
    existed; the CDI root and the kubelet's directories may be shared, so an
    existing one keeps its mode.
    """
    for path in (s.plugin_dir, s.state_path):
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)
    _mkdir_with_mode(s.cdi_root, CDI_ROOT_MODE)


def _mkdir_with_mode(path: Path, mode: int) -> None:
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return
    os.chmod(path, mode)


class App:
    """Owns every long-lived component; tears down whatever was started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: NvmlBackend | None = None
        self.inventory: Inventory | None = None
        self.board: HealthBoard | None = None
        self.api: ApiClient | None = None
        self.plugin: KubeletPlugin | None = None
        self.preparer: ClaimPreparer | None = None
        self.mig_manager: MigManager | None = None
        self.monitor: HealthMonitor | None = None
        self.publisher: SlicePublisher | None = None
        self.claim_status: ClaimStatusWriter | None = None
        self.rescanner: Rescanner | None = None
        self._vanished: set[str] = set()  # devices gone from NVML that claims still hold
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        self.workers: GpuWorkers | None = None
        self.guarded: GuardedNvml | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._hard_exit: threading.Timer | None = None

    def nvml_calls_in_flight(self) -> bool:
        """Whether a per-GPU NVML job is still running (hung) right now."""
        workers, inv = self.workers, self.inventory
        if self.monitor is not None and self.monitor.event_thread_alive and self._stop.is_set():
            return True  # stopped, yet still inside nvmlEventSetWait: a hung event path
        if workers is None or inv is None:
            return False
        return any(workers.busy_since(g.uuid) is not None for g in inv.gpus)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        started = time.monotonic()
        startup = asyncio.create_task(self._start(), name="startup")
        stopping = asyncio.create_task(self._stop.wait(), name="stop-signal")
        code = EXIT_OK
        try:
            await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if startup.done():
                startup.result()  # raises a startup failure
                log.info("ready in %.2fs", time.monotonic() - started)
                await stopping
            else:
                log.info("stop requested during startup")
                startup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await startup
        except StartupError as e:
            log.error("%s", e)
            code = EXIT_FAILED
        except Exception:
            log.exception("startup failed")
            code = EXIT_FAILED
        finally:
            stopping.cancel()
            await self._shutdown()
        return code

    def _request_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.info("%s received again; already shutting down", sig.name)
            return
        log.info("%s received; shutting down", sig.name)
        self._stop.set()
        self._arm_hard_exit()

    def _arm_hard_exit(self) -> None:
        """Past the grace period the process ends, whatever is still running."""
        grace = self.settings.shutdown_grace

        def expire() -> None:
            log.error(
                "shutdown did not finish within the %gs grace period%s; exiting now",
                grace,
                " (an NVML call is hung)" if self.nvml_calls_in_flight() else "",
            )
            _flush_and_exit(EXIT_OK)

        self._hard_exit = threading.Timer(grace, expire)
        self._hard_exit.daemon = True
        self._hard_exit.start()

    async def _start(self) -> None:
        s = self.settings
        try:
            await asyncio.to_thread(prepare_directories, s)
        except OSError as e:
            raise StartupError(f"cannot create the plugin's directories: {e}") from e
        for path in (s.dra_socket, s.registration_socket):
            try:
                await asyncio.to_thread(claim_path, path)
            except (SocketPathError, SocketInUseError) as e:
                raise StartupError(str(e)) from e
        self._spawn(memory.trim_periodically(), "malloc-trim")
        if s.metrics_address:
            self.metrics = await asyncio.to_thread(self._serve_metrics)

        backend, inventory = await asyncio.to_thread(self._open_nvml)
        self.backend, self.inventory = backend, inventory
        from .nvml.deadline import GpuWorkers, GuardedNvml

        self.workers = GpuWorkers()
        self.guarded = GuardedNvml(
            backend,
            self.workers,
            s.health_nvml_deadline,
            ((g.index, g.uuid) for g in inventory.gpus),
        )
        # Never healthy by default: a device is Unknown until a check says otherwise.
        self.board = (
            HealthBoard((d.name for d in inventory.devices), Health.UNKNOWN, "not checked yet")
            if s.health
            else HealthBoard(d.name for d in inventory.devices)
        )
        for problem in inventory.problems:
            log.warning("inventory: %s", problem)
        if self.metrics is not None:
            self.metrics.watch(inventory=inventory, board=self.board)
        if s.health:
            await self._start_monitor(backend, inventory, self.board)

        self.api = self._api_client()
        preparer = await self._preparer(inventory)
        if self.api is not None:
            self._start_publisher(self._published_inventory(inventory))
            if s.claim_device_status:
                preparer = self._start_claim_status(preparer, inventory)
        if self.metrics is not None:
            self.metrics.watch(
                monitor=self.monitor,
                preparer=self.preparer,
                publisher=self.publisher,
                migs=self.preparer.mig_layout if self.preparer is not None else None,
                claim_status=self.claim_status,
            )

        if s.rescan_interval > 0:
            self._start_rescan()

        self.plugin = KubeletPlugin(s.plugin_config(), preparer, self.board, s.plugin_options())
        if self.metrics is not None:
            self.plugin.calls.observer = self.metrics
        try:
            await self.plugin.start()
        except (SocketPathError, SocketInUseError, OSError) as e:
            raise StartupError(f"cannot serve the kubelet sockets: {e}") from e
        self._start_heartbeat(backend, self.plugin)
        log.info(
            "started: version=%s driver=%s node=%s nvml=%s devices=%d api-server=%s health=%s "
            "dra-socket=%s registration-socket=%s",
            __version__,
            s.driver_name,
            s.node_name,
            inventory.backend,
            len(inventory.devices),
            "yes" if self.api is not None else "no",
            "on" if self.plugin.health is not None else "off",
            s.dra_socket,
            s.registration_socket,
        )

    async def _close_nvml(self) -> None:
        """Shut NVML down in a daemon thread, bounded: a hung call must not hold the exit."""
        assert self.backend is not None
        backend = self.backend
        if self.nvml_calls_in_flight():
            # Never shut NVML down under a live call (undefined on a real driver):
            # the process exit releases it.
            log.warning("NVML left initialised: a call on a hung GPU is still running")
            if self.workers is not None:
                self.workers.shutdown()
            return
        done = threading.Event()

        def close() -> None:
            try:
                backend.close(timeout=1.0)
            except Exception:
                log.exception("closing NVML failed")
            finally:
                done.set()

        threading.Thread(target=close, name="nvml-close", daemon=True).start()
        until = time.monotonic() + 2.0
        while not done.is_set() and time.monotonic() < until:
            await asyncio.sleep(0.02)
        if self.workers is not None:
            self.workers.shutdown()

    def _start_heartbeat(self, backend: NvmlBackend, plugin: KubeletPlugin) -> None:
        """The file `dra-driver probe` reads: NVML's last answer and the registration."""
        monitor = self.monitor
        heartbeat = Heartbeat(
            self.settings.state_path / HEARTBEAT_FILE,
            sample=backend.health_sample,
            polls=(lambda: monitor.counters().polls) if monitor is not None else None,
            registered=plugin.registered.is_set,
        )
        self._spawn(heartbeat.run(), "heartbeat")

    def _serve_metrics(self) -> Metrics:
        """Bind the endpoint first, so a taken port fails the start before anything else runs."""
        from .metrics import Metrics, MetricsServer

        s = self.settings
        metrics = Metrics(s.driver_name, s.node_name, process_collectors=True)
        try:
            self._metrics_server = MetricsServer(metrics.registry, s.metrics_address)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise StartupError(
                f"cannot serve metrics on --metrics-address {s.metrics_address}: {why}"
            ) from e
        self._metrics_server.start()
        log.info("serving metrics at %s", self._metrics_server.url)
        return metrics

    def _open_nvml(self) -> tuple[NvmlBackend, Inventory]:
        """Open NVML and read the inventory (blocking: runs in a worker thread)."""
        from .nvml import open_backend

        s = self.settings
        try:
            backend = open_backend(library=s.resolved_nvml_library(), backend=s.nvml_backend)
        except Exception as e:
            raise StartupError(
                f"cannot load NVML (library={s.resolved_nvml_library() or 'libnvidia-ml.so.1'}, "
                f"backend={s.nvml_backend}, driver root {s.driver_root}): {e}"
            ) from e
        try:
            snapshot = backend.inventory()
        except Exception as e:
            backend.close()
            raise StartupError(f"cannot read the GPU inventory from NVML: {e}") from e
        return backend, build_inventory(
            snapshot, backend.name, pcie_root_resolver(s.sys_root), dynamic_mig=s.dynamic_mig
        )

    async def _start_monitor(
        self, backend: NvmlBackend, inventory: Inventory, board: HealthBoard
    ) -> None:
        """Events are registered before the sockets exist: no fault after "ready" is missed."""
        from .health.monitor import HealthMonitor

        self.monitor = HealthMonitor(
            backend, inventory, board, self.settings.monitor_config(), workers=self.workers
        )
        await self.monitor.start()

    def _api_client(self) -> ApiClient | None:
        from .k8s import ApiServerConfigError, NoApiServerConfigError, load_api_client

        try:
            return load_api_client(self.settings.kubeconfig)
        except NoApiServerConfigError as e:
            log.warning(
                "%s; running without an API server: no ResourceSlices are published and "
                "claims cannot be looked up, so NodePrepareResources will fail per claim",
                e,
            )
            return None
        except ApiServerConfigError as e:
            raise StartupError(str(e)) from e
        except Exception as e:
            raise StartupError(f"cannot configure the API client: {e}") from e

    async def _preparer(self, inventory: Inventory) -> Preparer:
        from .prepare.preparer import ClaimPreparer
        from .prepare.sources import ApiClaimSource, NoApiClaimSource

        source = ApiClaimSource(self.api) if self.api is not None else NoApiClaimSource()
        if self.settings.dynamic_mig:
            self.mig_manager = await asyncio.to_thread(self._open_mig_manager)
        preparer = ClaimPreparer(
            self.settings.preparer_config(),
            self._inventory_now,
            source,
            self.board,
            self.guarded,
            migs=self.mig_manager,
            mig_observer=self.monitor,
        )
        self.preparer = preparer
        try:
            await preparer.start()
        except Exception as e:
            raise StartupError(f"cannot start claim preparation: {e}") from e
        return preparer

    def _open_mig_manager(self) -> MigManager:
        """The MIG create/destroy path of --dynamic-mig (blocking: a worker thread)."""
        from .nvml.migops import GuardedMigManager, open_mig_manager

        s = self.settings
        try:
            manager = open_mig_manager(library=s.nvml_library, backend=s.nvml_backend)
        except Exception as e:
            raise StartupError(f"--dynamic-mig: cannot open NVML for MIG management: {e}") from e
        if self.workers is None:
            return manager
        return GuardedMigManager(manager, self.workers, s.mig_deadline)

    def _published_inventory(self, inventory: Inventory) -> Inventory:
        """With --dynamic-mig, MIG devices this driver created stay abstract in the slices."""
        if not self.settings.dynamic_mig or self.preparer is None:
            return inventory
        from .prepare.dynamic import created_uuids, intended_placements, without_created

        claims = list(self.preparer.checkpointed().values())
        return without_created(inventory, created_uuids(claims), intended_placements(claims))

    def _start_publisher(self, inventory: Inventory) -> None:
        from .slices.publisher import SlicePublisher

        assert self.board is not None and self.api is not None
        try:
            publisher = SlicePublisher(self.settings.publisher_config(), self.api)
        except ValueError as e:  # a driver or node name the API would reject
            raise StartupError(str(e)) from e
        self.publisher = publisher
        publisher.set_desired(inventory, self.board.snapshot())
        self._spawn(publisher.run(), "slice-publisher")
        self._spawn(self._feed_health(publisher, self.board), "slice-health-feed")

    def _start_claim_status(self, preparer: Preparer, inventory: Inventory) -> Preparer:
        """Claims' status.devices follow prepares and health; the kubelet never waits on it."""
        from .claimstatus.api import KubeClaimStatusApi
        from .claimstatus.hook import StatusReportingPreparer
        from .claimstatus.writer import ClaimStatusWriter

        assert self.api is not None and self.preparer is not None
        config = self.settings.claim_status_config()
        api = KubeClaimStatusApi(self.api, config.field_manager, config.request_timeout)
        writer = ClaimStatusWriter(config, api, self.board, self._inventory_now)
        writer.adopt(self.preparer.checkpointed().values())
        self.claim_status = writer
        self._spawn(writer.run(), "claim-status")
        return StatusReportingPreparer(preparer, writer)

    async def _feed_health(self, publisher: SlicePublisher, board: HealthBoard) -> None:
        """Hand every health change to the publisher (device taints); it debounces writes."""
        version = board.version
        while True:
            version = await board.wait_changed(version)
            inventory = self._published_inventory(self._inventory_now())
            publisher.set_desired(inventory, board.snapshot())

    def _inventory_now(self) -> Inventory:
        """The inventory as last read (re-enumeration replaces it)."""
        assert self.inventory is not None
        return self.inventory

    # -- re-enumeration (rescan.py) ----------------------------------------------------

    def _start_rescan(self) -> None:
        from .rescan import Rescanner

        s = self.settings
        rescanner = Rescanner(
            self._read_inventory,
            self._inventory_now,
            self._follow_inventory,
            interval=s.rescan_interval,
            deadline=max(s.health_nvml_deadline, 1.0) * 2,
            tick=self._keep_vanished,
        )
        self.rescanner = rescanner
        self._spawn(rescanner.run(), "inventory-rescan")

    def _read_inventory(self) -> Inventory:
        """(worker thread) Read NVML again; the raw backend: a lost GPU keeps its worker."""
        assert self.backend is not None
        snapshot = self.backend.inventory()
        resolver = pcie_root_resolver(self.settings.sys_root)
        return build_inventory(
            snapshot,
            self.backend.name,
            resolver,
            log_problems=False,
            dynamic_mig=self.settings.dynamic_mig,
        )

    def _held_devices(self) -> set[str]:
        if self.preparer is None:
            return set()
        return {d.device_name for rec in self.preparer.checkpointed().values() for d in rec.devices}

    def _follow_inventory(self, inventory: Inventory) -> None:
        """A re-read found other devices: board, monitor, slices and metrics follow."""
        assert self.board is not None
        self.inventory = inventory
        names = {d.name for d in inventory.devices}
        self._vanished = self._held_devices() - names
        self.board.set_devices(
            names | self._vanished, Health.UNKNOWN if self.settings.health else Health.HEALTHY
        )
        if self.monitor is not None:
            self.monitor.follow(inventory)
        self._mark_vanished()
        if self.publisher is not None:
            self.publisher.set_desired(self._published_inventory(inventory), self.board.snapshot())
        if self.metrics is not None:
            self.metrics.watch(inventory=inventory)

    def _keep_vanished(self) -> None:
        """Every rescan: a vanished device stays on the board while a claim holds it."""
        assert self.board is not None and self.inventory is not None
        names = {d.name for d in self.inventory.devices}
        vanished = self._held_devices() - names
        if vanished != self._vanished:
            self._vanished = vanished
            self.board.set_devices(names | vanished)
            self._mark_vanished()
        self.board.mark_checked(vanished)

    def _mark_vanished(self) -> None:
        from .health.board import DeviceHealth
        from .rescan import MESSAGE_NOT_PRESENT, REASON_NOT_PRESENT

        assert self.board is not None
        self.board.update(
            DeviceHealth(n, Health.UNHEALTHY, MESSAGE_NOT_PRESENT, REASON_NOT_PRESENT)
            for n in sorted(self._vanished)
        )

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s stopped with an error; the kubelet sockets keep serving", name)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def _shutdown(self) -> None:
        # The metrics server takes up to half a second to stop; that overlaps the rest.
        metrics_stopped = (
            asyncio.create_task(asyncio.to_thread(self._metrics_server.stop))
            if self._metrics_server is not None
            else None
        )
        if self.plugin is not None:
            await self.plugin.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.monitor is not None:
            await self.monitor.stop()  # before the backend closes under its event wait
        if self.preparer is not None:
            await self.preparer.close()
        if self.mig_manager is not None:
            await asyncio.to_thread(self.mig_manager.close)
        if self.backend is not None:
            await self._close_nvml()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if metrics_stopped is not None:
            await metrics_stopped
        log.info("stopped")
