"""The node plugin process: composition and lifecycle of `dra-driver run`.

Start order (each step needs the previous one):
  socket paths checked -> metrics endpoint bound (with --metrics-address) ->
  NVML opened and read (worker thread) -> inventory ->
  health board -> health monitor (events registered; when --health) ->
  API client (optional) -> preparer (checkpoint loaded) ->
  slice publisher (background) -> DRA socket -> registration socket.
A failure before the sockets exist exits non-zero with one clear message:
a plugin without NVML, or without its sockets, must not look alive to the
kubelet. SIGTERM/SIGINT at any point leads to an orderly exit with code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from . import __version__, memory
from .health.board import HealthBoard
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

    from .health.monitor import HealthMonitor
    from .metrics import Metrics, MetricsServer
    from .nvml.types import NvmlBackend
    from .prepare.preparer import ClaimPreparer
    from .slices.publisher import SlicePublisher

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class StartupError(RuntimeError):
    """A start step failed in a way the operator must fix; the message says how."""


def run(settings: Settings) -> int:
    """Run the plugin until SIGTERM/SIGINT; returns the process exit code."""
    log.info("dra-driver %s starting on node %s", __version__, settings.node_name)
    problems = socket_path_problems(settings.dra_socket, settings.registration_socket)
    if problems:
        for p in problems:
            log.error("%s; shorten --plugins-dir/--registry-dir or the driver name", p)
        return EXIT_USAGE
    memory.limit_arenas()  # before any thread starts
    return asyncio.run(App(settings).main())


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
        self.monitor: HealthMonitor | None = None
        self.publisher: SlicePublisher | None = None
        self.metrics: Metrics | None = None
        self._metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

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

    async def _start(self) -> None:
        s = self.settings
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
        self.board = HealthBoard(d.name for d in inventory.devices)
        for problem in inventory.problems:
            log.warning("inventory: %s", problem)
        if self.metrics is not None:
            self.metrics.watch(inventory=inventory, board=self.board)
        if s.health:
            await self._start_monitor(backend, inventory, self.board)

        self.api = self._api_client()
        preparer = await self._preparer(inventory)
        if self.api is not None:
            self._start_publisher(inventory)
        if self.metrics is not None:
            self.metrics.watch(
                monitor=self.monitor, preparer=self.preparer, publisher=self.publisher
            )

        self.plugin = KubeletPlugin(s.plugin_config(), preparer, self.board, s.plugin_options())
        if self.metrics is not None:
            self.plugin.calls.observer = self.metrics
        try:
            await self.plugin.start()
        except (SocketPathError, SocketInUseError, OSError) as e:
            raise StartupError(f"cannot serve the kubelet sockets: {e}") from e
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
            backend = open_backend(library=s.nvml_library, backend=s.nvml_backend)
        except Exception as e:
            raise StartupError(
                f"cannot load NVML (library={s.nvml_library or 'libnvidia-ml.so.1'}, "
                f"backend={s.nvml_backend}): {e}"
            ) from e
        try:
            snapshot = backend.inventory()
        except Exception as e:
            backend.close()
            raise StartupError(f"cannot read the GPU inventory from NVML: {e}") from e
        return backend, build_inventory(snapshot, backend.name, pcie_root_resolver(s.sys_root))

    async def _start_monitor(
        self, backend: NvmlBackend, inventory: Inventory, board: HealthBoard
    ) -> None:
        """Events are registered before the sockets exist: no fault after "ready" is missed."""
        from .health.monitor import HealthMonitor

        self.monitor = HealthMonitor(backend, inventory, board, self.settings.monitor_config())
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
        preparer = ClaimPreparer(
            self.settings.preparer_config(), lambda: inventory, source, self.board, self.backend
        )
        self.preparer = preparer
        try:
            await preparer.start()
        except Exception as e:
            raise StartupError(f"cannot start claim preparation: {e}") from e
        return preparer

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
        self._spawn(self._feed_health(publisher, inventory, self.board), "slice-health-feed")

    async def _feed_health(
        self, publisher: SlicePublisher, inventory: Inventory, board: HealthBoard
    ) -> None:
        """Hand every health change to the publisher (device taints); it debounces writes."""
        version = board.version
        while True:
            version = await board.wait_changed(version)
            publisher.set_desired(inventory, board.snapshot())

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
        if self.backend is not None:
            await asyncio.to_thread(self.backend.close)
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if metrics_stopped is not None:
            await metrics_stopped
        log.info("stopped")
