"""A kubelet stand-in: plugin discovery, registration and DRA calls, done the kubelet's way.

Used by the end-to-end tests and the demo to drive a real plugin process over
its unix sockets. It follows the kubelet (1.34-1.36) where that is observable
by a plugin: the registry directory is watched for new socket files (names
starting with "." are ignored), the registration socket is dialled with a
10 s timeout, GetInfo gets 1 s, the answer is validated (type "DRAPlugin",
an absolute endpoint, the first of the plugin's supported_versions that this
kubelet knows), the verdict goes back through NotifyRegistrationStatus (5 s),
and DRA calls carry the kubelet's 45 s deadline.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ..kubelet.proto import dra_v1_pb2, dra_v1beta1_pb2
from ..kubelet.proto import drahealth_v1_pb2 as health_v1_pb
from ..kubelet.proto import drahealth_v1alpha1_pb2 as health_pb
from ..kubelet.proto import pluginregistration_v1_pb2 as reg_pb
from ..kubelet.stubs import (
    dra_v1_stub,
    dra_v1beta1_stub,
    health_v1_stub,
    health_v1alpha1_stub,
    registration_stub,
)
from ..prepare.types import ClaimRef

DIAL_TIMEOUT = 10.0
GET_INFO_TIMEOUT = 1.0
NOTIFY_TIMEOUT = 5.0
CALL_TIMEOUT = 45.0

PLUGIN_TYPE = "DRAPlugin"
# What kubelet 1.34-1.36 accepts, by the plugin's own order of preference.
KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
# Health services a 1.37 kubelet consumes, preferred first (1.36 knows only v1alpha1).
HEALTH_VERSIONS = ("v1", "v1alpha1")

# The plugin may answer large messages for big batches; the kubelet's grpc-go
# client keeps the 4 MiB default, but tests send far larger requests.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class RegistrationError(RuntimeError):
    """The plugin's GetInfo answer would make the kubelet refuse it."""


@dataclass(frozen=True)
class PluginRegistration:
    """What the kubelet keeps about a registered plugin instance."""

    socket: Path  # the registration socket
    name: str  # the DRA driver name
    endpoint: Path  # the DRA service socket
    service: str  # the chosen DRAPlugin service, "v1.DRAPlugin" or "v1beta1.DRAPlugin"
    supported_versions: tuple[str, ...]

    @property
    def version(self) -> str:
        return self.service.split(".", 1)[0]

    @property
    def has_health(self) -> bool:
        return any(s.endswith(".DRAResourceHealth") for s in self.supported_versions)

    @property
    def health_version(self) -> str:
        """The health service a 1.37 kubelet would open: v1 when named, else v1alpha1 ("")."""
        for version in HEALTH_VERSIONS:
            if f"{version}.DRAResourceHealth" in self.supported_versions:
                return version
        return ""


def select_service(supported: Sequence[str], kubelet: Sequence[str] = KUBELET_SERVICES) -> str:
    """The kubelet's choice: the first entry of the plugin's list that it supports."""
    if not supported:
        raise RegistrationError("empty list of supported gRPC services (aka supported versions)")
    for service in supported:
        if service in kubelet:
            return service
    raise RegistrationError(
        f"none of services supported by the plugin ({list(supported)}) "
        f"are supported by the kubelet ({list(kubelet)})"
    )


def validate_info(info: reg_pb.PluginInfo, socket: Path) -> PluginRegistration:
    """Check a GetInfo answer the way the kubelet's DRA handler does."""
    if info.type != PLUGIN_TYPE:
        raise RegistrationError(f"no handler registered for plugin type: {info.type!r}")
    if not info.name:
        raise RegistrationError("plugin name is empty")
    endpoint = Path(info.endpoint) if info.endpoint else socket
    if not endpoint.is_absolute():
        raise RegistrationError(f"endpoint {info.endpoint!r} is not an absolute path")
    service = select_service(list(info.supported_versions))
    return PluginRegistration(
        socket=socket,
        name=info.name,
        endpoint=endpoint,
        service=service,
        supported_versions=tuple(info.supported_versions),
    )


def _unix_target(path: Path) -> str:
    return f"unix:{path}"


def list_plugin_sockets(registry_dir: Path) -> list[Path]:
    """Unix sockets in registry_dir the kubelet's watcher would consider (no dot-files)."""
    out = []
    try:
        entries = sorted(os.scandir(registry_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                out.append(Path(entry.path))
        except FileNotFoundError:
            continue
    return out


FileId = tuple[int, int, int]


def file_id(path: Path) -> FileId | None:
    """(dev, inode, ctime) of path: tells a re-created socket from the old one, even
    when the filesystem hands the freed inode number straight back."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


async def wait_for_socket(
    registry_dir: Path,
    timeout: float = 10.0,
    poll: float = 0.02,
    replacing: FileId | None = None,
) -> Path:
    """Wait for a plugin socket to appear (with `replacing`: one that is not that file)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for path in list_plugin_sockets(registry_dir):
            fid = file_id(path)
            if fid is not None and fid != replacing:
                return path
        if loop.time() >= deadline:
            raise TimeoutError(f"no plugin socket appeared in {registry_dir} within {timeout}s")
        await asyncio.sleep(poll)


class RegistrationClient:
    """The kubelet's side of pluginregistration.Registration on one socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self._channel = grpc.aio.insecure_channel(_unix_target(socket))
        self._stub = registration_stub(self._channel)

    async def __aenter__(self) -> RegistrationClient:
        await asyncio.wait_for(self._channel.channel_ready(), DIAL_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def get_info(self, timeout: float = GET_INFO_TIMEOUT) -> reg_pb.PluginInfo:
        info: reg_pb.PluginInfo = await self._stub.GetInfo(reg_pb.InfoRequest(), timeout=timeout)
        return info

    async def notify(self, registered: bool, error: str = "") -> None:
        await self._stub.NotifyRegistrationStatus(
            reg_pb.RegistrationStatus(plugin_registered=registered, error=error),
            timeout=NOTIFY_TIMEOUT,
        )


async def register(socket: Path) -> PluginRegistration:
    """One kubelet registration attempt: GetInfo, validate, notify the verdict."""
    async with RegistrationClient(socket) as client:
        info = await client.get_info()
        try:
            reg = validate_info(info, socket)
        except RegistrationError as e:
            await client.notify(
                False, f"RegisterPlugin error -- plugin validation failed with err: {e}"
            )
            raise
        await client.notify(True)
        return reg


def _claims(claims: Iterable[ClaimRef], module: Any) -> list[Any]:
    return [module.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]


class DraClient:
    """DRAPlugin calls (v1 or v1beta1) and the health watch on a plugin endpoint."""

    def __init__(self, endpoint: Path, version: str = "v1") -> None:
        if version not in ("v1", "v1beta1"):
            raise ValueError(f"unknown DRAPlugin version {version!r}")
        self.endpoint = endpoint
        self.version = version
        self._pb: Any = dra_v1_pb2 if version == "v1" else dra_v1beta1_pb2
        self._channel = grpc.aio.insecure_channel(_unix_target(endpoint), options=_CHANNEL_OPTIONS)
        self._stub = (dra_v1_stub if version == "v1" else dra_v1beta1_stub)(self._channel)
        self._health = health_v1alpha1_stub(self._channel)
        self._health_v1 = health_v1_stub(self._channel)

    @classmethod
    def for_registration(cls, reg: PluginRegistration) -> DraClient:
        return cls(reg.endpoint, reg.version)

    async def __aenter__(self) -> DraClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def prepare(self, claims: Iterable[ClaimRef], timeout: float = CALL_TIMEOUT) -> Any:
        """NodePrepareResources; returns the version's NodePrepareResourcesResponse."""
        request = self._pb.NodePrepareResourcesRequest(claims=_claims(claims, self._pb))
        return await self._stub.NodePrepareResources(request, timeout=timeout)

    async def unprepare(self, claims: Iterable[ClaimRef], timeout: float = CALL_TIMEOUT) -> Any:
        """NodeUnprepareResources; returns the version's NodeUnprepareResourcesResponse."""
        request = self._pb.NodeUnprepareResourcesRequest(claims=_claims(claims, self._pb))
        return await self._stub.NodeUnprepareResources(request, timeout=timeout)

    async def watch_health(
        self, version: str = "v1alpha1"
    ) -> AsyncGenerator[health_pb.NodeWatchResourcesResponse, None]:
        """NodeWatchResources (v1alpha1 or v1) as an async iterator; leaving it cancels.

        Both versions carry the same messages; v1 ones are yielded as they come
        (field for field the same as the v1alpha1 type this is annotated with).
        """
        if version == "v1":
            call = self._health_v1.NodeWatchResources(health_v1_pb.NodeWatchResourcesRequest())
        elif version == "v1alpha1":
            call = self._health.NodeWatchResources(health_pb.NodeWatchResourcesRequest())
        else:
            raise ValueError(f"unknown DRAResourceHealth version {version!r}")
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()
