"""One grpc.aio server on one unix socket path, re-creatable in place.

The kubelet finds plugins by socket files, and those files can vanish under a
running plugin (an operator, a kubelet directory cleanup). A grpc.aio server
cannot re-bind, so re-creating a socket means starting a fresh server on the
same services and retiring the old one; SocketServer does that, binding a
hidden name and linking it into place (see sockets.py for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc

from .sockets import (
    PathState,
    SocketId,
    SocketPathError,
    bind_path_for,
    claim_path,
    path_state,
    remove_if_ours,
)

log = logging.getLogger(__name__)

SOCKET_MODE = 0o600

MiB = 1024 * 1024
# The kubelet sends every claim of a pod in one request; 10,000 claims with
# long names need more than gRPC's 4 MiB default.
MAX_RECEIVE_BYTES = 16 * MiB
# A hard ceiling on concurrent RPCs per server (health streams included);
# preparer calls are bounded separately, below this.
MAX_CONCURRENT_RPCS = 1024

AddServices = Callable[[grpc.aio.Server], None]


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # Let clients (the kubelet) keep idle connections without being told to go away.
        ("grpc.http2.max_pings_without_data", 0),
    ]


class SocketServer:
    """A gRPC server published at `path`, owning exactly the socket inode it created."""

    def __init__(
        self,
        name: str,
        path: Path,
        add_services: AddServices,
        max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    ) -> None:
        self.name = name
        self.path = path
        self._add_services = add_services
        self._max_rpcs = max_concurrent_rpcs
        self._server: grpc.aio.Server | None = None
        self._id: SocketId | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def state(self) -> PathState:
        return path_state(self.path, self._id)

    async def start(self) -> None:
        """Serve at path; raises SocketPathError/SocketInUseError if path is taken."""
        await asyncio.to_thread(claim_path, self.path)
        await self._bind_new()

    async def recreate(self, retire_grace: float = 1.0) -> None:
        """Publish a new socket at path and retire the old server in the background.

        A stale socket at path is replaced; anything else there (a live socket,
        a file) raises. In-flight calls on the old server get retire_grace.
        """
        old = self._server
        await asyncio.to_thread(claim_path, self.path)
        await self._bind_new()
        if old is not None:
            task = asyncio.create_task(self._retire(old, retire_grace))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def remove(self, retire_grace: float = 0.0) -> None:
        """Stop serving and delete our socket (only if it is still ours)."""
        old, self._server = self._server, None
        remove_if_ours(self.path, self._id)
        self._id = None
        if old is not None:
            await self._retire(old, retire_grace)

    async def stop(self, grace: float) -> None:
        """Stop accepting, give in-flight calls `grace` seconds, remove our socket."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        remove_if_ours(self.path, self._id)
        self._id = None

    async def _bind_new(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = bind_path_for(self.path)
        server = grpc.aio.server(options=server_options(), maximum_concurrent_rpcs=self._max_rpcs)
        self._add_services(server)
        try:
            if server.add_insecure_port(f"unix:{tmp}") == 0:
                raise OSError(f"cannot bind unix socket {tmp}")
            # Only root (the kubelet) may call us: whoever can connect can unprepare claims.
            os.chmod(tmp, SOCKET_MODE)
            await server.start()
            # link() never replaces what may have appeared at path since the
            # caller checked it (unlike rename): an operator's file survives.
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                raise SocketPathError(
                    f"{self.path} appeared while this plugin was creating its socket; "
                    "refusing to replace it"
                ) from None
            os.unlink(tmp)
            self._id = SocketId.of(os.lstat(self.path))
        except BaseException:
            await server.stop(None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._server = server
        log.info("%s: serving on %s", self.name, self.path)

    async def _retire(self, server: grpc.aio.Server, grace: float) -> None:
        try:
            await server.stop(grace)
        except Exception:
            log.exception("%s: stopping a retired server failed", self.name)
