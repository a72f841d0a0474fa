"""The kubelet-facing side of the process: both sockets, their upkeep and shutdown.

Order matters to the kubelet: the DRA socket serves before the registration
socket appears (the kubelet dials the endpoint as soon as it registers us),
and at shutdown the registration socket goes first. While running, a small
supervisor re-creates either socket if it disappears and re-registers after
the kubelet refuses us, with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc

from ..health.board import HealthBoard
from ..prepare.types import Preparer
from .dra import ClaimCalls, DRAPluginV1, DRAPluginV1beta1
from .health import HealthServicer
from .options import PluginConfig, PluginOptions
from .registration import RegistrationServicer, supported_services
from .server import SocketServer
from .sockets import PathState, is_live_socket_async
from .stubs import (
    add_dra_v1,
    add_dra_v1beta1,
    add_health_v1,
    add_health_v1alpha1,
    add_registration,
)

log = logging.getLogger(__name__)


class KubeletPlugin:
    """Serves DRAPlugin v1/v1beta1 (+ health) and registers with the kubelet."""

    def __init__(
        self,
        config: PluginConfig,
        preparer: Preparer,
        board: HealthBoard | None,
        options: PluginOptions | None = None,
    ) -> None:
        self._config = config
        self._opts = options or PluginOptions()
        self.calls = ClaimCalls(preparer, self._opts.max_concurrent_claim_calls)
        self.health: HealthServicer | None = None
        if config.health and board is not None:
            self.health = HealthServicer(
                board,
                config.node_name,
                self._opts.health_resend_interval,
                self._opts.health_timeout_seconds,
                check_interval=self._opts.health_check_interval,
                max_streams=self._opts.max_health_streams,
            )
        self.services = supported_services(self.health is not None)
        self.dra = SocketServer("dra", config.dra_socket, self._add_dra_services)
        self.registration = SocketServer(
            "registration", config.registration_socket, self._add_registration_service
        )
        self.registered = asyncio.Event()
        self._backoff = self._opts.registration_backoff
        self._reregister_at: float | None = None
        self._wake = asyncio.Event()
        self._complaints: set[tuple[str, PathState]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._last_upkeep_error = ""

    def _add_dra_services(self, server: grpc.aio.Server) -> None:
        add_dra_v1(DRAPluginV1(self.calls), server)
        add_dra_v1beta1(DRAPluginV1beta1(self.calls), server)
        if self.health is not None:
            add_health_v1(self.health.v1, server)
            add_health_v1alpha1(self.health.v1alpha1, server)

    def _add_registration_service(self, server: grpc.aio.Server) -> None:
        servicer = RegistrationServicer(
            self._config.driver_name,
            Path(self._config.dra_socket).absolute(),
            self.services,
            self._on_registration_status,
        )
        add_registration(servicer, server)

    async def start(self) -> None:
        """Serve the DRA socket, then publish the registration socket, then supervise."""
        await self.dra.start()
        try:
            await self.registration.start()
        except BaseException:
            await self.dra.stop(0)
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="socket-supervisor")

    async def stop(self) -> None:
        """Deregister, end health streams, let in-flight calls finish, remove our sockets."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._opts.shutdown_grace
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.registration.stop(0)
        if self.health is not None:
            self.health.close()
        await self.dra.stop(max(0.0, deadline - loop.time()))
        if not await self.calls.drain(max(0.0, deadline - loop.time())):
            log.warning(
                "shutdown: %d preparer call(s) still running after the grace period",
                self.calls.inflight,
            )

    def _on_registration_status(self, registered: bool, error: str) -> None:
        if registered:
            log.info("registered with the kubelet as %s", self._config.driver_name)
            self._backoff = self._opts.registration_backoff
            self._reregister_at = None
            self.registered.set()
            return
        self.registered.clear()
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._opts.registration_backoff_max)
        self._reregister_at = asyncio.get_running_loop().time() + delay
        log.error(
            "the kubelet refused the registration: %s; re-creating %s in %.1fs",
            error or "(no reason given)",
            self.registration.path,
            delay,
        )
        self._wake.set()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = self._opts.socket_poll_interval
            if self._reregister_at is not None:
                timeout = min(timeout, max(0.0, self._reregister_at - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._keep(self.dra)
                if self._reregister_at is not None and loop.time() >= self._reregister_at:
                    self._reregister_at = None
                    await self.registration.remove()
                    await self.registration.recreate()
                await self._keep(self.registration)
                self._last_upkeep_error = ""
            except Exception as e:
                if repr(e) != self._last_upkeep_error:  # once per distinct problem, not 4/s
                    self._last_upkeep_error = repr(e)
                    log.exception(
                        "socket upkeep failed; retrying every %.2fs",
                        self._opts.socket_poll_interval,
                    )

    async def _keep(self, srv: SocketServer) -> None:
        """Re-create srv's socket if it vanished or went stale; never take over a live one."""
        state = srv.state()
        if state is PathState.OURS:
            self._complaints = {c for c in self._complaints if c[0] != srv.name}
            return
        quiet = bool(self._last_upkeep_error)  # a failing re-creation was already reported
        if state is PathState.MISSING:
            if not quiet:
                log.warning("%s socket %s disappeared; re-creating it", srv.name, srv.path)
        elif state is PathState.FOREIGN_SOCKET and not await is_live_socket_async(srv.path):
            if not quiet:
                log.warning("%s socket %s is a dead socket; re-creating it", srv.name, srv.path)
        else:
            if (srv.name, state) not in self._complaints:
                self._complaints.add((srv.name, state))
                what = (
                    "another live process now serves it"
                    if state is PathState.FOREIGN_SOCKET
                    else "something that is not a socket is there now"
                )
                log.error("%s socket %s: %s; leaving it alone", srv.name, srv.path, what)
            return
        await srv.recreate()
